package stages

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime/debug"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages/smtpclient"
)

// DialFunc opens a network connection; net.Dialer.DialContext is one.
type DialFunc = smtpclient.DialFunc

// Timeouts bound each network step of an SMTP session.
type Timeouts = smtpclient.Timeouts

// The bounds on what is read of a server's replies (see smtpclient).
const (
	MaxReplyLine = smtpclient.MaxReplyLine
	MaxReply     = smtpclient.MaxReply
)

// Sender delivers jobs over SMTP. Each worker (one Run call) owns at most one
// SMTP session and reuses it for the next job with the same Route, as the
// Dispatcher decides. The protocol is smtpclient's; the Sender decides what
// to send and what becomes of each job (decide).
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
	// Allowed, if set, says whether the configuration still lets the
	// service connect to a route, before each message (a reload may have
	// taken its server out of allowed_hosts since the Parser let it
	// through). A message whose route is refused is returned unsent, and
	// an open session to it closed: the Parser reads it again and files
	// it as its configuration now says.
	Allowed func(Route) error
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
	// Slots, if set, counts sessions per host across a cluster's nodes: a
	// new session is opened only with a slot (see SessionSlots).
	Slots SessionSlots
	Clock Clock
	Log   *zap.Logger
}

// SenderPanicLog is the message of the log entry for a panic a Sender
// worker recovered from; its fields are the file, the host, the panic and
// the stack.
const SenderPanicLog = "panic in a Sender worker: the message is failed as transient, the worker goes on"

// session is one open SMTP session, for one route.
type session struct {
	*smtpclient.Session
	route   Route
	count   int
	limit   int
	release func() // gives back the session's cluster-wide slot (Slots), if it holds one
}

// Close ends the session and gives back its slot.
func (s *session) Close(quit bool) {
	defer func() {
		if s.release != nil {
			s.release()
			s.release = nil
		}
	}()
	s.Session.Close(quit)
}

// SessionSlots counts the sessions to each host across the nodes of a
// cluster, so that a host's max_connections holds for them all together.
// Without it (one machine), the Dispatcher's own count is the whole count.
type SessionSlots interface {
	// Take takes one of max session slots of host for a new session,
	// without waiting, and returns what gives it back; false if every
	// slot is held by a session somewhere. A slot of a node that dies is
	// freed after a while.
	Take(host string, max int) (release func(), ok bool)
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
			r, ok := s.attempt(ctx, hard, &sess, a, job)
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
func (s *Sender) attempt(ctx, hard context.Context, cur **session, a Assignment, job *Job) (report *HostReport, ok bool) {
	defer func() {
		v := recover()
		if v == nil {
			return
		}
		stack := debug.Stack()
		var transcript string
		if sess := *cur; sess != nil {
			*cur = nil
			transcript = sess.Transcript()
			s.closeSession(sess, false)
		}
		text := s.recovered(job, v, stack)
		if job.Outcome.Verdict == Sent {
			return // the server has the message: sending it again would duplicate it
		}
		e := Temporaryf("local", "internal error while sending (a bug; the message will be tried again): %s", text)
		job.Outcome = Outcome{
			Verdict: Deferred, Err: e, Attempted: true, Rcpts: allRcpts(job.Pending, e), Transcript: transcript,
		}
		report, ok = nil, false
	}()
	report, ok = s.one(ctx, hard, cur, a, job)
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
	text := smtpclient.Clip(smtpclient.Redact(fmt.Sprint(v), secrets...), maxPanicText)
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
	sess.Close(quit)
}

// one sends job on *cur, or on a new session if *cur is nil or has another
// route; *cur is kept up to date as sessions close and open, so that a
// panic leaves no connection behind. It sets job.Outcome and returns what
// it learnt about the host, and false if the session could not be opened
// or broke, so that the rest of a batch must not follow.
func (s *Sender) one(ctx, hard context.Context, cur **session, a Assignment, job *Job) (*HostReport, bool) {
	var report *HostReport
	if ctx.Err() != nil {
		job.Outcome = Outcome{Verdict: Returned}
		return nil, true
	}
	job.Outcome = Outcome{}
	sess := *cur
	if s.Allowed != nil {
		if err := s.Allowed(job.Route); err != nil {
			s.Log.Warn("not sent: its server is no longer allowed; back to the queue", zap.String("file", job.Name), zap.Error(err))
			if sess != nil && sess.route == job.Route {
				*cur = nil
				sess.Close(true)
			}
			job.Outcome = Outcome{Verdict: Returned}
			return nil, true
		}
	}
	if sess != nil && sess.route != job.Route {
		*cur = nil
		sess.Close(true)
		sess = nil
	}
	start := s.Clock.Now()
	if sess == nil {
		var release func()
		if s.Slots != nil {
			var ok bool
			if release, ok = s.Slots.Take(job.Host(), a.Conns); !ok {
				// Every session the host allows is open on some node:
				// not an attempt; back soon, and the Dispatcher leaves
				// this node's share of the host as it is for a while.
				job.Outcome = Outcome{Verdict: Parked, Due: start.Add(time.Second + time.Duration(rand.Int64N(int64(time.Second))))}
				return &HostReport{Host: job.Host(), Busy: true}, false
			}
		}
		var err *Error
		sess, err = s.open(hard, job.Route)
		if sess != nil {
			sess.release = release
		} else if release != nil {
			release()
		}
		if err != nil {
			report = &HostReport{Host: job.Host(), Down: err.HostDown}
			job.Outcome = failed(err, allRcpts(job.Pending, err))
			job.Outcome.Duration = s.Clock.Now().Sub(start)
			if sess != nil { // a transcript of the failed opening
				job.Outcome.Transcript = sess.Transcript()
			}
			return report, false
		}
		*cur = sess
		sess.limit = a.Limit
		report = &HostReport{Host: job.Host(), OK: true}
		s.crash("connected")
	} else {
		sess.ResetTranscript()
		sess.Note(fmt.Sprintf("[session reused: message %d on this connection]", sess.count+1))
	}
	broken := s.deliver(sess, job)
	job.Outcome.Duration = s.Clock.Now().Sub(start)
	job.Outcome.Transcript = sess.Transcript()
	if job.Outcome.Err != nil && job.Outcome.Err.HostDown {
		report = &HostReport{Host: job.Host(), Down: true}
	}
	sess.count++
	if broken || (sess.limit > 0 && sess.count >= sess.limit) {
		*cur = nil
		sess.Close(!broken)
	}
	return report, !broken && (report == nil || !report.Down)
}

// open dials and sets up a session for r (see smtpclient.Dial). On
// failure it returns the error and, if it got that far, a closed session
// whose transcript tells what happened.
func (s *Sender) open(ctx context.Context, r Route) (*session, *Error) {
	helo := r.HELO
	if helo == "" {
		helo = s.HELO
	}
	cs, err := smtpclient.Dial(ctx, smtpclient.Config{
		Dial: s.Dial, Addr: r.Addr(), Host: r.Host, Name: r.String(),
		TLS: r.TLS, TLSConfig: s.TLSConfig, HELO: helo, Timeouts: s.Timeouts,
		Username: r.Username, Password: r.Password, OAuth2Token: r.OAuth2Token,
		NoPipelining: s.NoPipelining,
		AfterMail:    func() { s.crash("after-mail") },
	})
	if cs == nil {
		return nil, err
	}
	return &session{Session: cs, route: r}, err
}

// deliver runs one mail transaction on sess and sets job.Outcome. It reports
// whether the session is broken and must not be reused.
func (s *Sender) deliver(sess *session, job *Job) (broken bool) {
	if max, ok := sess.MaxMessageSize(); ok && max > 0 && job.Size > int64(max) {
		e := Permanentf("size", "message of %d bytes is over the server's limit of %d bytes (SIZE); nothing was sent", job.Size, max)
		e.Code, e.Enhanced = 552, "5.3.4"
		job.Outcome = failed(e, allRcpts(job.Pending, e))
		return false
	}
	if job.UTF8 {
		if ok, _ := sess.Extension("SMTPUTF8"); !ok {
			e := Permanentf("mail", "an envelope address is not ASCII and the server does not offer SMTPUTF8")
			e.Code, e.Enhanced = 553, "5.6.7"
			job.Outcome = failed(e, allRcpts(job.Pending, e))
			return false
		}
	}
	tx := sess.Send(
		smtpclient.Envelope{From: job.Sender, To: job.Pending, Size: job.Size, UTF8: job.UTF8},
		smtpclient.Message{Bytes: job.body.bytes(), Write: func(w io.Writer) (int64, error) { return writeData(w, job) }},
	)
	job.Outcome = decide(job.Pending, tx)
	if tx.NoReply {
		job.State.Possible = true
	}
	if tx.DataAccepted {
		s.crash("after-dot")
		if s.Accepted != nil {
			if err := s.Accepted(job); err != nil {
				s.Log.Error("recording the server's acceptance", zap.String("file", job.Name), zap.Error(err))
			}
			s.crash("after-record")
		}
	}
	return tx.Broken
}

// decide is the fate of a transaction's recipients, pending, from what the
// server answered (tx), whether its commands were pipelined or not:
//
//   - A failed MAIL fails every recipient with it (the RCPTs after a
//     refused MAIL mean nothing).
//   - A refused RCPT fails its recipient. A RCPT that ends the session (no
//     reply, or 421) fails its recipient and those after it; the ones
//     accepted before it too, as no data followed.
//   - With no recipient accepted, that is all. Otherwise those accepted
//     take the failure of DATA or of the message data, if any, else they
//     are delivered.
//
// The verdict follows the error that decided (Failed unless it is
// temporary), or, where the recipients' own replies decided, them (see
// outcomeFromRcpts).
func decide(pending []string, tx *smtpclient.Transaction) Outcome {
	if tx.Mail != nil {
		return failed(tx.Mail, allRcpts(pending, tx.Mail))
	}
	rcpts := make([]RcptResult, 0, len(pending))
	var accepted []int
	for i, e := range tx.Rcpt {
		if e == nil {
			rcpts = append(rcpts, RcptResult{Addr: pending[i], Status: RcptDelivered})
			accepted = append(accepted, i)
			continue
		}
		if e.EndsSession() {
			return failed(e, brokenAt(pending, rcpts, e))
		}
		rcpts = append(rcpts, rcptResult(pending[i], e))
	}
	if len(accepted) == 0 {
		return outcomeFromRcpts(rcpts)
	}
	e := tx.Data
	if e == nil {
		e = tx.Dot
	}
	if e != nil {
		for _, i := range accepted {
			rcpts[i] = rcptResult(rcpts[i].Addr, e)
		}
		return failed(e, rcpts)
	}
	for _, i := range accepted {
		rcpts[i].Code = 250
	}
	return outcomeFromRcpts(rcpts)
}

// failed is the outcome of an attempt that failed with e, with the
// recipients' results rcpts.
func failed(e *Error, rcpts []RcptResult) Outcome {
	o := Outcome{Verdict: Deferred, Err: e, Attempted: true, Rcpts: rcpts}
	if !e.Temporary {
		o.Verdict, o.Class = Failed, ClassPermanent
	}
	return o
}

func (s *Sender) crash(point string) {
	if s.Crash != nil {
		s.Crash(point)
	}
}

func rcptResult(addr string, e *Error) RcptResult {
	st := RcptDeferred
	if !e.Temporary {
		st = RcptFailed
	}
	return RcptResult{Addr: addr, Status: st, Code: e.Code, Enhanced: e.Enhanced, Text: smtpclient.Clip(e.Text, smtpclient.MaxErrorText)}
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
		case RcptDeferred:
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
		o.Verdict = Deferred
		o.Err = &Error{Temporary: true, Step: "rcpt", Code: firstTemp.Code, Enhanced: firstTemp.Enhanced, Text: firstTemp.Text}
	case firstFail != nil:
		o.Verdict, o.Class = Failed, ClassPermanent
		o.Err = &Error{Step: "rcpt", Code: firstFail.Code, Enhanced: firstFail.Enhanced, Text: firstFail.Text}
	}
	return o
}

// writeData streams the message, without its envelope header, to w, and
// returns how many bytes it wrote.
func writeData(w io.Writer, job *Job) (int64, error) {
	cw := &queuefile.CountWriter{W: w}
	err := job.WriteMessage(cw)
	return cw.N, err
}

// boundOutcome clips the texts of o that came from the server.
func boundOutcome(o *Outcome) {
	if o.Err != nil {
		o.Err.Text = smtpclient.Clip(o.Err.Text, smtpclient.MaxErrorText)
	}
	for i := range o.Rcpts {
		o.Rcpts[i].Text = smtpclient.Clip(o.Rcpts[i].Text, smtpclient.MaxErrorText)
	}
}

// HostKey normalises an SMTP host name or IP the way per-host limits,
// queues and pauses are keyed: lower case, no brackets, no final dot.
func HostKey(h string) string {
	return strings.ToLower(strings.TrimSuffix(strings.Trim(strings.TrimSpace(h), "[]"), "."))
}
