//go:build linux

package spool

import (
	"errors"
	"os"

	"golang.org/x/sys/unix"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// cutBlockSize returns the block size of the queue's file system when
// sent_dir is on the same one (a rename can carry a file across), else 0:
// Sent copies are then never made in place.
func cutBlockSize(d Dirs) int64 {
	var q, s unix.Stat_t
	if unix.Stat(d.Queue, &q) != nil || unix.Stat(d.Sent, &s) != nil || q.Dev != s.Dev {
		return 0
	}
	var st unix.Statfs_t
	if unix.Statfs(d.Queue, &st) != nil || st.Bsize <= 0 {
		return 0
	}
	return int64(st.Bsize)
}

// openForCut opens a claimed file for reading and cutting, never through a
// symbolic link.
func openForCut(path string) (*os.File, error) {
	return queuefile.OpenFile(path, unix.O_RDWR|unix.O_NOFOLLOW, 0)
}

// cutFront removes the first n bytes of f, a whole number of the file
// system's blocks, without copying the rest (FALLOC_FL_COLLAPSE_RANGE).
// errors.ErrUnsupported: the file system cannot.
func cutFront(f *os.File, n int64) error {
	for {
		err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_COLLAPSE_RANGE, 0, n)
		switch {
		case err == unix.EINTR:
			continue
		case errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS):
			return errors.ErrUnsupported
		}
		return err
	}
}
