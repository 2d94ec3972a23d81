package notify

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"time"

	"github.com/smtpq/smtpq/stages"
)

// The event types, one per outcome a webhook may ask for.
const (
	EventSent     = "sent"
	EventDeferred = "deferred"
	EventFailed   = "failed"
	EventHeld     = "held"
)

// EventTypes are the event types, in the order the README lists them.
var EventTypes = []string{EventSent, EventDeferred, EventFailed, EventHeld}

// Event is the JSON body of a webhook POST. It never holds a credential:
// no password, token or user name, nothing of the seal but the envelope.
type Event struct {
	ID          string      `json:"id"`    // unique, the same at every retry: deduplicate on it
	Type        string      `json:"event"` // sent, deferred, failed or held
	Time        time.Time   `json:"time"`  // when the outcome was filed
	Name        string      `json:"name"`  // the queue file's name (what enqueue returned)
	QueueID     string      `json:"queue_id"`
	MessageID   string      `json:"message_id,omitempty"` // the Message-ID header, if any
	From        string      `json:"from"`                 // envelope sender ("" for a notice)
	Recipients  []string    `json:"recipients"`           // envelope recipients
	Host        string      `json:"host,omitempty"`       // the SMTP server
	Port        int         `json:"port,omitempty"`
	Class       string      `json:"class,omitempty"` // for failed: permanent, expired or invalid
	Reply       *Reply      `json:"reply,omitempty"` // the failure, for deferred and failed
	Rcpts       []RcptEvent `json:"rcpts,omitempty"` // per-recipient results of the last attempt
	Attempts    int         `json:"attempts"`
	Queued      time.Time   `json:"queued"`
	NextAttempt *time.Time  `json:"next_attempt,omitempty"` // for deferred
	Path        string      `json:"path,omitempty"`         // where it was filed (Sent, Undeliverable)
}

// Reply is a failure as the XML log keeps it: the server's reply, or
// smtpq's reason, never a secret.
type Reply struct {
	Step     string `json:"step,omitempty"`
	Code     int    `json:"code,omitempty"`
	Enhanced string `json:"enhanced,omitempty"`
	Text     string `json:"text"`
}

// RcptEvent is one recipient's result.
type RcptEvent struct {
	Addr     string `json:"addr"`
	Status   string `json:"status"`
	Code     int    `json:"code,omitempty"`
	Enhanced string `json:"enhanced,omitempty"`
	Text     string `json:"text,omitempty"`
}

// eventType returns the event a filing makes, or "" for none: a filing
// that failed (the message is filed again later, and reported then), and
// the internal moves (parked, returned).
func eventType(f stages.Filed) string {
	if f.Err != nil || f.Job == nil {
		return ""
	}
	switch f.Verdict {
	case stages.Sent:
		return EventSent
	case stages.Deferred:
		return EventDeferred
	case stages.Failed:
		return EventFailed
	case stages.Held:
		return EventHeld
	}
	return ""
}

// newEvent describes a filing about to be made. msgID is the Message-ID
// header ("" if not known). What only the filing knows is added by filed.
func newEvent(id, typ string, f stages.Filed, now time.Time, msgID string) *Event {
	j := f.Job
	e := &Event{
		ID: id, Type: typ, Time: now.UTC(), Name: j.Name, QueueID: j.ID, MessageID: msgID,
		From: j.Sender, Recipients: envelopeTo(j), Host: j.Route.Host, Port: j.Route.Port,
		Class: string(j.Outcome.Class), Attempts: j.State.Attempts, Queued: j.State.Queued.UTC(),
	}
	if e.Recipients == nil {
		e.Recipients = []string{}
	}
	if err := j.Outcome.Err; err != nil && (typ == EventDeferred || typ == EventFailed) {
		e.Reply = &Reply{Step: err.Step, Code: err.Code, Enhanced: err.Enhanced, Text: err.Text}
	}
	for _, r := range j.Outcome.Rcpts {
		e.Rcpts = append(e.Rcpts, RcptEvent{Addr: r.Addr, Status: string(r.Status), Code: r.Code, Enhanced: r.Enhanced, Text: r.Text})
	}
	return e
}

// filed adds to e what the filing f decided: where the message is, and
// when a deferred one is tried again.
func (e *Event) filed(f stages.Filed) {
	e.Path = f.Path
	if t := f.Job.State.NextAttempt; e.Type == EventDeferred && !t.IsZero() {
		t = t.UTC()
		e.NextAttempt = &t
	}
}

// envelopeTo returns the message's envelope recipients: the sealed ones,
// or for a message whose seal was not opened, none.
func envelopeTo(j *stages.Job) []string {
	if j.Params != nil {
		return j.Params.To
	}
	return nil
}

var idEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// newEventID returns a new event id: 26 characters, a time in nanoseconds
// then 64 random bits, so that ids sort by time (the outbox delivers in
// that order) and never repeat. The time is now, or one nanosecond after
// the last id's if now is not later (a coarse or stopped clock), so
// that events recorded one after the other keep their order.
func (n *Notifier) newEventID(now time.Time) string {
	n.idMu.Lock()
	t := max(now.UnixNano(), n.lastID+1)
	n.lastID = t
	n.idMu.Unlock()
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(t))
	rand.Read(b[8:])
	return idEncoding.EncodeToString(b[:])
}
