package stages

import (
	"fmt"
	"io"
	"strings"
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

// AddDone records a recipient the server accepted, once: it is never sent
// to again. Addresses are compared without regard to case.
func (s *State) AddDone(addr string) {
	for _, x := range s.Done {
		if strings.EqualFold(x, addr) {
			return
		}
	}
	s.Done = append(s.Done, addr)
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
	ID    string  // the storage's own id for the message: keys its state and working files
	Name  string  // the producer's file name (any bytes): the name it is filed under in Sent or Undeliverable
	Msg   Message // the storage's handle on the message, from claim to filing
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

	// body is the message as sent (without the sealed header), read once by
	// the Parser, for the Sender and the Sent copy; nil: read it from the
	// storage (Msg).
	body *heldBody
}

// AcceptedState returns the job's state with the server's acceptance of its
// data merged in, for the storage to record before the job is filed: the
// recipients the server accepted are done, and if none is left the message
// counts as sent (Accepted). The job's own State is left as it is.
func (j *Job) AcceptedState() State {
	st := j.State
	st.Done = append([]string(nil), st.Done...)
	for _, r := range j.Outcome.Rcpts {
		if r.Status == RcptDelivered {
			st.AddDone(r.Addr)
		}
	}
	st.Accepted = j.Outcome.Verdict == Sent
	return st
}

// WriteMessage writes the message as it is sent, without the sealed header
// (or the pickup envelope): from memory if the Parser kept it, else read
// anew from the storage. The Sender sends it; the storage files it in Sent.
func (j *Job) WriteMessage(w io.Writer) error {
	if b := j.body.bytes(); b != nil {
		_, err := w.Write(b)
		return err
	}
	src, err := j.Msg.Open()
	if err != nil {
		return fmt.Errorf("reopening the queue file: %w", err)
	}
	defer src.Close()
	if j.Kind == KindPickup {
		return queuefile.StripPickup(w, src)
	}
	return queuefile.StripSealed(w, src)
}

// dropBody lets go of the message held in memory, giving its share of the
// memory budget back.
func (j *Job) dropBody() {
	j.body.release()
	j.body = nil
}

// Host returns the SMTP host the job goes to, the key of per-host limits.
func (j *Job) Host() string { return j.Route.Host }
