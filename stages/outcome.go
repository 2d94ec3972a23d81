package stages

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// Verdict is what the Archiver is asked to do with a job.
type Verdict int

const (
	// Sent: every pending recipient was accepted. File in Sent.
	Sent Verdict = iota + 1
	// Transient: retry later (counts as an attempt), unless retries or age
	// are exhausted.
	Transient
	// Permanent: give up now. Undeliverable with an XML log.
	Permanent
	// Park: not attempted (a saturated or paused host, a not-before time in
	// the future); back to the deferred folder until Due, attempts unchanged.
	Park
	// Return: not attempted (shutdown); back to the queue as it was.
	Return
	// Hold: not attempted (the operator held it); to the hold folder.
	Hold
)

func (v Verdict) String() string {
	switch v {
	case Sent:
		return "sent"
	case Transient:
		return "deferred"
	case Permanent:
		return "failed"
	case Park:
		return "parked"
	case Return:
		return "returned"
	case Hold:
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
	Class      Class         // for Permanent
	Err        *Error        // the failure, for Transient and Permanent
	Rcpts      []RcptResult  // per-recipient results of the last attempt
	Due        time.Time     // for Park: when to look again
	Attempted  bool          // an SMTP transaction was started (counts as an attempt)
	Transcript string        // redacted SMTP transcript of the attempt
	Duration   time.Duration // of the attempt
}

// RcptStatus is a recipient's result.
type RcptStatus string

const (
	RcptDelivered RcptStatus = "delivered"
	RcptTransient RcptStatus = "deferred"
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

// Error is a delivery failure, classified once where it happens.
type Error struct {
	Temporary bool
	Code      int    // SMTP reply code, 0 if none (network, TLS, local)
	Enhanced  string // enhanced status code such as "5.1.1", if any
	Text      string // the server's text, or a description; never a secret
	Step      string // where it happened: parse, connect, tls, greeting, ehlo, starttls, auth, size, mail, rcpt, data, local
	// HostDown marks failures that say the host, not the message, is in
	// trouble: refused or timed-out connections, 421. The Dispatcher backs off
	// such hosts.
	HostDown bool
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.Step)
	b.WriteString(": ")
	if e.Code != 0 {
		fmt.Fprintf(&b, "%d ", e.Code)
	}
	if e.Enhanced != "" {
		b.WriteString(e.Enhanced + " ")
	}
	b.WriteString(e.Text)
	return b.String()
}

// Classify turns an error from a step of an SMTP session into an *Error.
// Unknown errors are temporary: a retry costs less than a lost message.
func Classify(step string, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		out := &Error{
			// RFC 5321 4.5.3.1.10: 552 at RCPT is the old, wrong code for
			// "too many recipients" (452): temporary, so the rest are sent
			// in a later transaction.
			Temporary: se.Code < 500 || (se.Code == 552 && step == "rcpt"),
			Code:      se.Code,
			Text:      se.Message,
			Step:      step,
			HostDown:  se.Code == 421,
		}
		if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
			out.Enhanced = fmt.Sprintf("%d.%d.%d", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
		}
		return out
	}
	out := &Error{Temporary: true, Step: step, Text: err.Error()}
	var ne net.Error
	var oe *net.OpError
	switch {
	case errors.As(err, &oe) && oe.Op == "dial":
		out.HostDown = true
	case errors.As(err, &ne) && ne.Timeout() && (step == "connect" || step == "greeting"):
		out.HostDown = true
	}
	return out
}

// Permanentf returns a permanent local error.
func Permanentf(step, format string, args ...any) *Error {
	return &Error{Step: step, Text: fmt.Sprintf(format, args...)}
}

// Temporaryf returns a temporary local error.
func Temporaryf(step, format string, args ...any) *Error {
	return &Error{Temporary: true, Step: step, Text: fmt.Sprintf(format, args...)}
}
