package spool

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// Sent copies in place. A queue file written by Enqueue starts with its
// sealed block: the X-SmtpQ-Sealed field and an X-SmtpQ-Pad field that
// pads the two to whole 4 KiB blocks (queuefile.PadField). The Sent copy is
// the file without that block. Where the file system can remove whole
// blocks from a file (fallocate's FALLOC_FL_COLLAPSE_RANGE: ext4, XFS on
// Linux), FileSent cuts the block off the claimed file in the active folder,
// fsyncs it and renames the same inode into sent_dir: no new file, no data
// written, one file fsync and a share of the folder's. A file that was
// sealed is thus never in sent_dir, and a crash between the cut and the
// rename leaves in the active folder a plain message whose acceptance is
// journaled: the next start files it as sent (by copy), not sent again.
//
// It is done only for a file the Parser opened (seal and digest checked),
// whose first bytes are exactly the sealed block and a whole number of the
// file system's blocks, owned by the service's user with no other link
// (as for the inode pool: the producer that made it keeps no hold on a
// Sent copy), with sent_dir on the queue's file system. Anything else -
// files dropped by hand without padding, pickup files, files of other
// users, other file systems (tmpfs, NFS, Windows, macOS) - gets a copy, as
// before. A file system that refuses the cut once is not asked again.

// errNotInPlace says a Sent copy cannot be made in place: the caller
// writes a copy.
var errNotInPlace = errors.New("sealed block cannot be cut off in place")

// SentCopies counts how a spool made its Sent copies.
type SentCopies struct {
	InPlace uint64 // by cutting the sealed block off the queue file and renaming it
	Copied  uint64 // by writing a new file
}

// sentCopies are the counters behind Spool.SentCopies.
type sentCopies struct {
	inPlace, copied atomic.Uint64
}

// SentCopies returns how many Sent copies were made in place and how many
// were written as new files since Open.
func (s *Spool) SentCopies() SentCopies {
	return SentCopies{InPlace: s.copies.inPlace.Load(), Copied: s.copies.copied.Load()}
}

// maxSealedBlock bounds the sealed block read to check it: a seal of at
// most queuefile.MaxFieldSize, its padding, rounded up to blocks.
const maxSealedBlock = 2 * queuefile.MaxFieldSize

// sentInPlace files job in Sent by cutting its sealed block off in place
// and renaming the file into sent_dir as job.Name, or name-1, name-2... on a
// clash. It returns the name used, or errNotInPlace, with the file as it
// was or stripped (a plain message, which a copy files as well), for the
// caller to copy.
func (s *Spool) sentInPlace(job *stages.Job) (string, error) {
	if s.cutBlock <= 0 || s.cutOff.Load() || job.Kind != stages.KindSealed || job.Params == nil || job.Size <= 0 {
		return "", errNotInPlace
	}
	h := handle(job)
	f, err := openForCut(h.path)
	if err != nil {
		return "", errNotInPlace
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() || !ownedUnlinked(fi) {
		return "", errNotInPlace
	}
	n := fi.Size() - job.Size
	if n <= 0 || n%s.cutBlock != 0 || n > maxSealedBlock || !sealedBlockAt(f, n) {
		return "", errNotInPlace
	}
	if err := cutFront(f, n); err != nil {
		if errors.Is(err, errors.ErrUnsupported) {
			s.cutOff.Store(true) // the file system has no collapse: do not ask again
		}
		return "", errNotInPlace
	}
	if fi.Mode().Perm() != 0o640 {
		if err := f.Chmod(0o640); err != nil {
			return "", fmt.Errorf("writing stages.Sent copy: %w", err)
		}
	}
	if err := s.syncFile(f); err != nil {
		return "", fmt.Errorf("writing stages.Sent copy: %w", err)
	}
	s.crash("sent-stripped")
	return s.renameIntoSent(job)
}

// renameIntoSent renames the job's file into sent_dir, under job.Name or
// name-1, name-2... and makes the folder durable. If it cannot tell that
// the rename is durable, it renames the file back and fails.
func (s *Spool) renameIntoSent(job *stages.Job) (string, error) {
	h := handle(job)
	for i := 0; i < 1000; i++ {
		n := suffixed(job.Name, i)
		dst := filepath.Join(s.dirs.Sent, n)
		err := renameNoReplace(h.path, dst)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if isCrossDevice(err) || isNotSupported(err) {
			s.cutOff.Store(true)
			return "", errNotInPlace
		}
		if err != nil {
			return "", fmt.Errorf("filing in Sent: %w", err)
		}
		if err := s.sentDir.Sync(); err != nil {
			// Not known to be durable: take it back, so that a failed
			// filing leaves nothing in Sent (the retry files it anew).
			if renameNoReplace(dst, h.path) != nil {
				h.path = dst // the retry moves it from there
			}
			return "", fmt.Errorf("filing in Sent: %w", err)
		}
		h.path = dst
		return n, nil
	}
	return "", fmt.Errorf("filing in Sent: no free name for %s", job.Name)
}

// sealedBlockAt reports whether the first n bytes of f are whole header
// fields of the sealed block (queuefile.IsSealedField) and nothing else,
// and the line after them does not continue them.
func sealedBlockAt(f io.ReaderAt, n int64) bool {
	b := make([]byte, n+1)
	if _, err := f.ReadAt(b, 0); err != nil {
		return false
	}
	if b[n-1] != '\n' || b[n] == ' ' || b[n] == '\t' || b[0] == ' ' || b[0] == '\t' {
		return false
	}
	for line := range bytes.Lines(b[:n]) {
		if line[0] == ' ' || line[0] == '\t' {
			continue // a continuation line of the field before
		}
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok || !queuefile.IsSealedField(string(bytes.TrimRight(name, " \t"))) {
			return false
		}
	}
	return true
}

// CutsInPlace reports whether the file system of dir lets the spool make
// Sent copies in place (cut whole blocks off the front of a file), trying
// it on a file of its own there. For tests and diagnostics: the spool
// itself just tries, and copies where that fails.
func CutsInPlace(dir string) bool {
	f, err := os.CreateTemp(dir, ".cut-probe-")
	if err != nil {
		return false
	}
	defer os.Remove(f.Name())
	defer f.Close()
	if _, err := f.Write(make([]byte, 2*queuefile.SealBlock)); err != nil {
		return false
	}
	return cutFront(f, queuefile.SealBlock) == nil
}
