package spool

import (
	"io/fs"
	"os"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// The spool's fsyncs go through these methods, so that a test can make them
// fail (Spool.SyncFault). A full disk can be made with a small file system,
// but an fsync that fails on demand cannot; and a failed fsync is the case
// every filing must survive: the new copy is written, perhaps renamed into
// place, but not known to be durable, so the old one must stay.
//
// Not covered: the fsync of a file written by writeFileSynced or
// copyFileSynced (an XML log, a state file, a copy to Undeliverable on
// another file system). Each is followed by a folder fsync that is, in the
// same filing, so a failing fsync still fails that filing.

// syncDir makes the entries of dir durable, unless SyncFault fails it.
func (s *Spool) syncDir(dir string) error {
	if err := s.syncFault(dir); err != nil {
		return err
	}
	return queuefile.SyncDir(dir)
}

// syncFile makes f's content durable, unless SyncFault fails it.
func (s *Spool) syncFile(f *os.File) error {
	if err := s.syncFault(f.Name()); err != nil {
		return err
	}
	return f.Sync()
}

// syncJournal returns once journal line n is durable (journal.Sync),
// unless SyncFault fails the journal's fsync. A failure covers nobody, as
// in journal.Sync: the next caller syncs again.
func (s *Spool) syncJournal(n uint64) error {
	if err := s.syncFault(s.journal.path); err != nil {
		return err
	}
	return s.journal.Sync(n)
}

func (s *Spool) syncFault(path string) error {
	if s.SyncFault == nil {
		return nil
	}
	if err := s.SyncFault(path); err != nil {
		return &fs.PathError{Op: "fsync", Path: path, Err: err}
	}
	return nil
}
