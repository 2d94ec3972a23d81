package smtpclient

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/emersion/go-smtp"
)

// Envelope is what a mail transaction sends before the message.
type Envelope struct {
	From string
	To   []string
	Size int64 // the message's size in octets, for SIZE= (0: not said)
	UTF8 bool  // an address is not ASCII: SMTPUTF8
}

// Message is the message data as sent, before dot-stuffing.
type Message struct {
	// Bytes is the message if it is held in memory, else nil. A
	// pipelined transaction then writes it dot-stuffed from there, without
	// copying it byte by byte through a DotWriter.
	Bytes []byte
	// Write writes the message to w and returns how many bytes it wrote.
	Write func(w io.Writer) (int64, error)
}

// Transaction is what the server answered to one mail transaction, the
// same whether its commands were pipelined or sent one at a time. Each
// failure is an *Error at its command's step; nil is an acceptance, or a
// command that was not sent.
type Transaction struct {
	// Mail is the failure of MAIL FROM: the server refused the sender, or
	// the envelope could not be sent, or no reply came.
	Mail *Error
	// Rcpt are the RCPTs' failures, in the order of the recipients, one
	// for each answered. Where the session ended at a RCPT (no reply, or
	// 421), that failure is the last: the recipients after it have none.
	Rcpt []*Error
	// Data is the failure of DATA.
	Data *Error
	// Dot is the failure of the message data: sending it, or the reply to
	// its final dot.
	Dot *Error
	// DataAccepted says that the server accepted the message data: it
	// has the message, for the recipients it accepted.
	DataAccepted bool
	// NoReply says that the message data went out and no reply came: the
	// server may have the message.
	NoReply bool
	// Broken says that the session must not be used again: it ended (a
	// failure without a reply, or 421), or the RSET that ends a failed
	// transaction failed.
	Broken bool
}

// Send runs one mail transaction: MAIL FROM, a RCPT for each recipient,
// and, if the server accepted one, DATA and the message. Refused commands
// do not end it: the transaction is reset (RSET) and the session can go
// on, unless tx.Broken.
func (s *Session) Send(env Envelope, msg Message) *Transaction {
	if s.pipe != nil {
		return s.sendPipelined(env, msg)
	}
	c := s.c
	tx := &Transaction{}
	if err := c.Mail(env.From, &smtp.MailOptions{Size: env.Size, UTF8: env.UTF8}); err != nil {
		tx.Mail = Classify("mail", err)
		return s.end(tx, tx.Mail)
	}
	s.afterMail()
	for _, to := range env.To {
		if tx.rcpt(c.Rcpt(to, nil)) {
			return tx
		}
	}
	if tx.accepted() == 0 {
		return s.reset(tx)
	}
	w, err := c.Data()
	if err != nil {
		tx.Data = Classify("data", err)
		return s.end(tx, tx.Data)
	}
	// The data timeout bounds sending the message and the reply to the
	// final dot together, as with PIPELINING: go-smtp sets no deadline for
	// the writes (a server that stops reading held the worker until
	// shutdown), and a deadline of its own for the reply.
	dataTimeout := orDefault(s.cfg.Timeouts.Data, 10*time.Minute)
	deadline := time.Now().Add(dataTimeout)
	s.conn.SetDeadline(deadline)
	s.tr.muted = true
	n, err := msg.Write(w)
	var resp *smtp.DataResponse
	if err == nil {
		c.SubmissionTimeout = max(time.Until(deadline), time.Millisecond)
		resp, err = w.CloseWithResponse()
		c.SubmissionTimeout = dataTimeout
	}
	s.conn.SetDeadline(time.Time{})
	s.tr.muted = false
	s.tr.note(fmt.Sprintf("C: [message data: %d bytes]", n))
	var status string
	if resp != nil {
		status = resp.StatusText
	}
	return s.finish(tx, status, err)
}

// finish records the reply to the message data (err, or the status text
// of the 250) in tx.
func (s *Session) finish(tx *Transaction, status string, err error) *Transaction {
	if err == nil {
		s.tr.note(fmt.Sprintf("S: 250 %s", status))
		tx.DataAccepted = true
		return tx
	}
	e := Classify("data", err)
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		// No reply after the data: the server may have the message.
		tx.NoReply = true
		e.Text += " (no reply to the message data: the server may have received it; it will be sent again)"
	}
	s.tr.note("S: [" + e.Error() + "]")
	tx.Dot = e
	if se != nil && se.Code != 421 {
		return s.reset(tx)
	}
	tx.Broken = true
	return tx
}

// rcpt records the reply to a RCPT (err nil: accepted) and reports
// whether it ended the session.
func (tx *Transaction) rcpt(err error) (ended bool) {
	var e *Error
	if err != nil {
		e = Classify("rcpt", err)
	}
	tx.Rcpt = append(tx.Rcpt, e)
	tx.Broken = e != nil && e.EndsSession()
	return tx.Broken
}

// accepted is how many recipients the server accepted.
func (tx *Transaction) accepted() int {
	n := 0
	for _, e := range tx.Rcpt {
		if e == nil {
			n++
		}
	}
	return n
}

// end ends a transaction that failed with e: a failure that ends the
// session breaks it, any other is reset.
func (s *Session) end(tx *Transaction, e *Error) *Transaction {
	if e.EndsSession() {
		tx.Broken = true
		return tx
	}
	return s.reset(tx)
}

// reset ends a transaction left open with RSET; the session is broken if
// that fails.
func (s *Session) reset(tx *Transaction) *Transaction {
	tx.Broken = s.c.Reset() != nil
	return tx
}

func (s *Session) afterMail() {
	if s.cfg.AfterMail != nil {
		s.cfg.AfterMail()
	}
}
