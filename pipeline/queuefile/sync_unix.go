//go:build !windows

package queuefile

import (
	"io/fs"
	"os"
	"syscall"
)

// SyncDir makes the entries of directory dir (creations, renames, removals)
// durable. On Windows (NTFS) directories cannot be opened for sync and
// metadata changes are journaled, so it does nothing there.
func SyncDir(dir string) error {
	fd, err := openNoPoll(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	err = ignoringEINTR(func() error { return syscall.Fsync(fd) })
	if cerr := syscall.Close(fd); err == nil {
		err = cerr
	}
	if err != nil {
		return &fs.PathError{Op: "sync", Path: dir, Err: err}
	}
	return nil
}

// OpenFile is os.OpenFile for regular files (and directories), for the
// paths every message takes: os.OpenFile also tries to register each file
// with the network poller, which regular files refuse, four system calls
// more per file.
func OpenFile(path string, flag int, perm os.FileMode) (*os.File, error) {
	fd, err := openNoPoll(path, flag, perm)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

func openNoPoll(path string, flag int, perm os.FileMode) (int, error) {
	var fd int
	err := ignoringEINTR(func() error {
		var err error
		fd, err = syscall.Open(path, flag|syscall.O_CLOEXEC, uint32(perm.Perm()))
		return err
	})
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return fd, nil
}

func ignoringEINTR(fn func() error) error {
	for {
		err := fn()
		if err != syscall.EINTR {
			return err
		}
	}
}
