package stages

import (
	"context"
	"path/filepath"
	"time"
)

// Source is what the Scanner needs of a spool: the narrow face through
// which a second backend (a NATS JetStream stream, say) would feed the
// pipeline. *Spool, the directory spool, is one.
type Source interface {
	// Recover returns to the queue what dead instances left claimed.
	Recover() (int, error)
	// Scan claims what is ready, but new files that skip (if set) reports
	// true for, calling fn with each job until fn returns false; it returns
	// when to look again for deferred work.
	Scan(ctx context.Context, now time.Time, skip func(name string) bool, fn func(*Job) bool) (time.Time, error)
	// ScanOne claims one named new arrival in dir (one of WatchDirs), if
	// it is still there.
	ScanOne(dir, name string) (*Job, error)
	// Return puts a claimed job back, unsent.
	Return(job *Job) error
	// WatchDirs are the folders whose new entries announce new work (none
	// if the backend has no such folder).
	WatchDirs() []string
}

// Sink is what the Archiver needs of a spool to file outcomes.
type Sink interface {
	Sent(job *Job, deleteCopy bool) (string, error)
	Undeliverable(job *Job, xmlLog []byte) (string, error)
	Defer(job *Job, due time.Time) error
	Park(job *Job, due time.Time) error
	Hold(job *Job) error
	Return(job *Job) error
	WriteState(id string, st *State) error
}

var (
	_ Source = (*Spool)(nil)
	_ Sink   = (*Spool)(nil)
)

// WatchDirs returns the queue folder, where producers drop files, and the
// ready folder, where the service and the queue commands put messages that
// have an id and are to be sent now.
func (s *Spool) WatchDirs() []string {
	return []string{s.dirs.Queue, filepath.Join(s.dirs.Queue, ReadyDir)}
}
