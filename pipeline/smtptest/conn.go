package smtptest

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// conn wraps every accepted TCP connection. It keeps the per-connection
// state that outlives go-smtp's sessions (which are replaced on STARTTLS),
// accounts for the connection when it is closed, and recognises the reply
// to QUIT, which go-smtp writes without asking the backend.
type conn struct {
	net.Conn
	srv *Server
	id  int

	// mails counts the MAIL commands received on the connection.
	mails atomic.Int32
	// quitHook enables the Quit fault on Write. It is set before the
	// connection is handed to the goroutine that serves it.
	quitHook bool

	closeOnce sync.Once
	closeErr  error
}

// quitReply is how every reply go-smtp sends to QUIT starts; go-smtp uses
// code 221 for nothing else. Over TLS the bytes written here are encrypted
// records, which never start with an ASCII digit.
var quitReply = []byte("221 ")

func (c *conn) Write(p []byte) (int, error) {
	if c.quitHook && bytes.HasPrefix(p, quitReply) {
		c.quitHook = false
		f := c.srv.decide(FaultPoint{Step: Quit, Session: c.id, Message: int(c.mails.Load())})
		switch {
		case f.Drop:
			c.Close()
			return 0, errDropped
		case f.Raw != nil:
			c.srv.writeRaw(c.Conn, f)
			c.Close()
			return 0, errDropped
		case f.Err != nil:
			if _, err := c.Conn.Write(formatReply(f.Err)); err != nil {
				return 0, err
			}
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}

// Close closes the connection and takes it out of the server's count. It
// may be called more than once and from any goroutine.
func (c *conn) Close() error {
	c.closeOnce.Do(func() {
		c.closeErr = c.Conn.Close()
		c.srv.connClosed(c)
	})
	return c.closeErr
}

// connOf finds the conn beneath a go-smtp connection, which may have been
// wrapped in TLS.
func connOf(sc *smtp.Conn) *conn {
	nc := sc.Conn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*conn)
	return c
}

// listener hands go-smtp the connections that got past the Greeting step.
// The Server owns the real listener; closing this one does nothing.
type listener struct {
	addr  net.Addr
	conns <-chan net.Conn
	stop  <-chan struct{}
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case <-l.stop:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.stop:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error   { return nil }
func (l *listener) Addr() net.Addr { return l.addr }

// acceptLoop accepts TCP connections and starts a greeting goroutine for
// each, so that a stalled greeting does not hold up the others.
func (s *Server) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		raw, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Probably out of file descriptors: back off like net/http.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.srv.ErrorLog.Printf("smtptest: accept: %v; retrying in %v", err, delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-s.stop:
				t.Stop()
				return
			}
			continue
		}
		delay = 0
		if c := s.register(raw); c != nil {
			go s.greet(c)
		}
	}
}

// register counts a new connection. It returns nil, having closed raw, if
// the server is closing. Otherwise it also adds the greeting goroutine to
// wg.
func (s *Server) register(raw net.Conn) *conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		raw.Close()
		return nil
	}
	s.sessions++
	c := &conn{Conn: raw, srv: s, id: s.sessions, quitHook: true}
	s.conns[c] = struct{}{}
	s.concurrent++
	s.maxConcurrent = max(s.maxConcurrent, s.concurrent)
	s.notifyLocked()
	s.wg.Add(1)
	return c
}

func (s *Server) connClosed(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	s.concurrent--
	s.notifyLocked()
}

// greet carries out the Greeting step and hands the connection to go-smtp,
// which writes the 220 banner.
func (s *Server) greet(c *conn) {
	defer s.wg.Done()
	var nc net.Conn = c
	if s.cfg.implicitTLS {
		// go-smtp completes the handshake; it needs a *tls.Conn to know
		// that the connection is secure.
		nc = tls.Server(c, s.cfg.tlsConfig)
	}
	f := s.decide(FaultPoint{Step: Greeting, Session: c.id})
	switch {
	case f.Drop:
		c.Close()
		return
	case f.Raw != nil:
		s.writeRaw(nc, f)
		c.Close()
		return
	case f.Err != nil:
		s.refuse(c, nc, f.Err)
		return
	}
	select {
	case s.accepted <- nc:
	case <-s.stop:
		c.Close()
	}
}

// refuse sends e instead of the 220 banner and then, as RFC 5321 section 3.1
// asks of a server that opens with 554, answers 503 to every command until
// QUIT.
func (s *Server) refuse(c *conn, nc net.Conn, e *smtp.SMTPError) {
	defer c.Close()
	c.quitHook = false
	tc := textproto.NewConn(nc)
	if _, err := nc.Write(formatReply(e)); err != nil {
		return
	}
	for {
		if s.cfg.readTimeout > 0 {
			nc.SetReadDeadline(time.Now().Add(s.cfg.readTimeout))
		}
		line, err := tc.ReadLine()
		if err != nil {
			return
		}
		verb, _, _ := strings.Cut(line, " ")
		if strings.EqualFold(verb, "QUIT") {
			nc.Write(formatReply(&smtp.SMTPError{Code: 221, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Bye"}))
			return
		}
		if _, err := nc.Write(formatReply(&smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "Bad sequence of commands"})); err != nil {
			return
		}
	}
}

// formatReply renders e as an SMTP reply, with the enhanced status code on
// every line. Like go-smtp, it derives X.0.0 when no enhanced code is set.
func formatReply(e *smtp.SMTPError) []byte {
	enh := e.EnhancedCode
	if enh == smtp.EnhancedCodeNotSet {
		switch class := e.Code / 100; class {
		case 2, 4, 5:
			enh = smtp.EnhancedCode{class, 0, 0}
		default:
			enh = smtp.NoEnhancedCode
		}
	}
	var b bytes.Buffer
	lines := strings.Split(e.Message, "\n")
	for i, line := range lines {
		sep := " "
		if i < len(lines)-1 {
			sep = "-"
		}
		fmt.Fprintf(&b, "%03d%s", e.Code, sep)
		if enh != smtp.NoEnhancedCode {
			fmt.Fprintf(&b, "%d.%d.%d ", enh[0], enh[1], enh[2])
		}
		b.WriteString(strings.TrimRight(line, "\r"))
		b.WriteString("\r\n")
	}
	return b.Bytes()
}
