package stages

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// go-smtp's client sends each command and waits for its reply: four round
// trips per message. When the server offers PIPELINING (RFC 2920), a
// transaction here goes in two: MAIL, every RCPT and DATA in one write, their
// replies read in order, then the message and its final dot. The session is
// still opened by go-smtp (greeting, EHLO, AUTH; STARTTLS is ours, see
// Sender.startTLS, so that the TLS connection is too); once it is, the
// server says nothing until spoken to, so the transactions can run on the
// connection underneath with a reader and writer of their own.

// pipe is a session's own reader and writer for pipelined transactions.
type pipe struct {
	conn net.Conn
	text *textproto.Conn
}

// tee copies what a session sends and receives to its transcript.
type tee struct {
	net.Conn
	tr *transcript
}

func (t tee) Read(b []byte) (int, error) {
	n, err := t.Conn.Read(b)
	t.tr.Write(b[:n])
	return n, err
}

func (t tee) Write(b []byte) (int, error) {
	t.tr.Write(b)
	return t.Conn.Write(b)
}

func newPipe(conn net.Conn, tr *transcript) *pipe {
	return &pipe{conn: conn, text: textproto.NewConn(tee{Conn: conn, tr: tr})}
}

// reply reads one reply, as go-smtp would report it: nil for a code of the
// expected class (2 for 2xx, 3 for 3xx), else an *smtp.SMTPError or the I/O
// error.
func (p *pipe) reply(class int) (string, error) {
	code, msg, err := p.text.ReadResponse(class)
	var pe *textproto.Error
	if errors.As(err, &pe) {
		return msg, smtpError(code, msg)
	}
	return msg, err
}

// smtpError turns a reply into go-smtp's error type, with its enhanced code
// split off as go-smtp does, so that Classify reads both alike.
func smtpError(code int, msg string) *smtp.SMTPError {
	// A reply may be up to MaxReply long; what is kept of it is less.
	msg = clip(msg, maxErrorText)
	e := &smtp.SMTPError{Code: code, Message: msg, EnhancedCode: smtp.NoEnhancedCode}
	first, rest, ok := strings.Cut(msg, " ")
	if !ok {
		return e
	}
	parts := strings.Split(first, ".")
	if len(parts) != 3 {
		return e
	}
	var ec smtp.EnhancedCode
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return e
		}
		ec[i] = n
	}
	e.EnhancedCode = ec
	e.Message = strings.ReplaceAll(rest, "\n"+first+" ", "\n")
	return e
}

// deliverPipelined is deliver for a server that offers PIPELINING. It
// decides exactly as deliver does, from the same replies.
func (s *Sender) deliverPipelined(sess *session, job *Job, fail func(*Error, []RcptResult) bool) (broken bool) {
	c, p := sess.c, sess.pipe
	for _, a := range append([]string{job.Sender}, job.Pending...) {
		if strings.ContainsAny(a, "\r\n") {
			e := Permanentf("mail", "an envelope address contains a line break")
			return fail(e, allRcpts(job.Pending, e))
		}
	}
	var mail strings.Builder
	fmt.Fprintf(&mail, "MAIL FROM:<%s>", job.Sender)
	if ok, _ := c.Extension("8BITMIME"); ok {
		mail.WriteString(" BODY=8BITMIME")
	}
	if ok, _ := c.Extension("SIZE"); ok && job.Size != 0 {
		fmt.Fprintf(&mail, " SIZE=%d", job.Size)
	}
	if job.UTF8 {
		mail.WriteString(" SMTPUTF8")
	}
	cmdTimeout := orDefault(s.Timeouts.Command, 5*time.Minute)
	dataTimeout := orDefault(s.Timeouts.Data, 10*time.Minute)
	p.conn.SetDeadline(time.Now().Add(cmdTimeout))
	defer p.conn.SetDeadline(time.Time{})
	w := p.text.W
	w.WriteString(mail.String() + "\r\n")
	for _, to := range job.Pending {
		w.WriteString("RCPT TO:<" + to + ">\r\n")
	}
	w.WriteString("DATA\r\n")
	if err := w.Flush(); err != nil {
		e := Classify("mail", err)
		return fail(e, allRcpts(job.Pending, e))
	}

	// The replies, in order. An I/O error or a 421 ends the session: the
	// rest of the replies will not come.
	_, mailErr := p.reply(2)
	if mailErr != nil {
		e := Classify("mail", mailErr)
		if e.Code == 0 || e.Code == 421 {
			return fail(e, allRcpts(job.Pending, e))
		}
	} else {
		s.crash("after-mail")
	}
	var rcptErrs []error
	for range job.Pending {
		_, err := p.reply(2)
		if err != nil {
			e := Classify("rcpt", err)
			if e.Code == 0 || e.Code == 421 {
				// The transaction ends here, before any data.
				if mailErr != nil {
					return fail(e, allRcpts(job.Pending, e))
				}
				return fail(e, brokenAt(job.Pending, rcptResults(job.Pending, rcptErrs), e))
			}
		}
		rcptErrs = append(rcptErrs, err)
	}
	_, dataErr := p.reply(3)
	if dataErr != nil {
		if e := Classify("data", dataErr); e.Code == 0 || e.Code == 421 {
			if mailErr != nil {
				e = Classify("mail", mailErr)
			}
			return fail(e, allRcpts(job.Pending, e))
		}
	} else if mailErr != nil || len(job.Pending) == 0 || allFailed(rcptErrs) {
		// DATA accepted although the transaction has no recipient (a
		// server may): end it at once with an empty message (RFC 2920,
		// 3.1); its reply does not matter.
		w.WriteString(".\r\n")
		if err := w.Flush(); err != nil {
			dataErr = err
		} else if _, err := p.reply(2); err != nil {
			if e := Classify("data", err); e.Code == 0 || e.Code == 421 {
				dataErr = err
			}
		}
		if dataErr != nil {
			e := Classify("data", dataErr)
			return fail(e, allRcpts(job.Pending, e))
		}
	}
	if mailErr != nil {
		e := Classify("mail", mailErr)
		if fail(e, allRcpts(job.Pending, e)) {
			return true
		}
		return c.Reset() != nil
	}
	rcpts := rcptResults(job.Pending, rcptErrs)
	var accepted []int
	for i, r := range rcpts {
		if r.Status == RcptDelivered {
			accepted = append(accepted, i)
		}
	}
	if len(accepted) == 0 {
		job.Outcome = outcomeFromRcpts(rcpts)
		if dataErr == nil {
			return false // the empty message ended the transaction
		}
		return c.Reset() != nil
	}
	if dataErr != nil {
		return dataRefused(c, rcpts, accepted, dataErr, fail)
	}

	sess.tr.muted = true
	p.conn.SetDeadline(time.Now().Add(dataTimeout))
	var n int64
	var err error
	if job.body != nil {
		n, err = int64(len(job.body)), writeDotted(p.text.W, job.body)
	} else {
		dw := p.text.DotWriter()
		n, err = writeData(dw, job)
		if err == nil {
			err = dw.Close()
		}
	}
	var msg string
	if err == nil {
		msg, err = p.reply(2)
	}
	sess.tr.muted = false
	sess.tr.note(fmt.Sprintf("C: [message data: %d bytes]", n))
	return s.finish(sess, job, rcpts, accepted, msg, err, fail)
}

// writeDotted writes msg as message data, dot-stuffed and ended with the
// final dot, and flushes w: byte for byte what net/textproto's DotWriter
// writes, without its byte-at-a-time loop when every line ends in CRLF
// (the rule for a message, and what Enqueue writes); anything else goes
// through the DotWriter itself.
func writeDotted(w *bufio.Writer, msg []byte) error {
	lf := bytes.Count(msg, []byte("\n"))
	if bytes.Count(msg, []byte("\r")) != lf || bytes.Count(msg, []byte("\r\n")) != lf {
		dw := textproto.NewWriter(w).DotWriter()
		if _, err := dw.Write(msg); err != nil {
			return err
		}
		return dw.Close()
	}
	if len(msg) > 0 && msg[0] == '.' {
		w.WriteByte('.')
	}
	rest := msg
	for {
		i := bytes.Index(rest, []byte("\n."))
		if i < 0 {
			break
		}
		w.Write(rest[:i+1])
		w.WriteByte('.')
		rest = rest[i+1:]
	}
	w.Write(rest)
	if len(msg) == 0 || msg[len(msg)-1] != '\n' {
		w.WriteString("\r\n")
	}
	w.WriteString(".\r\n")
	return w.Flush()
}

// rcptResults are the results of the first len(errs) recipients of
// pending from the replies to their RCPTs (errs[i] nil: accepted).
func rcptResults(pending []string, errs []error) []RcptResult {
	out := make([]RcptResult, len(errs))
	for i, err := range errs {
		if err != nil {
			out[i] = rcptResult(pending[i], Classify("rcpt", err))
		} else {
			out[i] = RcptResult{Addr: pending[i], Status: RcptDelivered}
		}
	}
	return out
}

func allFailed(errs []error) bool {
	for _, err := range errs {
		if err == nil {
			return false
		}
	}
	return true
}
