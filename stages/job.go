// Package stages holds the five stages of smtpq's pipeline and the values
// that travel between them:
//
//	Scanner -> Parser -> Dispatcher -> Sender -> Archiver
//
// Each stage is a type whose Run method reads one typed channel and writes
// another; the stage that writes a channel closes it (where several stages
// write one channel, the pipeline closes it once they have all returned). A
// *Job is owned by exactly one stage at a time: passing it on a channel hands
// it over. Failures are values (an Outcome on the Job) that travel to the
// Archiver, so every claimed file ends filed somewhere, never dropped.
//
// The Sender pulls work instead of being pushed: each Sender worker sends the
// Dispatcher a Request carrying the route of its open SMTP session and the
// health of the host it last talked to, and the Dispatcher, which owns all
// per-host state (queues, connection counts, rate limiters, circuit breakers),
// answers with the next job for that session, or tells it to close the
// session or stop. See package pipeline for how the stages are wired.
package stages

import (
	"fmt"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// Kind says how a queue file carries its envelope.
type Kind int

const (
	KindSealed Kind = iota // X-SmtpQ-Sealed header
	KindPickup             // X-Sender/X-Receiver at the top (pickup_compat)
)

// Route is where and how a message is sent: one SMTP server with one set of
// credentials and TLS settings. Sessions are reused only for jobs with an
// equal Route. Route holds secrets: never log it; log Route.String().
type Route struct {
	Host        string // lower-case host name or IP
	Port        int
	TLS         queuefile.TLSMode // resolved: implicit, starttls or none
	Username    string
	Password    queuefile.Secret
	OAuth2Token queuefile.Secret
	HELO        string
}

// Addr returns host:port.
func (r Route) Addr() string {
	if isIPv6(r.Host) {
		return fmt.Sprintf("[%s]:%d", r.Host, r.Port)
	}
	return fmt.Sprintf("%s:%d", r.Host, r.Port)
}

// String describes the route without secrets.
func (r Route) String() string {
	s := r.Addr() + " tls=" + string(r.TLS)
	if r.Username != "" {
		s += " user=" + r.Username
	}
	return s
}

func isIPv6(h string) bool {
	for i := 0; i < len(h); i++ {
		if h[i] == ':' {
			return true
		}
	}
	return false
}

// State is a message's delivery state, persisted by the spool beside the
// message across deferrals and restarts.
type State struct {
	Name        string        `json:"name,omitempty"`         // the producer's file name, when the working file's name does not carry it (valid UTF-8)
	NameBytes   []byte        `json:"name_bytes,omitempty"`   // the same when it is not valid UTF-8, which JSON strings cannot carry
	Queued      time.Time     `json:"queued"`                 // when the message was first seen
	Attempts    int           `json:"attempts"`               // delivery attempts so far
	NextAttempt time.Time     `json:"next_attempt,omitzero"`  // when a deferred message is due
	LastError   string        `json:"last_error,omitempty"`   // the last transient failure
	Done        []string      `json:"done,omitempty"`         // recipients the server accepted: never sent again
	Failed      []RcptResult  `json:"failed,omitempty"`       // recipients that failed permanently
	Accepted    bool          `json:"accepted,omitempty"`     // the server accepted the data for all pending recipients
	Possible    bool          `json:"possible_dup,omitempty"` // a previous attempt may have been delivered (no reply after the final dot)
	History     []AttemptNote `json:"history,omitempty"`      // one line per attempt, newest last (bounded)
}

// SetName records the producer's file name in the state, byte for byte.
func (s *State) SetName(name string) {
	s.Name, s.NameBytes = "", nil
	if utf8.ValidString(name) {
		s.Name = name
	} else {
		s.NameBytes = []byte(name)
	}
}

// FileName returns the producer's file name recorded by SetName, or "".
func (s *State) FileName() string {
	if s.NameBytes != nil {
		return string(s.NameBytes)
	}
	return s.Name
}

// AttemptNote is one line of a message's history.
type AttemptNote struct {
	At     time.Time `json:"at"`
	Result string    `json:"result"`
}

// maxHistory bounds State.History.
const maxHistory = 20

// AddHistory appends a note, dropping the oldest beyond maxHistory.
func (s *State) AddHistory(at time.Time, result string) {
	s.History = append(s.History, AttemptNote{At: at, Result: result})
	if len(s.History) > maxHistory {
		s.History = s.History[len(s.History)-maxHistory:]
	}
}

// Job is one claimed queue file on its way through the pipeline.
type Job struct {
	ID    string // the service's own id for the message (see IDLen): keys its state, journal line and working files
	Name  string // the producer's file name (any bytes): the name it is filed under in Sent or Undeliverable
	Path  string // where the file is now (the claimer's active folder), named <id>_<name> or <id>.eml
	State State

	// Set by the Parser.
	Kind     Kind
	Params   *queuefile.Params // opened seal (nil for pickup files)
	Route    Route
	Sender   string    // envelope sender
	Pending  []string  // recipients still to be sent: the sealed ones minus State.Done and State.Failed
	Size     int64     // message size without the sealed header
	EightBit bool      // the message has bytes over 127
	UTF8     bool      // an envelope address is not ASCII: SMTPUTF8 needed
	ReadyAt  time.Time // when the Parser handed it to the Dispatcher (for wait metrics)

	// Set by whichever stage decides the job's fate.
	Outcome Outcome

	stateFile bool   // a state file was read or written for it: remove it when filed
	journaled uint64 // the server's acceptance is line journaled of the spool's journal (0: not)

	// body is the message as sent (without the sealed header), read once by
	// the Parser, for the Sender and the Sent copy; nil: read it from Path.
	body    []byte
	budget  *memBudget // where body's bytes were counted
	counted int64      // how many
}

// dropBody lets go of the message held in memory.
func (j *Job) dropBody() {
	if j.budget != nil {
		j.budget.give(j.counted)
	}
	j.body, j.budget, j.counted = nil, nil, 0
}

// memBudget bounds the bytes of messages held in memory by jobs in flight.
type memBudget struct{ left atomic.Int64 }

func newMemBudget(n int64) *memBudget {
	b := &memBudget{}
	b.left.Store(n)
	return b
}

// take counts n more bytes, if they fit.
func (b *memBudget) take(n int64) bool {
	if b.left.Add(-n) < 0 {
		b.left.Add(n)
		return false
	}
	return true
}

func (b *memBudget) give(n int64) { b.left.Add(n) }

// Host returns the SMTP host the job goes to, the key of per-host limits.
func (j *Job) Host() string { return j.Route.Host }
