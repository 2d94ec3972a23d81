//go:build windows

package queuefile

import "os"

// SyncDir does nothing on Windows: NTFS journals metadata changes and a
// directory handle cannot be flushed with FlushFileBuffers.
func SyncDir(dir string) error { return nil }

// OpenFile is os.OpenFile (see the Unix version).
func OpenFile(path string, flag int, perm os.FileMode) (*os.File, error) {
	return os.OpenFile(path, flag, perm)
}
