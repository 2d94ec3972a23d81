package smtptest

import (
	"io"
	"strconv"
	"time"

	"github.com/emersion/go-smtp"
)

// Step identifies a point in an SMTP session at which [Server.Fault] is
// consulted.
type Step int

// The steps of an SMTP session, in the order in which a client normally
// reaches them.
const (
	// Greeting is the moment a connection has been accepted, before the
	// 220 banner is written. It is handled by smtptest itself, not by
	// go-smtp: an Err replaces the banner (see [Fault]).
	Greeting Step = iota + 1
	// Hello is the EHLO or HELO command. Arg is the name the client gave.
	// go-smtp creates a backend session here; an Err becomes the reply to
	// EHLO/HELO and the client may say hello again.
	Hello
	// Auth is an AUTH command, once the client's credentials have been
	// received and before they are checked. Arg is the user name.
	Auth
	// Mail is the MAIL FROM command. Arg is the reverse path.
	Mail
	// Rcpt is one RCPT TO command. Arg is the recipient, so a fault can
	// reject one recipient out of several.
	Rcpt
	// Data is the start of the message content. go-smtp has already sent
	// 354 at this point and has no way to refuse DATA itself, so an Err is
	// the reply sent after the client's final dot; the content is read and
	// discarded.
	Data
	// AfterDot is the moment the whole message has been read, before the
	// reply to the final dot. A message is recorded only if this step
	// proceeds normally.
	AfterDot
	// Reset is an RSET command (go-smtp also treats a repeated EHLO as one).
	Reset
	// Quit is a QUIT command, before the 221 reply. See [Fault] for the
	// limits of this step on TLS connections.
	Quit
)

var stepNames = [...]string{
	Greeting: "Greeting",
	Hello:    "Hello",
	Auth:     "Auth",
	Mail:     "Mail",
	Rcpt:     "Rcpt",
	Data:     "Data",
	AfterDot: "AfterDot",
	Reset:    "Reset",
	Quit:     "Quit",
}

// String returns the name of the step, such as "Rcpt".
func (s Step) String() string {
	if s > 0 && int(s) < len(stepNames) {
		return stepNames[s]
	}
	return "Step(" + strconv.Itoa(int(s)) + ")"
}

// FaultPoint describes where a session is when [Server.Fault] is called.
type FaultPoint struct {
	// Step is the point of the session.
	Step Step
	// Session is the 1-based number of the connection, in the order the
	// server accepted them. A connection keeps its number across STARTTLS.
	Session int
	// Message is the 1-based number of MAIL commands received so far on
	// this connection, including the current one and those that were
	// rejected. It is 0 before the first MAIL.
	Message int
	// Arg is the argument of the step: the EHLO/HELO name for Hello, the
	// user name for Auth, the reverse path for Mail and the recipient for
	// Rcpt. It is empty for the other steps.
	Arg string
}

// Fault is what a session does at a [FaultPoint]. The zero Fault proceeds
// normally.
//
// Stall is applied first; then, if Drop is set, the connection is closed,
// otherwise if Raw is set it is written and the connection closed,
// otherwise if Err is set it is sent as the reply.
//
// Err should carry a 4xx or 5xx code. At Greeting it replaces the 220 banner
// and the server then answers every command but QUIT with 503, as RFC 5321
// section 3.1 asks. At Reset it is sent as the reply to RSET and the
// connection is then closed, because go-smtp gives a backend no way to fail
// RSET. At Quit it replaces the 221 reply.
//
// Quit faults can only be applied on connections without TLS: go-smtp
// answers QUIT without consulting the backend, so smtptest recognises the
// reply on the wire, which TLS hides. On TLS connections Fault is not called
// with Quit.
type Fault struct {
	// Err, if non-nil, is sent as the reply to the command.
	Err *smtp.SMTPError
	// Drop closes the TCP connection without any reply.
	Drop bool
	// Stall delays the step by this long. A stall ends early when the
	// server is closed; the connection is then closed too.
	Stall time.Duration
	// Raw, if set, is written to the connection in place of the reply (at
	// Greeting, of the banner), and the connection is then closed: bytes
	// that no well-behaved server sends, such as binary noise, a line or
	// a multi-line reply that never ends (an endless Reader, see
	// [Repeat]), or a reply trickled out (see Trickle). Writing stops
	// early when the client closes the connection or the server is
	// closed. The Fault function must return a new Reader for each call.
	Raw io.Reader
	// Trickle, with Raw, writes it one byte at a time, Trickle apart, as
	// a server that is slow on purpose (a tarpit) does.
	Trickle time.Duration
}

// Repeat returns a Reader that yields b over and over, without end: with
// Fault.Raw, a reply that never ends.
func Repeat(b []byte) io.Reader {
	if len(b) == 0 {
		panic("smtptest: Repeat of nothing")
	}
	return &repeater{b: b}
}

type repeater struct {
	b   []byte
	off int
}

func (r *repeater) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		k := copy(p[n:], r.b[r.off:])
		n += k
		r.off = (r.off + k) % len(r.b)
	}
	return n, nil
}

// Reply returns a Fault that answers with the given code, enhanced status
// code and message, for example Reply(550, smtp.EnhancedCode{5, 1, 1},
// "No such user").
func Reply(code int, enhanced smtp.EnhancedCode, message string) Fault {
	return Fault{Err: &smtp.SMTPError{Code: code, EnhancedCode: enhanced, Message: message}}
}

// FaultAt returns a function for [Server.Fault] that returns f at every
// point of the given step and proceeds normally everywhere else.
func FaultAt(step Step, f Fault) func(FaultPoint) Fault {
	return func(p FaultPoint) Fault {
		if p.Step == step {
			return f
		}
		return Fault{}
	}
}
