package smtpclient

import (
	"fmt"
	"io"
	"net"
	"unicode/utf8"
)

// A server chooses the bytes it sends: what is read from it is bounded,
// whatever reads it (our own readers, and go-smtp's through the connection
// it is given). RFC 5321 (4.5.3.1.5) allows 512 octets a reply line; a
// multi-line reply has no limit there, and the longest that real servers
// send (EHLO) are a few hundred octets.
const (
	// MaxReplyLine is the most octets a reply line may have, CRLF
	// included: twice RFC 5321's 512, and below go-smtp's own bound (2000)
	// so that one limit, with one message, holds for every reader.
	MaxReplyLine = 1000
	// MaxReply is the most octets one reply may have, all its lines
	// together.
	MaxReply = 64 << 10
)

// ReplyTooLongError is the failure of a session whose server sent a reply
// line or a reply over its bound. It is temporary, as any I/O error.
type ReplyTooLongError struct {
	Line  bool // a line over MaxReplyLine, else a reply over MaxReply
	Limit int
}

func (e *ReplyTooLongError) Error() string {
	if e.Line {
		return fmt.Sprintf("the server sent a reply line over %d bytes (the limit for a reply line); the session was ended", e.Limit)
	}
	return fmt.Sprintf("the server sent a reply over %d bytes (the limit for a reply, all its lines together); the session was ended", e.Limit)
}

// replyLimiter is a connection whose reads pass on only complete lines,
// and fail, from then on, once the server has sent more than MaxReplyLine
// octets in a line or MaxReply in a reply. A reply ends with a line whose
// fourth octet is not '-' (RFC 5321 4.2.1); noise counts as replies of one
// line, which the reader above rejects.
//
// Holding back the start of a line matters: a bufio.Reader, under
// textproto, takes a line cut short by an error for a complete one, so a
// line cut at the bound, or by a deadline while it trickled in, would
// otherwise be read as a whole reply. Here the cut part is dropped and the
// read fails with the error (io.ErrUnexpectedEOF for a connection closed
// mid-line). Time is bounded by the deadline set for each command or
// reply as a whole, not here.
type replyLimiter struct {
	net.Conn
	buf   [4096]byte
	head  int   // buf[head:done]: complete lines not yet passed on
	done  int   // buf[done:tail]: the start of a line
	tail  int   //
	line  int   // octets of the current line so far
	reply int   // octets of the current reply so far
	cont  bool  // the current line continues its reply ("250-")
	err   error // once set, every read fails with it
}

func limitReplies(c net.Conn) *replyLimiter { return &replyLimiter{Conn: c} }

func (r *replyLimiter) Read(b []byte) (int, error) {
	for r.head == r.done {
		if r.err != nil {
			return 0, r.err
		}
		r.fill()
	}
	n := copy(b, r.buf[r.head:r.done])
	r.head += n
	return n, nil
}

// fill reads once from the connection, with all complete lines passed on.
func (r *replyLimiter) fill() {
	// Keep the start of a line (shorter than MaxReplyLine), at the front.
	r.tail = copy(r.buf[:], r.buf[r.done:r.tail])
	r.head, r.done = 0, 0
	n, err := r.Conn.Read(r.buf[r.tail:])
	for _, c := range r.buf[r.tail : r.tail+n] {
		r.tail++
		r.line++
		r.reply++
		if r.line == 4 {
			r.cont = c == '-'
		}
		switch {
		case r.line > MaxReplyLine:
			r.err = &ReplyTooLongError{Line: true, Limit: MaxReplyLine}
		case r.reply > MaxReply:
			r.err = &ReplyTooLongError{Limit: MaxReply}
		}
		if r.err != nil {
			r.tail = r.done
			return
		}
		if c == '\n' {
			r.done = r.tail
			if !r.cont {
				r.reply = 0
			}
			r.line, r.cont = 0, false
		}
	}
	if err != nil {
		if r.tail > r.done && err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		r.tail = r.done
		r.err = err
	}
}

// MaxErrorText bounds a server's text kept in an error or a recipient's
// result: it goes to logs, state files and XML logs.
const MaxErrorText = 2048

// Clip returns s cut to at most about n bytes, at a character boundary,
// saying how much was cut.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return fmt.Sprintf("%s [%d bytes cut]", s[:i], len(s)-i)
}
