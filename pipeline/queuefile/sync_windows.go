//go:build windows

package queuefile

import (
	"errors"
	"io/fs"
	"os"
)

// SyncDir only checks that dir is a folder on Windows: NTFS journals
// metadata changes and a directory handle cannot be flushed with
// FlushFileBuffers. A missing folder is an error, as on Unix.
func SyncDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return &fs.PathError{Op: "sync", Path: dir, Err: errors.New("not a folder")}
	}
	return nil
}

// OpenFile is os.OpenFile (see the Unix version).
func OpenFile(path string, flag int, perm os.FileMode) (*os.File, error) {
	return os.OpenFile(path, flag, perm)
}
