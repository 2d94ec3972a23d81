package smtpclient

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/emersion/go-smtp"
)

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

// EndsSession reports whether e leaves the session unusable: no reply
// (an I/O error, or a command that could not be sent) or 421, the server
// closing.
func (e *Error) EndsSession() bool { return e.Code == 0 || e.Code == 421 }

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
			// A code outside 200-599 is no SMTP reply at all (RFC 5321
			// 4.2.1 has five classes): a broken server, not a verdict on
			// the message: temporary.
			Temporary: se.Code < 500 || se.Code > 599 || (se.Code == 552 && step == "rcpt"),
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
