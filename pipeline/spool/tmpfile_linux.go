//go:build linux

package spool

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// createUnnamed opens a new file in dir that has no name yet (O_TMPFILE):
// nothing to unlink afterwards, and nothing left behind by a crash. It
// returns errNoUnnamed where the file system does not support it.
func createUnnamed(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o640)
	if err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EISDIR) || errors.Is(err, unix.EINVAL) {
			return nil, errNoUnnamed
		}
		return nil, err
	}
	return os.NewFile(uintptr(fd), dir+"/(unnamed)"), nil
}

// linkUnnamed gives f, from createUnnamed, the name path; fs.ErrExist if
// path is taken (it never replaces a file).
func linkUnnamed(f *os.File, path string) error {
	err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), unix.AT_FDCWD, path, unix.AT_SYMLINK_FOLLOW)
	if errors.Is(err, unix.EEXIST) {
		return fs.ErrExist
	}
	if errors.Is(err, unix.ENOENT) && !procMounted() {
		return errNoUnnamed
	}
	return err
}

func procMounted() bool {
	_, err := os.Stat("/proc/self/fd")
	return err == nil
}
