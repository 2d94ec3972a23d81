package smtpclient

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
// Config.startTLS, so that the TLS connection is too); once it is, the
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
	msg = Clip(msg, MaxErrorText)
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

// sendPipelined is Send for a server that offers PIPELINING: the same
// transaction, its commands sent together, its replies read in order.
func (s *Session) sendPipelined(env Envelope, msg Message) *Transaction {
	c, p := s.c, s.pipe
	tx := &Transaction{}
	for _, a := range append([]string{env.From}, env.To...) {
		if strings.ContainsAny(a, "\r\n") {
			tx.Mail = Permanentf("mail", "an envelope address contains a line break")
			return s.end(tx, tx.Mail)
		}
	}
	var mail strings.Builder
	fmt.Fprintf(&mail, "MAIL FROM:<%s>", env.From)
	if ok, _ := c.Extension("8BITMIME"); ok {
		mail.WriteString(" BODY=8BITMIME")
	}
	if ok, _ := c.Extension("SIZE"); ok && env.Size != 0 {
		fmt.Fprintf(&mail, " SIZE=%d", env.Size)
	}
	if env.UTF8 {
		mail.WriteString(" SMTPUTF8")
	}
	cmdTimeout := orDefault(s.cfg.Timeouts.Command, 5*time.Minute)
	dataTimeout := orDefault(s.cfg.Timeouts.Data, 10*time.Minute)
	p.conn.SetDeadline(time.Now().Add(cmdTimeout))
	defer p.conn.SetDeadline(time.Time{})
	w := p.text.W
	w.WriteString(mail.String() + "\r\n")
	for _, to := range env.To {
		w.WriteString("RCPT TO:<" + to + ">\r\n")
	}
	w.WriteString("DATA\r\n")
	if err := w.Flush(); err != nil {
		tx.Mail = Classify("mail", err)
		return s.end(tx, tx.Mail)
	}

	// The replies, in order. An I/O error or a 421 ends the session: the
	// rest of the replies will not come.
	if _, err := p.reply(2); err != nil {
		tx.Mail = Classify("mail", err)
		if tx.Mail.EndsSession() {
			tx.Broken = true
			return tx
		}
	} else {
		s.afterMail()
	}
	for range env.To {
		if _, err := p.reply(2); tx.rcpt(err) {
			return tx // the transaction ends here, before any data
		}
	}
	accepted := tx.accepted()
	if _, err := p.reply(3); err != nil {
		tx.Data = Classify("data", err)
		if tx.Data.EndsSession() {
			tx.Broken = true
			return tx
		}
	} else if tx.Mail != nil || accepted == 0 {
		// DATA accepted although the transaction has no recipient (a
		// server may): end it at once with an empty message (RFC 2920,
		// 3.1); its reply does not matter, unless it ends the session.
		w.WriteString(".\r\n")
		err := w.Flush()
		if err == nil {
			if _, err = p.reply(2); err != nil && !Classify("data", err).EndsSession() {
				err = nil
			}
		}
		if err != nil {
			tx.Dot = Classify("data", err)
			tx.Broken = true
			return tx
		}
		if tx.Mail == nil {
			return tx // the empty message ended the transaction
		}
	}
	if tx.Mail != nil || accepted == 0 || tx.Data != nil {
		return s.reset(tx)
	}

	s.tr.muted = true
	p.conn.SetDeadline(time.Now().Add(dataTimeout))
	var n int64
	var err error
	if msg.Bytes != nil {
		n, err = int64(len(msg.Bytes)), writeDotted(p.text.W, msg.Bytes)
	} else {
		dw := p.text.DotWriter()
		n, err = msg.Write(dw)
		if err == nil {
			err = dw.Close()
		}
	}
	var text string
	if err == nil {
		text, err = p.reply(2)
	}
	s.tr.muted = false
	s.tr.note(fmt.Sprintf("C: [message data: %d bytes]", n))
	return s.finish(tx, text, err)
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
