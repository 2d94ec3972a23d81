//go:build !windows

package queuefile

import "os"

// SyncDir makes the entries of directory dir (creations, renames, removals)
// durable. On Windows (NTFS) directories cannot be opened for sync and
// metadata changes are journaled, so it does nothing there.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
