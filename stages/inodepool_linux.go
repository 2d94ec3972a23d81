//go:build linux

package stages

import (
	"errors"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// ownedUnlinked reports whether a file belongs to this process's user and
// has no other name: only such a file may be rewritten for another message.
func ownedUnlinked(fi os.FileInfo) bool {
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Nlink == 1 && int(st.Uid) == euid
}

var euid = os.Geteuid()

// openForRewrite opens an existing file for writing, without emptying it:
// the caller writes from offset 0 and truncates to what it wrote, so that
// blocks it overwrites are not freed and allocated again. It uses the
// system call directly: os.OpenFile tries (and fails) to register a
// regular file with the network poller, four system calls more.
func openForRewrite(path string) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

func renameNoReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
	}
	return nil
}

func isCrossDevice(err error) bool { return errors.Is(err, unix.EXDEV) }
func isExist(err error) bool       { return errors.Is(err, fs.ErrExist) }
func isNotExist(err error) bool    { return errors.Is(err, fs.ErrNotExist) }

// poolSupported: Linux has RENAME_NOREPLACE.
const poolSupported = true
