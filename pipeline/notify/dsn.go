package notify

import (
	"bytes"
	"fmt"
	"strings"
	"time"

	message "github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// Action is a recipient's action in a delivery status notice (RFC 3464
// section 2.3.3): only the two smtpq reports.
type Action string

const (
	ActionFailed  Action = "failed"  // given up for good
	ActionDelayed Action = "delayed" // still being retried
)

// Recipient is one recipient's part of a notice.
type Recipient struct {
	Addr       string
	Action     Action
	Status     string // enhanced status code x.y.z (RFC 3463)
	RemoteMTA  string // the SMTP server's host, if one was reached or tried
	Diagnostic string // the server's reply ("550 5.1.1 no such user"), or smtpq's reason
	FromServer bool   // Diagnostic is an SMTP reply (diagnostic type smtp), else smtpq's own text
}

// Report is what a delivery status notice says.
type Report struct {
	ReportingMTA string    // the name smtpq reports as (its HELO name)
	To           string    // the original envelope sender, who gets the notice
	Arrival      time.Time // when the message was first queued
	Now          time.Time // Date of the notice
	Name         string    // the message's queue file name, for the human part
	Recipients   []Recipient
	// Headers are the original message's header section (without the
	// sealed field), as it was sent; empty if it could not be read.
	Headers []byte
}

// BuildDSN writes the notice: a multipart/report; report-type=delivery-status
// message (RFC 3464, RFC 6522) with a human-readable text part, a
// message/delivery-status part and a text/rfc822-headers part with the
// original headers. Its own envelope sender must be the null path.
func BuildDSN(r *Report) ([]byte, error) {
	if len(r.Recipients) == 0 {
		return nil, fmt.Errorf("a notice for %s with no recipient", r.Name)
	}
	delayed := r.Recipients[0].Action == ActionDelayed
	// go-message writes the fields last set first: set them bottom up.
	var h mail.Header
	h.SetContentType("multipart/report", map[string]string{"report-type": "delivery-status"})
	// RFC 3834: an automatic answer, which no robot should answer again.
	h.Set("Auto-Submitted", "auto-replied")
	if err := h.GenerateMessageIDWithHostname(r.ReportingMTA); err != nil {
		return nil, err
	}
	h.SetDate(r.Now)
	if delayed {
		h.SetSubject("Delayed Mail (still being retried)")
	} else {
		h.SetSubject("Undelivered Mail Returned to Sender")
	}
	h.SetAddressList("To", []*mail.Address{{Address: r.To}})
	h.SetAddressList("From", []*mail.Address{{Name: "Mail Delivery System", Address: "MAILER-DAEMON@" + r.ReportingMTA}})
	var buf bytes.Buffer
	w, err := message.CreateWriter(&buf, h.Header)
	if err != nil {
		return nil, err
	}
	parts := []struct {
		ctype string
		body  []byte
	}{
		{"text/plain", humanText(r, delayed)},
		{"message/delivery-status", deliveryStatus(r)},
		{"text/rfc822-headers", crlf(r.Headers)},
	}
	for _, p := range parts {
		if p.ctype == "text/rfc822-headers" && len(p.body) == 0 {
			continue
		}
		if err := writePart(w, p.ctype, p.body); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func writePart(w *message.Writer, ctype string, body []byte) error {
	var ph message.Header
	params := map[string]string{}
	if ctype == "text/plain" {
		params["charset"] = "utf-8"
	}
	ph.SetContentType(ctype, params)
	pw, err := w.CreatePart(ph)
	if err != nil {
		return err
	}
	if _, err := pw.Write(body); err != nil {
		return err
	}
	return pw.Close()
}

// humanText is the notice's first part, for a person.
func humanText(r *Report, delayed bool) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "This is the mail system at %s.\r\n\r\n", r.ReportingMTA)
	if delayed {
		fmt.Fprintf(&b, "Your message (queued %s) could not be delivered yet to the\r\nrecipients below. It is still being retried; you need not send it again.\r\n\r\n",
			r.Arrival.UTC().Format(time.RFC1123Z))
	} else {
		b.WriteString("Your message could not be delivered to the recipients below.\r\nIt has been given up; the original headers are attached.\r\n\r\n")
	}
	for _, rc := range r.Recipients {
		fmt.Fprintf(&b, "<%s>: %s\r\n", rc.Addr, oneLine(rc.Diagnostic))
	}
	return []byte(b.String())
}

// deliveryStatus is the message/delivery-status part: the per-message
// fields, then one block per recipient, each ended by an empty line.
func deliveryStatus(r *Report) []byte {
	var buf bytes.Buffer
	msg := []string{"Reporting-MTA", "dns; " + r.ReportingMTA}
	if !r.Arrival.IsZero() {
		msg = append(msg, "Arrival-Date", r.Arrival.Format(time.RFC1123Z))
	}
	writeFields(&buf, msg...)
	for _, rc := range r.Recipients {
		f := []string{"Final-Recipient", "rfc822; " + rc.Addr, "Action", string(rc.Action), "Status", rc.Status}
		if rc.RemoteMTA != "" {
			f = append(f, "Remote-MTA", "dns; "+rc.RemoteMTA)
		}
		if d := oneLine(rc.Diagnostic); d != "" {
			typ := "X-SmtpQ"
			if rc.FromServer {
				typ = "smtp"
			}
			f = append(f, "Diagnostic-Code", typ+"; "+d)
		}
		writeFields(&buf, f...)
	}
	return buf.Bytes()
}

// writeFields writes a block of header fields (name, value, name, value...)
// with go-message's writer, in the order given and with the names as
// written, and the empty line that ends the block. Values are one line
// each (oneLine), well under the 998-octet limit.
func writeFields(buf *bytes.Buffer, kv ...string) {
	var h textproto.Header
	// WriteHeader writes the fields last added first.
	for i := len(kv) - 2; i >= 0; i -= 2 {
		h.AddRaw([]byte(kv[i] + ": " + kv[i+1] + "\r\n"))
	}
	_ = textproto.WriteHeader(buf, h) // to memory: no error
}

// oneLine makes s fit a header field: line breaks become spaces, other
// control characters '?', and it is cut at 900 bytes.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		switch {
		case r == '\r' || r == '\n' || r == '\t':
			return ' '
		case r < 0x20 || r == 0x7f:
			return '?'
		}
		return r
	}, s)
	if len(s) > 900 {
		s = strings.ToValidUTF8(s[:900], "")
	}
	return strings.TrimSpace(s)
}

// crlf returns b with every line ending CRLF, as a part of a MIME message
// should have.
func crlf(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	b = bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n"))
	return bytes.ReplaceAll(b, []byte("\n"), []byte("\r\n"))
}
