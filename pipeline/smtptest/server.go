package smtptest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// DefaultAddr is the address a Server listens on when Addr is empty.
const DefaultAddr = "127.0.0.1:0"

// DefaultDomain is the domain a Server greets with when Domain is empty.
const DefaultDomain = "smtptest.local"

// DefaultCloseTimeout is how long Close waits for sessions to end when
// CloseTimeout is zero.
const DefaultCloseTimeout = 10 * time.Second

// Server is a fake SMTP server listening on a loopback address. It records
// every message it accepts and can be scripted, through Fault, to fail at any
// step of a session.
//
// The exported fields configure the server. They must be set before Start;
// changes made afterwards have no effect. The zero value of each field is a
// usable default.
type Server struct {
	// Addr is the TCP address to listen on, such as "127.0.0.2:0". It must
	// be a loopback address ("localhost" means 127.0.0.1); Start fails for
	// any other address. The default is DefaultAddr.
	Addr string

	// Domain is the name in the 220 greeting. The default is DefaultDomain.
	Domain string

	// TLSConfig, if set, makes STARTTLS available (or, with ImplicitTLS,
	// makes the listener speak TLS from the first byte). SelfSigned
	// produces a certificate for it.
	TLSConfig *tls.Config

	// ImplicitTLS makes every connection start with a TLS handshake, as on
	// port 465. It requires TLSConfig.
	ImplicitTLS bool

	// DisableStartTLS stops STARTTLS from being advertised or accepted even
	// though TLSConfig is set, to test clients that require it.
	DisableStartTLS bool

	// Users, if non-nil, maps user names to passwords. The server then
	// advertises AUTH PLAIN, LOGIN and XOAUTH2 (for XOAUTH2 the password is
	// the bearer token) and refuses MAIL with 530 until the client has
	// authenticated.
	Users map[string]string

	// AllowInsecureAuth allows AUTH on connections without TLS. When the
	// server offers no TLS at all (TLSConfig is nil, or DisableStartTLS is
	// set without ImplicitTLS), AUTH is allowed without TLS regardless.
	// Otherwise, by default, AUTH is only advertised and accepted after
	// STARTTLS, as on a real submission server.
	AllowInsecureAuth bool

	// MaxMessageBytes is the largest message accepted, advertised with
	// SIZE; larger messages get 552. Zero means no limit.
	MaxMessageBytes int64

	// MaxRecipients limits the recipients per message; more get 452.
	// Zero means no limit.
	MaxRecipients int

	// EnableSMTPUTF8 advertises SMTPUTF8 (RFC 6531). 8BITMIME is always
	// advertised.
	EnableSMTPUTF8 bool

	// EnableREQUIRETLS advertises REQUIRETLS (RFC 8689) on TLS
	// connections.
	EnableREQUIRETLS bool

	// EnableDSN advertises DSN (RFC 3461).
	EnableDSN bool

	// ReadTimeout and WriteTimeout bound each read and write on a
	// connection. Zero means no timeout.
	ReadTimeout  time.Duration
	WriteTimeout time.Duration

	// Fault, if set, is called at every step of every session (see Step)
	// and decides how the step ends; returning the zero Fault proceeds
	// normally. It is called concurrently from the goroutines serving
	// different connections. It may block, but a Fault function that does
	// not return makes Close report an error.
	Fault func(FaultPoint) Fault

	// ErrorLog receives go-smtp's reports of unexpected connection errors.
	// The default discards them.
	ErrorLog smtp.Logger

	// Debug, if set, receives a transcript of every session (go-smtp's
	// Server.Debug). It is written to concurrently.
	Debug io.Writer

	// CloseTimeout bounds how long Close waits for sessions and Fault
	// calls to end. The default is DefaultCloseTimeout.
	CloseTimeout time.Duration

	// Set by Start and read-only afterwards.
	cfg       config
	srv       *smtp.Server
	ln        net.Listener
	stop      chan struct{} // closed by Close: ends stalls and Accept
	accepted  chan net.Conn // connections that passed Greeting, for go-smtp
	serveDone chan struct{} // closed when go-smtp's Serve has returned

	// wg counts the goroutines smtptest runs itself (accept loop, greeting)
	// and calls to Fault in progress. Add is only called with mu held and
	// closing false, so it never races with Wait in Close.
	wg sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	mu            sync.Mutex
	started       bool
	closing       bool
	conns         map[*conn]struct{}
	sessions      int
	concurrent    int
	maxConcurrent int
	messages      []Message
	changed       chan struct{} // closed and replaced when counters or messages change
}

// config is the part of the configuration that sessions read, copied by
// Start so that later changes to the exported fields cannot race with them.
type config struct {
	tlsConfig   *tls.Config
	implicitTLS bool
	users       map[string]string
	fault       func(FaultPoint) Fault
	readTimeout time.Duration
}

// Message is a message the server accepted: its DATA got a 250 reply.
type Message struct {
	// Session is the number of the connection it arrived on (see
	// FaultPoint.Session).
	Session int
	// Seq is its number among the MAIL commands of that connection (see
	// FaultPoint.Message).
	Seq int
	// Helo is the name the client gave in EHLO or HELO.
	Helo string
	// From is the reverse path of MAIL FROM, without angle brackets.
	From string
	// To holds the recipients that were accepted, in order.
	To []string
	// Data is the message content exactly as received, after the removal
	// of dot-stuffing and without the terminating ".\r\n" line. Line
	// endings are left as the client sent them.
	Data []byte
	// AuthUser is the user the client authenticated as, if any.
	AuthUser string
	// TLS reports whether the message arrived over TLS.
	TLS bool
	// Received is when the message was accepted.
	Received time.Time
	// MailOptions holds the parameters of MAIL FROM, such as
	// Body (BODY=8BITMIME), UTF8 (SMTPUTF8) and Size.
	MailOptions smtp.MailOptions
}

// NewUnstartedServer returns a Server that is not started yet, for the rare
// test that needs more set-up than NewServer's configure functions give:
// set its fields, then call Start, and Close it.
func NewUnstartedServer() *Server {
	return &Server{}
}

// NewServer returns a started Server, after applying each configure
// function to it, as httptest.NewServer does. It fails the test if the
// server cannot start, and closes the server when the test ends, failing
// the test if Close reports an error.
func NewServer(t testing.TB, configure ...func(*Server)) *Server {
	t.Helper()
	s := NewUnstartedServer()
	for _, f := range configure {
		f(s)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// Start starts listening and serves connections in the background until
// Close is called.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("smtptest: server already started")
	}
	if s.closing {
		return errors.New("smtptest: server already closed")
	}

	addr := s.Addr
	if addr == "" {
		addr = DefaultAddr
	}
	addr, err := loopbackAddr(addr)
	if err != nil {
		return err
	}
	if s.ImplicitTLS && s.TLSConfig == nil {
		return errors.New("smtptest: ImplicitTLS requires TLSConfig")
	}

	s.cfg = config{
		implicitTLS: s.ImplicitTLS,
		fault:       s.Fault,
		readTimeout: s.ReadTimeout,
	}
	if s.TLSConfig != nil {
		s.cfg.tlsConfig = s.TLSConfig.Clone()
	}
	if s.Users != nil {
		s.cfg.users = maps.Clone(s.Users)
	}

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Domain = s.Domain
	if srv.Domain == "" {
		srv.Domain = DefaultDomain
	}
	offersTLS := s.cfg.tlsConfig != nil && (s.ImplicitTLS || !s.DisableStartTLS)
	if offersTLS {
		// go-smtp advertises STARTTLS whenever TLSConfig is set and the
		// connection is not TLS yet; implicit TLS connections are.
		srv.TLSConfig = s.cfg.tlsConfig
	}
	srv.AllowInsecureAuth = s.AllowInsecureAuth || !offersTLS
	srv.MaxMessageBytes = s.MaxMessageBytes
	srv.MaxRecipients = s.MaxRecipients
	srv.EnableSMTPUTF8 = s.EnableSMTPUTF8
	srv.EnableREQUIRETLS = s.EnableREQUIRETLS
	srv.EnableDSN = s.EnableDSN
	srv.ReadTimeout = s.ReadTimeout
	srv.WriteTimeout = s.WriteTimeout
	srv.Debug = s.Debug
	srv.ErrorLog = s.ErrorLog
	if srv.ErrorLog == nil {
		srv.ErrorLog = log.New(io.Discard, "", 0)
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("smtptest: %w", err)
	}

	s.srv = srv
	s.ln = ln
	s.stop = make(chan struct{})
	s.accepted = make(chan net.Conn)
	s.serveDone = make(chan struct{})
	s.conns = make(map[*conn]struct{})
	s.started = true

	s.wg.Add(1)
	go s.acceptLoop()
	go func() {
		defer close(s.serveDone)
		// Serve returns once Close has closed s.stop; its error is
		// of no interest then.
		_ = srv.Serve(&listener{addr: ln.Addr(), conns: s.accepted, stop: s.stop})
	}()
	return nil
}

// loopbackAddr checks that addr is a loopback host and port and returns it
// with "localhost" replaced by 127.0.0.1.
func loopbackAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("smtptest: bad address %q: %w", addr, err)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("smtptest: refusing to listen on %q: not a loopback address", addr)
	}
	return net.JoinHostPort(host, port), nil
}

// Close stops accepting connections, ends stalls, closes every open
// connection and waits for all goroutines of the server to finish. If some
// are still running after CloseTimeout (for example a Fault function that
// blocks), Close returns an error saying so. Close may be called more than
// once, and before Start; later calls return the result of the first.
func (s *Server) Close() error {
	s.closeOnce.Do(func() { s.closeErr = s.close() })
	return s.closeErr
}

func (s *Server) close() error {
	s.mu.Lock()
	started := s.started
	s.closing = true
	s.mu.Unlock()
	if !started {
		return nil
	}

	timeout := s.CloseTimeout
	if timeout <= 0 {
		timeout = DefaultCloseTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	close(s.stop)
	var errs []error
	if err := s.ln.Close(); err != nil {
		errs = append(errs, fmt.Errorf("smtptest: closing listener: %w", err))
	}
	// No connection can be registered any more: closing is set.
	s.mu.Lock()
	open := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		open = append(open, c)
	}
	s.mu.Unlock()
	for _, c := range open {
		c.Close()
	}

	// Once Serve has returned, go-smtp starts no more connection handlers,
	// so Shutdown can wait for those it started.
	select {
	case <-s.serveDone:
	case <-ctx.Done():
		errs = append(errs, errors.New("smtptest: go-smtp's Serve did not return"))
	}
	if err := s.srv.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("smtptest: connection handlers still running after %v: %w", timeout, err))
	}

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("smtptest: greetings or Fault calls still running after %v", timeout))
	}
	return errors.Join(errs...)
}

// Params returns send parameters for this server, for
// queuefile.Queue.Enqueue or pipelinetest.Env.Enqueue: its host and port,
// TLS as the server speaks it (implicit with ImplicitTLS, else none: a
// plaintext loopback server, where smtpq also allows a login), and the
// recipients to, if any (else they are read from the message's headers).
// Add a Username and Password for a server with Users. The server must be
// started.
func (s *Server) Params(to ...string) queuefile.Params {
	tls := queuefile.TLSNone
	if s.ImplicitTLS {
		tls = queuefile.TLSImplicit
	}
	return queuefile.Params{Host: s.Host(), Port: s.Port(), TLS: tls, To: to}
}

// Host returns the IP address the server listens on, such as "127.0.0.1",
// or "" before Start.
func (s *Server) Host() string {
	if a := s.tcpAddr(); a != nil {
		return a.IP.String()
	}
	return ""
}

// Port returns the TCP port the server listens on, or 0 before Start.
func (s *Server) Port() int {
	if a := s.tcpAddr(); a != nil {
		return a.Port
	}
	return 0
}

// AddrString returns the address the server listens on in host:port form,
// ready for net.Dial or smtp.Dial, or "" before Start.
func (s *Server) AddrString() string {
	if a := s.tcpAddr(); a != nil {
		return net.JoinHostPort(a.IP.String(), strconv.Itoa(a.Port))
	}
	return ""
}

func (s *Server) tcpAddr() *net.TCPAddr {
	s.mu.Lock()
	ln := s.ln
	s.mu.Unlock()
	if ln == nil {
		return nil
	}
	a, _ := ln.Addr().(*net.TCPAddr)
	return a
}

// Messages returns a copy of the messages accepted so far, in the order
// their DATA was accepted.
func (s *Server) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.messagesLocked()
}

func (s *Server) messagesLocked() []Message {
	out := make([]Message, len(s.messages))
	for i, m := range s.messages {
		out[i] = m.clone()
	}
	return out
}

// WaitMessages waits until at least n messages have been accepted, and
// returns a copy of all of them. If ctx ends first, it returns those that
// arrived and an error saying how many that was.
func (s *Server) WaitMessages(ctx context.Context, n int) ([]Message, error) {
	err := s.waitFor(ctx, func() bool { return len(s.messages) >= n })
	msgs := s.Messages()
	if err != nil {
		return msgs, fmt.Errorf("smtptest: %d of %d messages arrived: %w", len(msgs), n, err)
	}
	return msgs, nil
}

// WaitIdle waits until no connection is open. Clients see a session end
// (the 221 reply to QUIT) slightly before the server closes its side, so
// tests that count connections should wait for this.
func (s *Server) WaitIdle(ctx context.Context) error {
	err := s.waitFor(ctx, func() bool { return s.concurrent == 0 })
	if err != nil {
		return fmt.Errorf("smtptest: %d connections still open: %w", s.Concurrent(), err)
	}
	return nil
}

// waitFor waits until cond, called with mu held, is true.
func (s *Server) waitFor(ctx context.Context, cond func() bool) error {
	for {
		s.mu.Lock()
		ok := cond()
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		changed := s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// notifyLocked wakes up the waiters of waitFor. mu must be held.
func (s *Server) notifyLocked() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// Sessions returns how many connections the server has accepted in total.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions
}

// Concurrent returns how many connections are open now, counting from the
// moment a connection is accepted to the moment the server closes it.
func (s *Server) Concurrent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.concurrent
}

// MaxConcurrent returns the largest number of connections that were open
// at the same time.
func (s *Server) MaxConcurrent() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxConcurrent
}

func (s *Server) record(m Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.messages = append(s.messages, m)
	s.notifyLocked()
}

func (m Message) clone() Message {
	m.To = append([]string(nil), m.To...)
	m.Data = append([]byte(nil), m.Data...)
	m.MailOptions = cloneMailOptions(m.MailOptions)
	return m
}

func cloneMailOptions(o smtp.MailOptions) smtp.MailOptions {
	if o.Auth != nil {
		a := *o.Auth
		o.Auth = &a
	}
	return o
}

// enter registers a call to Fault, unless the server is closing.
func (s *Server) enter() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.wg.Add(1)
	return true
}

// decide calls the Fault function for p and carries out any stall. A stall
// cut short by Close, or a call made while closing, turns into a Drop.
func (s *Server) decide(p FaultPoint) Fault {
	if s.cfg.fault == nil {
		return Fault{}
	}
	if !s.enter() {
		return Fault{Drop: true}
	}
	defer s.wg.Done()
	f := s.cfg.fault(p)
	if f.Stall > 0 {
		t := time.NewTimer(f.Stall)
		defer t.Stop()
		select {
		case <-t.C:
		case <-s.stop:
			return Fault{Drop: true}
		}
	}
	return f
}

// errDropped is returned to go-smtp after a Drop; it is written, if at all,
// to a closed connection.
var errDropped = errors.New("smtptest: connection dropped by fault")

// apply decides the fault for p and carries it out: it closes c for a Drop,
// writes Raw on w (the connection go-smtp speaks on: TLS, if started) and
// closes c, and returns the reply error, if any, for go-smtp to send.
func (s *Server) apply(c *conn, w io.Writer, p FaultPoint) error {
	f := s.decide(p)
	switch {
	case f.Drop:
		c.Close()
		return errDropped
	case f.Raw != nil:
		s.writeRaw(w, f)
		c.Close()
		return errDropped
	case f.Err != nil:
		return f.Err
	}
	return nil
}

// writeRaw writes f.Raw on w, trickled if f.Trickle is set, until it ends,
// a write fails (the client closed) or the server is closed.
func (s *Server) writeRaw(w io.Writer, f Fault) {
	buf := make([]byte, 32<<10)
	var tick <-chan time.Time
	if f.Trickle > 0 {
		buf = buf[:1]
		t := time.NewTicker(f.Trickle)
		defer t.Stop()
		tick = t.C
	}
	for {
		n, err := f.Raw.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
		if tick == nil {
			select {
			case <-s.stop:
				return
			default:
			}
			continue
		}
		select {
		case <-tick:
		case <-s.stop:
			return
		}
	}
}
