package stages

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.uber.org/zap"

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

// Sender delivers jobs over SMTP. Each worker (one Run call) owns at most one
// SMTP session and reuses it for the next job with the same Route, as the
// Dispatcher decides.
type Sender struct {
	Dial      DialFunc    // nil: a net.Dialer
	TLSConfig *tls.Config // base TLS settings (RootCAs); ServerName is set per host
	Timeouts  Timeouts
	HELO      string // default EHLO name
	// Accepted, if set, is called when the server has accepted the data of
	// a job, before the job is handed on: it records the fact, so that
	// after a crash the message is filed as sent, not sent again. The record
	// must be durable before the job is filed, not before Accepted returns
	// (Spool.RecordAccepted): the session goes on with the next message
	// meanwhile. An error is logged; the job goes on.
	Accepted func(*Job) error
	// Crash, if set, is called at named points of a delivery ("connected",
	// "after-mail", "after-dot", "after-record"): crash tests kill the
	// process there.
	Crash func(point string)
	// NoPipelining sends one command at a time even to a server that
	// offers PIPELINING (tests compare both ways).
	NoPipelining bool
	// Panicked, if set, is told of each panic the worker recovered from
	// (see attempt), after it is logged: the file name ("" if no job was
	// at hand) and the panic, redacted and cut short. The health check
	// reports them. It is called from every worker.
	Panicked func(file, panicText string)
	Clock    Clock
	Log      *zap.Logger
}

// SenderPanicLog is the message of the log entry for a panic a Sender
// worker recovered from; its fields are the file, the host, the panic and
// the stack.
const SenderPanicLog = "panic in a Sender worker: the message is failed as transient, the worker goes on"

// session is one open SMTP session.
type session struct {
	route  Route
	conn   net.Conn
	c      *smtp.Client
	tr     *transcript
	count  int
	limit  int
	isTLS  bool
	pipe   *pipe // set if transactions are pipelined
	cancel func() bool
}

// close ends the session, with QUIT if quit. The connection is closed
// even if QUIT's reply brings out a panic.
func (s *session) close(quit bool) {
	defer s.cancel()
	defer s.c.Close()
	if quit {
		s.c.Quit() // best effort, bounded by the command timeout
	}
}

// Run is one Sender worker. It asks the Dispatcher for work on requests,
// delivers each job it is given and sends the job, with its Outcome, on out.
// It returns when the Dispatcher tells it to stop. A job handed to it after
// ctx is done is returned to the queue unsent; hard cancels network I/O in
// progress (the shutdown deadline).
func (s *Sender) Run(ctx, hard context.Context, id int, requests chan<- *Request, out chan<- *Job) {
	reply := make(chan Assignment, 1)
	var (
		sess   *session
		report *HostReport
		unsent []*Job
	)
	defer func() {
		if sess != nil {
			s.closeSession(sess, true)
		}
	}()
	for {
		req := &Request{Worker: id, Report: report, Unsent: unsent, Reply: reply}
		if sess != nil {
			r := sess.route
			req.Conn = &r
		}
		requests <- req
		a := <-reply
		report, unsent = nil, nil
		if a.Stop {
			return
		}
		if a.Close {
			if sess != nil {
				s.closeSession(sess, true)
				sess = nil
			}
			continue
		}
		batch := append([]*Job{a.Job}, a.More...)
		for i, job := range batch {
			r, ok := s.attempt(ctx, hard, &sess, a.Limit, job)
			out <- job
			if r != nil {
				report = r // the latest news of the host counts
			}
			if !ok {
				// The session failed: the rest of the batch goes back to
				// the Dispatcher, which decides with the report in hand.
				unsent = batch[i+1:]
				break
			}
		}
	}
}

// attempt is one with a safety net. Nothing a server sends may end a
// worker: a panic while handling job (a bug, perhaps brought out by odd
// input) is logged with its stack, reported to Panicked, and fails that
// job as a transient failure of step "local", so that it is retried later
// and, since it counts as an attempt, ends in Undeliverable if it always
// panics. A job whose data the server had already accepted stays sent. The
// session, in an unknown state, is closed without QUIT, and false is
// returned so that the rest of the batch goes back to the Dispatcher.
func (s *Sender) attempt(ctx, hard context.Context, cur **session, limit int, job *Job) (report *HostReport, ok bool) {
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		stack := debug.Stack()
		var transcript string
		if sess := *cur; sess != nil {
			*cur = nil
			transcript = sess.tr.String()
			s.closeSession(sess, false)
		}
		text := s.recovered(job, v, stack)
		if job.Outcome.Verdict == Sent {
			return // the server has the message: sending it again would duplicate it
		}
		e := Temporaryf("local", "internal error while sending (a bug; the message will be tried again): %s", text)
		job.Outcome = Outcome{
			Verdict: Transient, Err: e, Attempted: true, Rcpts: allRcpts(job.Pending, e), Transcript: transcript,
		}
		report, ok = nil, false
	}()
	report, ok = s.one(ctx, hard, cur, limit, job)
	boundOutcome(&job.Outcome)
	return report, ok
}

// recovered logs a panic recovered while handling job (nil if none was at
// hand) and tells Panicked; it returns the panic as text, redacted and cut
// short.
func (s *Sender) recovered(job *Job, v any, stack []byte) string {
	var secrets []string
	name, host := "", ""
	if job != nil {
		name, host = job.Name, job.Host()
		secrets = []string{job.Route.Password.Reveal(), job.Route.OAuth2Token.Reveal()}
	}
	text := clip(newTranscript(secrets...).scrub(fmt.Sprint(v)), maxPanicText)
	s.Log.Error(SenderPanicLog, zap.String("file", name), zap.String("host", host),
		zap.String("panic", text), zap.String("stack", string(stack)))
	if s.Panicked != nil {
		s.Panicked(name, text)
	}
	return text
}

// maxPanicText bounds a panic's text in errors, logs and the health check.
const maxPanicText = 512

// closeSession closes sess (with QUIT if quit), recovering from a panic
// that QUIT's reply may bring out.
func (s *Sender) closeSession(sess *session, quit bool) {
	defer func() {
		if v := recover(); v != nil {
			s.recovered(nil, v, debug.Stack())
		}
	}()
	sess.close(quit)
}

// one sends job on *cur, or on a new session if *cur is nil or has another
// route; *cur is kept up to date as sessions close and open, so that a
// panic leaves no connection behind. It sets job.Outcome and returns what
// it learnt about the host, and false if the session could not be opened
// or broke, so that the rest of a batch must not follow.
func (s *Sender) one(ctx, hard context.Context, cur **session, limit int, job *Job) (*HostReport, bool) {
	var report *HostReport
	if ctx.Err() != nil {
		job.Outcome = Outcome{Verdict: Return}
		return nil, true
	}
	job.Outcome = Outcome{}
	sess := *cur
	if sess != nil && sess.route != job.Route {
		*cur = nil
		sess.close(true)
		sess = nil
	}
	start := s.Clock.Now()
	if sess == nil {
		var err *Error
		sess, err = s.open(hard, job.Route)
		if err != nil {
			report = &HostReport{Host: job.Host(), Down: err.HostDown}
			job.Outcome = Outcome{
				Verdict: Transient, Err: err, Attempted: true,
				Rcpts: allRcpts(job.Pending, err), Duration: s.Clock.Now().Sub(start),
			}
			if !err.Temporary {
				job.Outcome.Verdict = Permanent
				job.Outcome.Class = ClassPermanent
			}
			if sess != nil { // a transcript of the failed opening
				job.Outcome.Transcript = sess.tr.String()
			}
			return report, false
		}
		*cur = sess
		sess.limit = limit
		report = &HostReport{Host: job.Host(), OK: true}
		s.crash("connected")
	} else {
		sess.tr.reset()
		sess.tr.note(fmt.Sprintf("[session reused: message %d on this connection]", sess.count+1))
	}
	broken := s.deliver(hard, sess, job)
	job.Outcome.Duration = s.Clock.Now().Sub(start)
	job.Outcome.Transcript = sess.tr.String()
	if job.Outcome.Err != nil && job.Outcome.Err.HostDown {
		report = &HostReport{Host: job.Host(), Down: true}
	}
	sess.count++
	if broken || (sess.limit > 0 && sess.count >= sess.limit) {
		*cur = nil
		sess.close(!broken)
	}
	return report, !broken && (report == nil || !report.Down)
}

// open dials and sets up a session: TLS, EHLO, STARTTLS, AUTH. On failure
// it returns the error and, if it got that far, a closed session whose
// transcript tells what happened.
func (s *Sender) open(ctx context.Context, r Route) (*session, *Error) {
	switch r.TLS {
	case queuefile.TLSImplicit, queuefile.TLSStartTLS, queuefile.TLSNone:
	default:
		// Anything but the constants (the edges normalise every mode) is
		// refused, never taken for plain text.
		return nil, Permanentf("tls", "unknown TLS mode %q (want implicit, starttls or none): not connecting", r.TLS)
	}
	tr := newTranscript(r.Password.Reveal(), r.OAuth2Token.Reveal())
	tr.note("[connecting to " + r.String() + "]")
	dial := s.Dial
	if dial == nil {
		d := &net.Dialer{}
		dial = d.DialContext
	}
	connectTimeout := orDefault(s.Timeouts.Connect, 30*time.Second)
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := dial(dctx, "tcp", r.Addr())
	if err != nil {
		e := Classify("connect", err)
		e.HostDown = true
		return nil, e
	}
	// Failures close the connection as they return; this also covers a
	// panic (attempt recovers it), which would otherwise leave it open.
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
		tc := tls.Client(conn, s.tlsConfig(r.Host))
		if err := tc.HandshakeContext(dctx); err != nil {
			e := Classify("tls", fmt.Errorf("TLS handshake with %s: %w", r.Addr(), err))
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
		helo = s.HELO
	}
	if helo == "" {
		helo, _ = os.Hostname()
	}
	// Every read of the server's replies, ours and go-smtp's, is bounded
	// (replies.go); the limiter goes above TLS, on what the server says.
	lim := limitReplies(conn)
	var c *smtp.Client
	if r.TLS == queuefile.TLSStartTLS {
		tc, greeting, e := s.startTLS(dctx, conn, r, helo, tr)
		if e != nil {
			return &session{route: r, tr: tr}, e
		}
		conn, isTLS = tc, true
		lim = limitReplies(conn)
		// After STARTTLS the server sends no greeting (RFC 3207).
		c = greetedClient(lim, greeting, tr)
	} else {
		// The greeting is read here, not by go-smtp, which reads it and
		// sends EHLO in one call: a failure is reported at its own step.
		greeting, e := s.greet(lim, tr)
		if e != nil {
			return &session{route: r, tr: tr}, e
		}
		c = greetedClient(lim, greeting, tr)
	}
	c.CommandTimeout = orDefault(s.Timeouts.Command, 5*time.Minute)
	c.SubmissionTimeout = orDefault(s.Timeouts.Data, 10*time.Minute)
	c.DebugWriter = tr
	sess := &session{route: r, conn: conn, c: c, tr: tr, isTLS: isTLS, cancel: stop}
	fail := func(step string, err error) (*session, *Error) {
		e := Classify(step, err)
		sess.close(false)
		return sess, e
	}
	if err := c.Hello(helo); err != nil {
		e := Classify("ehlo", err)
		if e.Code == 0 || e.Code == 421 || e.Code == 554 {
			e.HostDown = true
		}
		sess.close(false)
		return sess, e
	}
	if r.Username != "" {
		if !sess.isTLS && !isLoopback(conn.RemoteAddr()) {
			sess.close(false)
			return sess, Permanentf("auth", "refusing to send credentials over an unencrypted connection to %s (tls: none); use starttls or implicit", r.Addr())
		}
		if err := c.Auth(s.saslClient(r, c)); err != nil {
			return fail("auth", err)
		}
	}
	// Transactions are pipelined where the server allows and the
	// connection go-smtp speaks on is ours (see pipelining.go).
	if ok, _ := c.Extension("PIPELINING"); ok && !s.NoPipelining {
		sess.pipe = newPipe(lim, tr)
	}
	opened = true
	return sess, nil
}

func (s *Sender) saslClient(r Route, c *smtp.Client) sasl.Client {
	switch {
	case !r.OAuth2Token.IsZero():
		return &xoauth2{user: r.Username, token: r.OAuth2Token.Reveal()}
	case !c.SupportsAuth("PLAIN") && c.SupportsAuth("LOGIN"):
		return sasl.NewLoginClient(r.Username, r.Password.Reveal())
	default:
		return sasl.NewPlainClient("", r.Username, r.Password.Reveal())
	}
}

func (s *Sender) tlsConfig(host string) *tls.Config {
	var cfg *tls.Config
	if s.TLSConfig != nil {
		cfg = s.TLSConfig.Clone()
	} else {
		cfg = &tls.Config{}
	}
	cfg.ServerName = host
	if cfg.MinVersion == 0 {
		cfg.MinVersion = tls.VersionTLS12
	}
	return cfg
}

// deliver runs one mail transaction on sess and sets job.Outcome. It reports
// whether the session is broken and must not be reused.
func (s *Sender) deliver(ctx context.Context, sess *session, job *Job) (broken bool) {
	c := sess.c
	fail := func(e *Error, rcpts []RcptResult) bool {
		job.Outcome = Outcome{Verdict: Transient, Err: e, Attempted: true, Rcpts: rcpts}
		if !e.Temporary {
			job.Outcome.Verdict, job.Outcome.Class = Permanent, ClassPermanent
		}
		return e.Code == 0 || e.Code == 421
	}
	if max, ok := c.MaxMessageSize(); ok && max > 0 && job.Size > int64(max) {
		e := Permanentf("size", "message of %d bytes is over the server's limit of %d bytes (SIZE); nothing was sent", job.Size, max)
		e.Code, e.Enhanced = 552, "5.3.4"
		return fail(e, allRcpts(job.Pending, e))
	}
	if job.UTF8 {
		if ok, _ := c.Extension("SMTPUTF8"); !ok {
			e := Permanentf("mail", "an envelope address is not ASCII and the server does not offer SMTPUTF8")
			e.Code, e.Enhanced = 553, "5.6.7"
			return fail(e, allRcpts(job.Pending, e))
		}
	}
	if sess.pipe != nil {
		return s.deliverPipelined(sess, job, fail)
	}
	if err := c.Mail(job.Sender, &smtp.MailOptions{Size: job.Size, UTF8: job.UTF8}); err != nil {
		e := Classify("mail", err)
		if fail(e, allRcpts(job.Pending, e)) {
			return true
		}
		return c.Reset() != nil
	}
	s.crash("after-mail")
	rcpts := make([]RcptResult, 0, len(job.Pending))
	var accepted []int
	for _, to := range job.Pending {
		if err := c.Rcpt(to, nil); err != nil {
			e := Classify("rcpt", err)
			if e.Code == 0 || e.Code == 421 {
				return fail(e, brokenAt(job.Pending, rcpts, e))
			}
			rcpts = append(rcpts, rcptResult(to, e))
			continue
		}
		rcpts = append(rcpts, RcptResult{Addr: to, Status: RcptDelivered})
		accepted = append(accepted, len(rcpts)-1)
	}
	if len(accepted) == 0 {
		job.Outcome = outcomeFromRcpts(rcpts)
		return c.Reset() != nil
	}
	w, err := c.Data()
	if err != nil {
		return dataRefused(c, rcpts, accepted, err, fail)
	}
	// The data timeout bounds sending the message and the reply to the
	// final dot together, as with PIPELINING: go-smtp sets no deadline for
	// the writes (a server that stops reading held the worker until
	// shutdown), and a deadline of its own for the reply.
	dataTimeout := orDefault(s.Timeouts.Data, 10*time.Minute)
	deadline := time.Now().Add(dataTimeout)
	sess.conn.SetDeadline(deadline)
	sess.tr.muted = true
	n, err := writeData(w, job)
	var resp *smtp.DataResponse
	if err == nil {
		c.SubmissionTimeout = max(time.Until(deadline), time.Millisecond)
		resp, err = w.CloseWithResponse()
		c.SubmissionTimeout = dataTimeout
	}
	sess.conn.SetDeadline(time.Time{})
	sess.tr.muted = false
	sess.tr.note(fmt.Sprintf("C: [message data: %d bytes]", n))
	var status string
	if resp != nil {
		status = resp.StatusText
	}
	return s.finish(sess, job, rcpts, accepted, status, err, fail)
}

// dataRefused decides a transaction whose DATA command failed: the
// recipients the server had accepted take its error. It reports whether the
// session is broken.
func dataRefused(c *smtp.Client, rcpts []RcptResult, accepted []int, err error, fail func(*Error, []RcptResult) bool) bool {
	e := Classify("data", err)
	for _, i := range accepted {
		rcpts[i] = rcptResult(rcpts[i].Addr, e)
	}
	if fail(e, rcpts) {
		return true
	}
	return c.Reset() != nil
}

// finish decides a transaction from the reply to its message data (err, or
// status text of the 250), for the recipients the server accepted.
func (s *Sender) finish(sess *session, job *Job, rcpts []RcptResult, accepted []int, status string, err error, fail func(*Error, []RcptResult) bool) (broken bool) {
	c := sess.c
	if err != nil {
		e := Classify("data", err)
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			// No reply after the data: the server may have the message.
			job.State.Possible = true
			e.Text += " (no reply to the message data: the server may have received it; it will be sent again)"
		}
		sess.tr.note("S: [" + e.Error() + "]")
		for _, i := range accepted {
			rcpts[i] = rcptResult(rcpts[i].Addr, e)
		}
		fail(e, rcpts)
		if se != nil && se.Code != 421 {
			return c.Reset() != nil
		}
		return true
	}
	sess.tr.note(fmt.Sprintf("S: 250 %s", status))
	for _, i := range accepted {
		rcpts[i].Code = 250
	}
	job.Outcome = outcomeFromRcpts(rcpts)
	s.crash("after-dot")
	if s.Accepted != nil {
		if err := s.Accepted(job); err != nil {
			s.Log.Error("recording the server's acceptance", zap.String("file", job.Name), zap.Error(err))
		}
		s.crash("after-record")
	}
	return false
}

func (s *Sender) crash(point string) {
	if s.Crash != nil {
		s.Crash(point)
	}
}

// writeData streams the message, without its envelope header, to w, and
// returns how many bytes it wrote.
func writeData(w io.Writer, job *Job) (int64, error) {
	cw := &queuefile.CountWriter{W: w}
	err := job.WriteMessage(cw)
	return cw.N, err
}

// startTLS does the plaintext part of a STARTTLS session on conn (greeting,
// EHLO with the configured name, STARTTLS) and the TLS handshake, recording
// the plaintext part. It returns the TLS connection and the text of the
// server's greeting. go-smtp's own STARTTLS sends "EHLO localhost" first and
// keeps the TLS connection to itself; here the session's transactions can be
// pipelined on it.
func (s *Sender) startTLS(ctx context.Context, conn net.Conn, r Route, helo string, tr *transcript) (*tls.Conn, string, *Error) {
	cmdTimeout := orDefault(s.Timeouts.Command, 5*time.Minute)
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
	tc := tls.Client(conn, s.tlsConfig(r.Host))
	if err := tc.HandshakeContext(ctx); err != nil {
		e := Classify("tls", fmt.Errorf("TLS handshake with %s: %w", r.Addr(), err))
		e.HostDown = true
		return nil, "", e
	}
	tr.note("[TLS started]")
	return tc, greeting, nil
}

// greet reads the server's greeting on conn, recording it, within the
// command timeout (for the whole greeting, however slowly it comes).
func (s *Sender) greet(conn net.Conn, tr *transcript) (string, *Error) {
	conn.SetDeadline(time.Now().Add(orDefault(s.Timeouts.Command, 5*time.Minute)))
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

func rcptResult(addr string, e *Error) RcptResult {
	st := RcptTransient
	if !e.Temporary {
		st = RcptFailed
	}
	return RcptResult{Addr: addr, Status: st, Code: e.Code, Enhanced: e.Enhanced, Text: clip(e.Text, maxErrorText)}
}

// brokenAt returns the results of a transaction that broke (no reply, or
// 421) at the RCPT of pending[len(before)], where before are the results
// of the recipients before it. No data followed, so a recipient the server
// had accepted is not delivered: it takes e, with the rest; one it refused
// keeps its refusal.
func brokenAt(pending []string, before []RcptResult, e *Error) []RcptResult {
	out := make([]RcptResult, 0, len(pending))
	for _, r := range before {
		if r.Status == RcptDelivered {
			r = rcptResult(r.Addr, e)
		}
		out = append(out, r)
	}
	for _, a := range pending[len(before):] {
		out = append(out, rcptResult(a, e))
	}
	return out
}

func allRcpts(addrs []string, e *Error) []RcptResult {
	out := make([]RcptResult, len(addrs))
	for i, a := range addrs {
		out[i] = rcptResult(a, e)
	}
	return out
}

// outcomeFromRcpts decides a transaction's verdict from its recipients:
// any transient one means a retry (for those only); else any failed one
// means Undeliverable; else sent.
func outcomeFromRcpts(rcpts []RcptResult) Outcome {
	o := Outcome{Verdict: Sent, Attempted: true, Rcpts: rcpts}
	var firstFail, firstTemp *RcptResult
	for i := range rcpts {
		switch rcpts[i].Status {
		case RcptTransient:
			if firstTemp == nil {
				firstTemp = &rcpts[i]
			}
		case RcptFailed:
			if firstFail == nil {
				firstFail = &rcpts[i]
			}
		}
	}
	switch {
	case firstTemp != nil:
		o.Verdict = Transient
		o.Err = &Error{Temporary: true, Step: "rcpt", Code: firstTemp.Code, Enhanced: firstTemp.Enhanced, Text: firstTemp.Text}
	case firstFail != nil:
		o.Verdict, o.Class = Permanent, ClassPermanent
		o.Err = &Error{Step: "rcpt", Code: firstFail.Code, Enhanced: firstFail.Enhanced, Text: firstFail.Text}
	}
	return o
}

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

// HostKey normalises an SMTP host name or IP the way per-host limits,
// queues and pauses are keyed: lower case, no brackets, no final dot.
func HostKey(h string) string {
	return strings.ToLower(strings.TrimSuffix(strings.Trim(strings.TrimSpace(h), "[]"), "."))
}
