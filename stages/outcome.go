package stages

import (
	"time"

	"github.com/smtpq/smtpq/stages/smtpclient"
)

// Verdict is what the Archiver is asked to do with a job. Each prints as its
// name in lower case, the word the logs, metrics and queue commands use.
type Verdict int

const (
	// Sent: every pending recipient was accepted. File in Sent.
	Sent Verdict = iota + 1
	// Deferred: retry later (counts as an attempt), unless retries or age
	// are exhausted.
	Deferred
	// Failed: give up now. Undeliverable with an XML log.
	Failed
	// Parked: not attempted (a saturated or paused host, a not-before time in
	// the future); back to the deferred folder until Due, attempts unchanged.
	Parked
	// Returned: not attempted (shutdown); back to the queue as it was.
	Returned
	// Held: not attempted (the operator held it); to the hold folder.
	Held
)

func (v Verdict) String() string {
	switch v {
	case Sent:
		return "sent"
	case Deferred:
		return "deferred"
	case Failed:
		return "failed"
	case Parked:
		return "parked"
	case Returned:
		return "returned"
	case Held:
		return "held"
	}
	return "none"
}

// Class says why a message failed, in the XML log.
type Class string

const (
	ClassPermanent Class = "permanent" // the server refused it (5xx), or retries were exhausted
	ClassExpired   Class = "expired"   // past its expiry or the retry max_age
	ClassInvalid   Class = "invalid"   // the file or its parameters are wrong: bad seal, malformed, unknown relay
)

// Outcome is the fate of a job as decided by a stage.
type Outcome struct {
	Verdict    Verdict
	Class      Class         // for Failed
	Err        *Error        // the failure, for Deferred and Failed
	Rcpts      []RcptResult  // per-recipient results of the last attempt
	Due        time.Time     // for Parked: when to look again
	Attempted  bool          // an SMTP transaction was started (counts as an attempt)
	Transcript string        // redacted SMTP transcript of the attempt
	Duration   time.Duration // of the attempt
}

// RcptStatus is a recipient's result.
type RcptStatus string

const (
	RcptDelivered RcptStatus = "delivered"
	RcptDeferred  RcptStatus = "deferred"
	RcptFailed    RcptStatus = "failed"
)

// RcptResult is the result of one recipient.
type RcptResult struct {
	Addr     string     `json:"addr"`
	Status   RcptStatus `json:"status"`
	Code     int        `json:"code,omitempty"`
	Enhanced string     `json:"enhanced,omitempty"`
	Text     string     `json:"text,omitempty"`
}

// Error is a delivery failure, classified once where it happens: the
// SMTP client's (smtpclient.Error), which the other stages use too (parse,
// local).
type Error = smtpclient.Error

// Permanentf returns a permanent local error.
func Permanentf(step, format string, args ...any) *Error {
	return smtpclient.Permanentf(step, format, args...)
}

// Temporaryf returns a temporary local error.
func Temporaryf(step, format string, args ...any) *Error {
	return smtpclient.Temporaryf(step, format, args...)
}
