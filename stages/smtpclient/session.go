// Package smtpclient is the Sender's SMTP protocol engine: one client
// session with a server, from the greeting, STARTTLS or implicit TLS, EHLO
// and AUTH (PLAIN, LOGIN, XOAUTH2) to the mail transactions sent on it and
// QUIT. It speaks; it does not decide: a Transaction says what the server
// answered to each command, and the caller (stages.Sender) decides from it
// what becomes of the message and of each recipient.
//
// What it guarantees:
//
//   - Bounded replies. Every read of the server's replies, its own and
//     go-smtp's, goes through one limiter: a reply line over MaxReplyLine
//     octets or a reply over MaxReply ends the session with a
//     ReplyTooLongError, whatever the server sends.
//   - Bounded time. Each step has its deadline (Timeouts); a cancelled
//     Dial context closes the connection, failing any I/O in progress.
//   - A redacted transcript. The conversation is recorded without the
//     message data, with AUTH exchanges and the configured secrets (and
//     their base64) redacted, printable, and cut at a bound.
//   - PIPELINING (RFC 2920). Where the server offers it, a transaction's
//     MAIL, RCPTs and DATA go out in one write and the message in a second;
//     the Transaction is the same as when its commands go one at a time.
//   - Classified errors: each failure is an *Error at its step, with the
//     server's code and enhanced code, temporary unless the server said
//     otherwise.
package smtpclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// DialFunc opens a network connection; net.Dialer.DialContext is one.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Timeouts bound each network step of an SMTP session.
type Timeouts struct {
	Connect time.Duration // TCP connect and TLS handshake
	Command time.Duration // each command's reply
	Data    time.Duration // sending the message and the reply to the final dot
}

// Config says where and how to open a session.
type Config struct {
	Dial      DialFunc // nil: a net.Dialer
	Addr      string   // host:port to dial
	Host      string   // the server's host name or IP: TLS's ServerName
	Name      string   // the server as the transcript names it, without secrets ("": Addr)
	TLS       queuefile.TLSMode
	TLSConfig *tls.Config // base TLS settings (RootCAs); ServerName is set to Host
	HELO      string      // the EHLO name ("": the host name)
	Timeouts  Timeouts    // zero fields: 30s to connect, 5min a command, 10min for the data

	// Credentials, if Username is set: XOAUTH2 with the token if there is
	// one, else PLAIN, or LOGIN if the server offers only that. Both
	// secrets are redacted from the transcript.
	Username    string
	Password    queuefile.Secret
	OAuth2Token queuefile.Secret

	// NoPipelining sends one command at a time even to a server that
	// offers PIPELINING (tests compare both ways).
	NoPipelining bool
	// AfterMail, if set, is called in each transaction once the server
	// has accepted MAIL FROM, before the replies to the RCPTs are read:
	// crash tests kill the process there.
	AfterMail func()
}

// Session is one open SMTP session. It is not safe for concurrent use.
type Session struct {
	cfg    *Config
	conn   net.Conn
	c      *smtp.Client
	tr     *transcript
	isTLS  bool
	pipe   *pipe // set if transactions are pipelined
	cancel func() bool
}

// Close ends the session, with QUIT if quit. The connection is closed
// even if QUIT's reply brings out a panic. Closing a session that Dial
// returned with an error does nothing.
func (s *Session) Close(quit bool) {
	if s.c == nil {
		return
	}
	defer s.cancel()
	defer s.c.Close()
	if quit {
		s.c.Quit() // best effort, bounded by the command timeout
	}
}

// Transcript returns the redacted transcript since the session opened or
// ResetTranscript.
func (s *Session) Transcript() string { return s.tr.String() }

// ResetTranscript starts a new transcript, for the next message.
func (s *Session) ResetTranscript() { s.tr.reset() }

// Note adds a line of the caller's own to the transcript.
func (s *Session) Note(line string) { s.tr.note(line) }

// Pipelined reports whether transactions are pipelined (RFC 2920).
func (s *Session) Pipelined() bool { return s.pipe != nil }

// MaxMessageSize returns the largest message the server accepts (SIZE),
// if it says.
func (s *Session) MaxMessageSize() (int, bool) { return s.c.MaxMessageSize() }

// Extension reports whether the server offers an extension, and its
// parameters.
func (s *Session) Extension(name string) (bool, string) { return s.c.Extension(name) }

// Dial dials and sets up a session: TLS, EHLO, STARTTLS, AUTH. ctx bounds
// the whole session: when it is done the connection is closed, failing
// whatever I/O is in progress. On failure it returns the error and, if it
// got that far, a closed session whose transcript tells what happened.
func Dial(ctx context.Context, cfg Config) (*Session, *Error) {
	r := &cfg
	switch r.TLS {
	case queuefile.TLSImplicit, queuefile.TLSStartTLS, queuefile.TLSNone:
	default:
		// Anything but the constants (the edges normalise every mode) is
		// refused, never taken for plain text.
		return nil, Permanentf("tls", "unknown TLS mode %q (want implicit, starttls or none): not connecting", r.TLS)
	}
	tr := newTranscript(r.Password.Reveal(), r.OAuth2Token.Reveal())
	name := r.Name
	if name == "" {
		name = r.Addr
	}
	tr.note("[connecting to " + name + "]")
	dial := r.Dial
	if dial == nil {
		d := &net.Dialer{}
		dial = d.DialContext
	}
	connectTimeout := orDefault(r.Timeouts.Connect, 30*time.Second)
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := dial(dctx, "tcp", r.Addr)
	if err != nil {
		e := Classify("connect", err)
		e.HostDown = true
		return nil, e
	}
	// Failures close the connection as they return; this also covers a
	// panic (the Sender recovers it), which would otherwise leave it open.
	opened := false
	stop := func() bool { return false }
	defer func() {
		if !opened {
			stop()
			conn.Close()
		}
	}()
	isTLS := false
	if r.TLS == queuefile.TLSImplicit {
		tc := tls.Client(conn, r.tlsConfig())
		if err := tc.HandshakeContext(dctx); err != nil {
			e := Classify("tls", fmt.Errorf("TLS handshake with %s: %w", r.Addr, err))
			e.HostDown = true
			return nil, e
		}
		conn, isTLS = tc, true
	}
	// Hard cancellation closes the connection, failing whatever I/O is in
	// progress.
	stop = context.AfterFunc(ctx, func() { conn.Close() })
	helo := r.HELO
	if helo == "" {
		helo, _ = os.Hostname()
	}
	// Every read of the server's replies, ours and go-smtp's, is bounded
	// (replies.go); the limiter goes above TLS, on what the server says.
	lim := limitReplies(conn)
	var c *smtp.Client
	if r.TLS == queuefile.TLSStartTLS {
		tc, greeting, e := r.startTLS(dctx, conn, helo, tr)
		if e != nil {
			return &Session{cfg: r, tr: tr}, e
		}
		conn, isTLS = tc, true
		lim = limitReplies(conn)
		// After STARTTLS the server sends no greeting (RFC 3207).
		c = greetedClient(lim, greeting, tr)
	} else {
		// The greeting is read here, not by go-smtp, which reads it and
		// sends EHLO in one call: a failure is reported at its own step.
		greeting, e := r.greet(lim, tr)
		if e != nil {
			return &Session{cfg: r, tr: tr}, e
		}
		c = greetedClient(lim, greeting, tr)
	}
	c.CommandTimeout = orDefault(r.Timeouts.Command, 5*time.Minute)
	c.SubmissionTimeout = orDefault(r.Timeouts.Data, 10*time.Minute)
	c.DebugWriter = tr
	sess := &Session{cfg: r, conn: conn, c: c, tr: tr, isTLS: isTLS, cancel: stop}
	fail := func(step string, err error) (*Session, *Error) {
		e := Classify(step, err)
		sess.Close(false)
		return sess, e
	}
	if err := c.Hello(helo); err != nil {
		e := Classify("ehlo", err)
		if e.Code == 0 || e.Code == 421 || e.Code == 554 {
			e.HostDown = true
		}
		sess.Close(false)
		return sess, e
	}
	if r.Username != "" {
		if !sess.isTLS && !isLoopback(conn.RemoteAddr()) {
			sess.Close(false)
			return sess, Permanentf("auth", "refusing to send credentials over an unencrypted connection to %s (tls: none); use starttls or implicit", r.Addr)
		}
		if err := auth(lim, tr, r.saslClient(c), c.CommandTimeout); err != nil {
			return fail("auth", err)
		}
	}
	// Transactions are pipelined where the server allows and the
	// connection go-smtp speaks on is ours (see pipelining.go).
	if ok, _ := c.Extension("PIPELINING"); ok && !r.NoPipelining {
		sess.pipe = newPipe(lim, tr)
	}
	opened = true
	return sess, nil
}

func (r *Config) saslClient(c *smtp.Client) sasl.Client {
	switch {
	case !r.OAuth2Token.IsZero():
		return &xoauth2{user: r.Username, token: r.OAuth2Token.Reveal()}
	case !c.SupportsAuth("PLAIN") && c.SupportsAuth("LOGIN"):
		return sasl.NewLoginClient(r.Username, r.Password.Reveal())
	default:
		return sasl.NewPlainClient("", r.Username, r.Password.Reveal())
	}
}

func (r *Config) tlsConfig() *tls.Config {
	var cfg *tls.Config
	if r.TLSConfig != nil {
		cfg = r.TLSConfig.Clone()
	} else {
		cfg = &tls.Config{}
	}
	cfg.ServerName = r.Host
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	return cfg
}

// startTLS does the plaintext part of a STARTTLS session on conn (greeting,
// EHLO with the configured name, STARTTLS) and the TLS handshake, recording
// the plaintext part. It returns the TLS connection and the text of the
// server's greeting. go-smtp's own STARTTLS sends "EHLO localhost" first and
// keeps the TLS connection to itself; here the session's transactions can be
// pipelined on it.
func (r *Config) startTLS(ctx context.Context, conn net.Conn, helo string, tr *transcript) (*tls.Conn, string, *Error) {
	cmdTimeout := orDefault(r.Timeouts.Command, 5*time.Minute)
	conn.SetDeadline(time.Now().Add(cmdTimeout))
	defer conn.SetDeadline(time.Time{})
	text := textproto.NewConn(tee{Conn: limitReplies(conn), tr: tr})
	greeting, e := readReply(text, 220, "greeting")
	if e != nil {
		return nil, "", e
	}
	if err := text.PrintfLine("EHLO %s", helo); err != nil {
		e := Classify("ehlo", err)
		e.HostDown = true
		return nil, "", e
	}
	ext, e := readReply(text, 250, "ehlo")
	if e != nil && (e.Code == 500 || e.Code == 502) {
		// EHLO not understood: an old server, which cannot offer STARTTLS
		// (go-smtp would fall back to HELO and find none).
		ext, e = "", nil
	}
	if e != nil {
		return nil, "", e
	}
	offered := false
	for _, l := range strings.Split(ext, "\n")[1:] {
		if f := strings.Fields(l); len(f) > 0 && strings.EqualFold(f[0], "STARTTLS") {
			offered = true
		}
	}
	if !offered {
		text.PrintfLine("QUIT")
		return nil, "", Temporaryf("starttls", "the server does not offer STARTTLS, which tls: starttls requires; nothing was sent")
	}
	if err := text.PrintfLine("STARTTLS"); err != nil {
		e := Classify("tls", err)
		e.HostDown = true
		return nil, "", e
	}
	if _, e := readReply(text, 220, "tls"); e != nil {
		return nil, "", e
	}
	tc := tls.Client(conn, r.tlsConfig())
	if err := tc.HandshakeContext(ctx); err != nil {
		e := Classify("tls", fmt.Errorf("TLS handshake with %s: %w", r.Addr, err))
		e.HostDown = true
		return nil, "", e
	}
	tr.note("[TLS started]")
	return tc, greeting, nil
}

// greet reads the server's greeting on conn, recording it, within the
// command timeout (for the whole greeting, however slowly it comes).
func (r *Config) greet(conn net.Conn, tr *transcript) (string, *Error) {
	conn.SetDeadline(time.Now().Add(orDefault(r.Timeouts.Command, 5*time.Minute)))
	defer conn.SetDeadline(time.Time{})
	return readReply(textproto.NewConn(tee{Conn: conn, tr: tr}), 220, "greeting")
}

// readReply reads one reply of the class of code on text. A failure is
// reported at step; a server that closes (421, 554) or does not answer
// is down.
func readReply(text *textproto.Conn, code int, step string) (string, *Error) {
	got, msg, err := text.ReadResponse(code)
	if err == nil {
		return msg, nil
	}
	var pe *textproto.Error
	if errors.As(err, &pe) {
		e := Classify(step, smtpError(got, msg))
		e.HostDown = got == 421 || got == 554
		return msg, e
	}
	e := Classify(step, err)
	e.HostDown = true
	return msg, e
}

// greetedClient is a go-smtp client on conn whose greeting was read
// already: go-smtp reads one before its first command, so it is given the
// first line of the server's own, which the transcript has already.
func greetedClient(conn net.Conn, greeting string, tr *transcript) *smtp.Client {
	fed := "220 " + strings.SplitN(greeting, "\n", 2)[0] + "\r\n"
	tr.skipOnce(strings.TrimSuffix(fed, "\r\n"))
	return smtp.NewClient(&greetedConn{Conn: conn, r: io.MultiReader(strings.NewReader(fed), conn)})
}

// greetedConn is a connection whose first bytes read come from r.
type greetedConn struct {
	net.Conn
	r io.Reader
}

func (g *greetedConn) Read(b []byte) (int, error) { return g.r.Read(b) }

func isLoopback(a net.Addr) bool {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.IP.IsLoopback()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func orDefault(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// xoauth2 is the XOAUTH2 SASL mechanism (Google, Microsoft).
type xoauth2 struct{ user, token string }

func (x *xoauth2) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + x.user + "\x01auth=Bearer " + x.token + "\x01\x01"), nil
}

func (x *xoauth2) Next(challenge []byte) ([]byte, error) {
	// The server sent an error as a JSON challenge; an empty response ends
	// the exchange and it then answers with the failure.
	if len(challenge) > 0 {
		return []byte{}, nil
	}
	return nil, errors.New("unexpected XOAUTH2 challenge")
}
