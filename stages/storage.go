package stages

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"time"
)

// ErrStorage marks an error of the storage itself, not of the message: a
// store across the network that does not answer while a message is read.
// A Message's Stat, Open or reader wraps it; the Parser then leaves the
// message for a while (parked) instead of failing it as invalid.
var ErrStorage = errors.New("the storage did not answer")

// The stages keep no message on disk themselves: a storage backend hands
// them claimed messages and takes them back, filed. The interfaces below are
// all the stages ask of one, each sized to the stage that uses it. The
// directory spool (package pipeline/spool) is one backend; the comments say
// how each method maps onto a message stream with acknowledgements, such as a
// NATS JetStream work-queue consumer, so that a second backend plugs in
// without changing a stage.

// Message is a storage's handle on one claimed message: the storage gives it
// out with the Job at claim (Job.Msg) and takes it back when the job is
// filed. Whatever the storage needs to know about the message it keeps
// behind this handle (a path, whether a state file exists, a journal
// position; a stream's delivery metadata), not on the Job.
type Message interface {
	// Stat describes the message as stored: its size, its mode (a queue
	// file that is not a regular file is refused) and when it last changed
	// (a file's modification time; a stream message's publish time).
	Stat() (fs.FileInfo, error)
	// Open reads the message as its producer wrote it: the sealed header
	// (or pickup envelope) and the message itself.
	Open() (io.ReadCloser, error)
	// Released reports whether the storage has taken the message back
	// (filed, deferred, returned: a directory move that took place, a
	// stream message acked or nak'ed), even if the filing then failed in a
	// later step. A message not released is still the caller's to file.
	Released() bool
}

// Source is what the Scanner needs of a storage: claimed jobs in, and a way
// to put one back.
type Source interface {
	// Recover returns to the queue what dead instances left claimed. A
	// stream redelivers unacked messages by itself: nothing to do there.
	Recover() (int, error)
	// Scan claims what is ready, calling fn with each job until fn
	// returns false; it returns when to look again for deferred work. A
	// new arrival whose route is held (skip, if set, returns when its hold
	// ends; zero: not held) is left for then. On a stream: fetch from the
	// consumer, a job per delivered message (a nak'ed message comes back by
	// itself when its delay is over); a held one is nak'ed until its hold
	// ends.
	Scan(ctx context.Context, now time.Time, skip func(name string) time.Time, fn func(*Job) bool) (time.Time, error)
	// ScanOne claims one named new arrival in dir (one of WatchDirs), if
	// it is still there.
	ScanOne(dir, name string) (*Job, error)
	// Return puts a claimed job back, unsent and unchanged (a stream: nak
	// without delay).
	Return(job *Job) error
	// WatchDirs are the folders whose new entries announce new work (none
	// if the backend has no such folder: a stream pushes its own).
	WatchDirs() []string
}

// Sink is what the Archiver needs of a storage to file outcomes. Each
// method takes the job's Message back; the previous copy of the message is
// removed only once the new one is durable.
type Sink interface {
	// FileSent files a delivered job: a copy without the sealed header in
	// Sent (none with deleteCopy), and then the queue's copy and state go.
	// It returns where the Sent copy is. A stream: ack, after the copy is
	// written.
	FileSent(job *Job, deleteCopy bool) (string, error)
	// FileUndeliverable files a failed job with its XML log, and returns
	// where the message is. A stream: ack, after both are written.
	FileUndeliverable(job *Job, xmlLog []byte) (string, error)
	// Defer keeps a job, with its state, for a retry at due, counting an
	// attempt. A stream: the state in the message's key-value entry, then
	// nak with the delay.
	Defer(job *Job, due time.Time) error
	// Park keeps a job not attempted until due. A stream: nak with delay.
	Park(job *Job, due time.Time) error
	// Hold keeps a job until the operator releases it. A stream: the held
	// state recorded, then ack (release publishes it again).
	Hold(job *Job) error
	// Return puts a job back unsent (Source.Return).
	Return(job *Job) error
	// WriteState durably records the state of message id (a stream: in the
	// key-value store), for a filing that failed to find later.
	WriteState(id string, st *State) error
}
