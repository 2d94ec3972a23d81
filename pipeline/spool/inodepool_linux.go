//go:build linux

package spool

import (
	"errors"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/smtpq/smtpq/pipeline/queuefile"
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
// blocks it overwrites are not freed and allocated again.
func openForRewrite(path string) (*os.File, error) {
	return queuefile.OpenFile(path, unix.O_WRONLY|unix.O_NOFOLLOW, 0)
}

func renameNoReplace(src, dst string) error {
	err := unix.Renameat2(unix.AT_FDCWD, src, unix.AT_FDCWD, dst, unix.RENAME_NOREPLACE)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
	}
	return nil
}

func isCrossDevice(err error) bool { return errors.Is(err, unix.EXDEV) }

// poolSupported: Linux has RENAME_NOREPLACE.
const poolSupported = true

// isNotSupported reports whether renameNoReplace failed because the file
// system has no RENAME_NOREPLACE.
func isNotSupported(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP)
}
