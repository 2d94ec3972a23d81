package pipeline_test

// The SMTP side of issue 6's fault matrix: every reply, silence and broken
// connection a server can produce at each step of a session, and TLS that
// does not work out. Each case runs its own server and pipeline, in parallel
// with the others, with short timeouts where a client has to give up.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// filingsOf returns the filings of name so far, in order.
func filingsOf(env *pipelinetest.Env, name string) []stages.Filed {
	var out []stages.Filed
	for _, f := range env.Filed() {
		if f.Job.Name == name {
			out = append(out, f)
		}
	}
	return out
}

// firstTime returns a Fault function that answers f at the first point of
// step and proceeds normally everywhere else, so that the retry succeeds.
func firstTime(step smtptest.Step, f smtptest.Fault) func(smtptest.FaultPoint) smtptest.Fault {
	var done atomic.Bool
	return func(p smtptest.FaultPoint) smtptest.Fault {
		if p.Step == step && done.CompareAndSwap(false, true) {
			return f
		}
		return smtptest.Fault{}
	}
}

// stepCounter counts the points of each step a server reached.
type stepCounter struct {
	mu sync.Mutex
	n  map[smtptest.Step]int
}

func (c *stepCounter) count(p smtptest.FaultPoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[smtptest.Step]int{}
	}
	c.n[p.Step]++
}

func (c *stepCounter) get(s smtptest.Step) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[s]
}

// wireLog records the bytes the client writes on connections to one
// address (before any TLS: what a server without TLS sees).
type wireLog struct {
	addr string
	mu   sync.Mutex
	buf  bytes.Buffer
}

func (w *wireLog) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil || addr != w.addr {
		return c, err
	}
	return &recordedConn{Conn: c, log: w}, nil
}

func (w *wireLog) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

type recordedConn struct {
	net.Conn
	log *wireLog
}

func (c *recordedConn) Write(b []byte) (int, error) {
	c.log.mu.Lock()
	c.log.buf.Write(b)
	c.log.mu.Unlock()
	return c.Conn.Write(b)
}

// Credentials the fault tests' servers accept.
const faultUser, faultPassword = "mailer", "fault7Matrix9pass"

// faultParams sends to srv without TLS, with the login if the server wants
// one (AUTH in the clear is allowed to a loopback address).
func faultParams(srv *smtptest.Server, withAuth bool, to ...string) queuefile.Params {
	p := srv.Params(to...)
	if withAuth {
		p.Username, p.Password = faultUser, queuefile.NewSecret(faultPassword)
	}
	return p
}

// stepNames are the steps a server can fail, with the step the Sender
// records for a failure there. The reply to the final dot is "data", whether the server refuses the content at once
// (Data) or after reading it (AfterDot).
var stepNames = []struct {
	step smtptest.Step
	want string
}{
	{smtptest.Greeting, "greeting"},
	{smtptest.Hello, "ehlo"},
	{smtptest.Auth, "auth"},
	{smtptest.Mail, "mail"},
	{smtptest.Rcpt, "rcpt"},
	{smtptest.Data, "data"},
	{smtptest.AfterDot, "data"},
}

func TestTransientReplyAtEachStepIsRetried(t *testing.T) {
	t.Parallel()
	for _, st := range stepNames {
		for _, code := range []int{4, 421} {
			for _, mode := range pipeliningModes {
				reply := smtptest.Reply(451, smtp.EnhancedCode{4, 3, 0}, "Local problem, try again later")
				if st.step == smtptest.Auth {
					reply = smtptest.Reply(454, smtp.EnhancedCode{4, 7, 0}, "Temporary authentication failure")
				}
				if code == 421 {
					reply = smtptest.Reply(421, smtp.EnhancedCode{4, 4, 2}, "Closing connection, try again later")
				}
				e, wantEnh := reply.Err, enhanced(reply)
				t.Run(fmt.Sprintf("%s/%d/%s", st.step, e.Code, mode.name), func(t *testing.T) {
					t.Parallel()
					env, srv, name := enqueueWithFault(t, st.step, firstTime(st.step, reply), mode.off)

					d, _ := wantRetriedOnce(t, env, name)
					err := d.Job.Outcome.Err
					if err == nil || !err.Temporary || err.Code != e.Code || err.Enhanced != wantEnh || err.Step != st.want {
						t.Fatalf("deferral error = %#v, want a temporary %d %s at %s", err, e.Code, wantEnh, st.want)
					}
					if err.HostDown != (e.Code == 421) {
						t.Errorf("deferral error: HostDown = %v for a %d", err.HostDown, e.Code)
					}
					if !strings.Contains(err.Text, e.Message) {
						t.Errorf("deferral error text %q lacks the server's %q", err.Text, e.Message)
					}
					if le := d.Job.State.LastError; !strings.Contains(le, fmt.Sprintf("%s: %d %s", st.want, e.Code, wantEnh)) {
						t.Errorf("State.LastError = %q, want the %d %s at %s", le, e.Code, wantEnh, st.want)
					}
					if n := len(srv.Messages()); n != 1 {
						t.Errorf("server received %d messages, want 1", n)
					}
				})
			}
		}
	}
}

// wantRetriedOut checks that name was deferred twice and then failed for
// good once retries ran out (the test configuration allows 3 attempts),
// each time with a temporary error at step saying text.
func wantRetriedOut(t *testing.T, env *pipelinetest.Env, name, step, text string) {
	t.Helper()
	f := env.Wait(name)
	wantFailed(t, f, stages.ClassPermanent)
	if got := results(env, name); !slices.Equal(got, []string{"deferred", "deferred", "failed"}) {
		t.Errorf("filings = %v, want two deferrals, then failed once retries ran out", got)
	}
	for _, fl := range filingsOf(env, name) {
		if e := fl.Job.Outcome.Err; e == nil || e.Step != step || !e.Temporary || !strings.Contains(e.Text, text) {
			t.Errorf("%s: error %v, want a temporary error at %s saying %q", fl.Verdict, e, step, text)
		}
	}
}

// pipeliningModes runs a test with pipelined transactions (as smtpq sends
// to a server offering PIPELINING, as smtptest does) and one command at a
// time (as to a server that does not): both must decide alike.
// enqueueWithFault starts a server on 127.0.0.2 whose Fault is fault (with
// a login to check if step is AUTH, which the message then gives) and a
// pipeline, pipelining or not, and enqueues one message for the server.
func enqueueWithFault(t *testing.T, step smtptest.Step, fault func(smtptest.FaultPoint) smtptest.Fault, noPipelining bool) (*pipelinetest.Env, *smtptest.Server, string) {
	t.Helper()
	withAuth := step == smtptest.Auth
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
		if withAuth {
			s.Users = map[string]string{faultUser: faultPassword}
		}
		s.Fault = fault
	})
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{NoPipelining: noPipelining})
	return env, srv, env.Enqueue(testMessage(1), faultParams(srv, withAuth, "user1@example.org"))
}

// enhanced is the enhanced status code of a reply fault, as "4.3.0".
func enhanced(f smtptest.Fault) string {
	c := f.Err.EnhancedCode
	return fmt.Sprintf("%d.%d.%d", c[0], c[1], c[2])
}

var pipeliningModes = []struct {
	name string
	off  bool
}{{"pipelined", false}, {"one-at-a-time", true}}

func TestPermanentReplyAtEachStepIsUndeliverable(t *testing.T) {
	t.Parallel()
	replies := map[smtptest.Step]smtptest.Fault{
		smtptest.Greeting: smtptest.Reply(554, smtp.EnhancedCode{5, 3, 2}, "No SMTP service here"),
		smtptest.Hello:    smtptest.Reply(550, smtp.EnhancedCode{5, 7, 1}, "Your name is not welcome"),
		smtptest.Auth:     smtptest.Reply(535, smtp.EnhancedCode{5, 7, 8}, "Authentication credentials invalid"),
		smtptest.Mail:     smtptest.Reply(553, smtp.EnhancedCode{5, 1, 8}, "Sender address rejected"),
		smtptest.Rcpt:     smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "No such user here"),
		smtptest.Data:     smtptest.Reply(554, smtp.EnhancedCode{5, 6, 0}, "Content rejected"),
		// 552 after the data (message too large) stays permanent; only at
		// RCPT is it taken as 452 (see TestTooManyRecipients552IsTransient).
		smtptest.AfterDot: smtptest.Reply(552, smtp.EnhancedCode{5, 3, 4}, "Message too big for system"),
	}
	for _, st := range stepNames {
		for _, mode := range pipeliningModes {
			reply := replies[st.step]
			e, wantEnh := reply.Err, enhanced(reply)
			t.Run(fmt.Sprintf("%s/%d/%s", st.step, e.Code, mode.name), func(t *testing.T) {
				t.Parallel()
				env, srv, name := enqueueWithFault(t, st.step, smtptest.FaultAt(st.step, reply), mode.off)

				f := env.Wait(name)
				wantFailed(t, f, stages.ClassPermanent)
				if got := results(env, name); !slices.Equal(got, []string{"failed"}) {
					t.Errorf("filings = %v, want [failed]: a 5xx is not retried", got)
				}
				l := readXMLLog(t, env, name)
				if l.Failure.Class != "permanent" || l.Failure.Code != e.Code || l.Failure.Enhanced != wantEnh || l.Failure.Step != st.want {
					t.Errorf("XML failure = %+v, want class permanent, %d %s at %s", l.Failure, e.Code, wantEnh, st.want)
				}
				if !strings.Contains(l.Failure.Text, e.Message) {
					t.Errorf("XML failure text %q lacks the server's %q", l.Failure.Text, e.Message)
				}
				if got := l.rcptStatus()["user1@example.org"]; got != "failed" || l.Attempts != 1 {
					t.Errorf("XML log: recipient %q after %d attempts, want failed after 1", got, l.Attempts)
				}
				if n := len(srv.Messages()); n != 0 {
					t.Errorf("server received %d messages", n)
				}
				if got := pipelinetest.Files(t, env.Config.UndeliverableDir); len(got) != 2 {
					t.Errorf("Undeliverable holds %v, want the message and its log", got)
				}
			})
		}
	}
}

func TestTooManyRecipients552IsTransient(t *testing.T) {
	t.Parallel()
	// RFC 5321 4.5.3.1.10: "552 too many recipients" is an old mistake for
	// 452; a client treats it as temporary and sends the rest later.
	const first, second = "first@example.org", "second@example.org"
	var refused atomic.Bool
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Rcpt && p.Arg == second && refused.CompareAndSwap(false, true) {
				return smtptest.Reply(552, smtp.EnhancedCode{5, 5, 3}, "Too many recipients")
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{})
	name := env.Enqueue(testMessage(1), srv.Params(first, second))

	d, _ := wantRetriedOnce(t, env, name)
	if e := d.Job.Outcome.Err; e == nil || !e.Temporary || e.Code != 552 || e.Step != "rcpt" {
		t.Errorf("deferral error = %v, want a temporary 552 at rcpt", e)
	}
	var got [][]string
	for _, m := range srv.Messages() {
		got = append(got, m.To)
	}
	if want := [][]string{{first}, {second}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("server received the recipients %v, want %v: each once", got, want)
	}
}

// stateFile reads the delivery state of message id as the spool keeps it.
func stateFile(cfg *pipeline.Config, id string) (map[string]any, error) {
	b, err := os.ReadFile(filepath.Join(cfg.QueueDir, spool.StateDir, id+".json"))
	if err != nil {
		return nil, err
	}
	var m map[string]any
	return m, json.Unmarshal(b, &m)
}

func TestNoReplyIsRetried(t *testing.T) {
	t.Parallel()
	stall := smtptest.Fault{Stall: time.Minute} // ended when the server closes
	cases := []struct {
		name     string
		step     smtptest.Step
		fault    smtptest.Fault
		wantStep string
		possible bool // the server may have the message: a possible duplicate
	}{
		{"dropped after the dot", smtptest.AfterDot, smtptest.Fault{Drop: true}, "data", true},
		{"silent after the dot", smtptest.AfterDot, stall, "data", true},
		{"silent greeting", smtptest.Greeting, stall, "greeting", false},
		{"silent at MAIL", smtptest.Mail, stall, "mail", false},
		{"silent at RCPT", smtptest.Rcpt, stall, "rcpt", false},
		{"dropped at RCPT", smtptest.Rcpt, smtptest.Fault{Drop: true}, "rcpt", false},
	}
	for _, c := range cases {
		for _, mode := range pipeliningModes {
			t.Run(c.name+"/"+mode.name, func(t *testing.T) {
				t.Parallel()
				// The retry waits at MAIL until the test has read the state the
				// deferral left on disk (sending it would remove that state).
				stateRead := newSignal()
				var faulted atomic.Bool
				srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
					s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
						if p.Step == c.step && faulted.CompareAndSwap(false, true) {
							return c.fault
						}
						if p.Step == smtptest.Mail && faulted.Load() {
							<-stateRead.ch
						}
						return smtptest.Fault{}
					}
				})
				t.Cleanup(stateRead.Fire) // before the server closes
				env := pipelinetest.New(t, func(cfg *pipeline.Config) {
					cfg.Timeouts.Command = pipeline.Duration(time.Second)
					cfg.Timeouts.Data = pipeline.Duration(time.Second)
				})
				logger, logs := observed(t)
				var mu sync.Mutex
				var deferredState map[string]any
				var stateErr error
				env.Start(pipeline.Options{Logger: logger, NoPipelining: mode.off, OnFiled: func(f stages.Filed) {
					if f.Verdict == stages.Deferred {
						mu.Lock()
						defer mu.Unlock()
						deferredState, stateErr = stateFile(env.Config, f.Job.ID)
						stateRead.Fire()
					}
				}})
				name := env.Enqueue(testMessage(1), srv.Params("user1@example.org"))

				d, f := wantRetriedOnce(t, env, name)
				e := d.Job.Outcome.Err
				if e == nil || !e.Temporary || e.Code != 0 || e.Step != c.wantStep {
					t.Fatalf("deferral error = %#v, want a temporary error without a reply at %s", e, c.wantStep)
				}
				if c.fault.Stall > 0 && !strings.Contains(e.Text, "timeout") {
					t.Errorf("deferral error %q does not say it timed out", e.Text)
				}
				if n := len(srv.Messages()); n != 1 {
					t.Errorf("server recorded %d messages, want 1", n)
				}

				mu.Lock()
				st, serr := deferredState, stateErr
				mu.Unlock()
				if serr != nil {
					t.Fatalf("state file of the deferred message: %v", serr)
				}
				if got, _ := st["possible_dup"].(bool); got != c.possible {
					t.Errorf("state on disk: possible_dup = %v, want %v (%v)", st["possible_dup"], c.possible, st)
				}
				if d.Job.State.Possible != c.possible || f.Job.State.Possible != c.possible {
					t.Errorf("State.Possible = %v when deferred, %v when sent; want %v", d.Job.State.Possible, f.Job.State.Possible, c.possible)
				}
				if c.possible && !strings.Contains(e.Text, "may have received it") {
					t.Errorf("deferral error %q does not say the message may have arrived", e.Text)
				}
				sentLog := logs.FilterMessage("sent").FilterField(zap.String("file", name)).All()
				if len(sentLog) != 1 {
					t.Fatalf("%d \"sent\" log entries for %s, want 1", len(sentLog), name)
				}
				if got, _ := sentLog[0].ContextMap()["possible_duplicate"].(bool); got != c.possible {
					t.Errorf("\"sent\" log entry: possible_duplicate = %v, want %v", sentLog[0].ContextMap()["possible_duplicate"], c.possible)
				}
			})
		}
	}
}

func TestDroppedAfterDotEveryTimeIsLoggedAsPossibleDuplicate(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Fault = smtptest.FaultAt(smtptest.AfterDot, smtptest.Fault{Drop: true})
	})
	env := pipelinetest.New(t) // three attempts
	env.Start(pipeline.Options{})
	name := env.Enqueue(testMessage(1), srv.Params("user1@example.org"))

	f := env.Wait(name)
	wantFailed(t, f, stages.ClassPermanent)
	if got := f.Job.State.Attempts; got != 3 {
		t.Errorf("attempts = %d, want 3", got)
	}
	b, err := os.ReadFile(filepath.Join(env.Config.UndeliverableDir, strings.TrimSuffix(name, ".eml")+".xml"))
	if err != nil {
		t.Fatal(err)
	}
	var l struct {
		Possible bool `xml:"possibleDuplicate"`
	}
	if err := xml.Unmarshal(b, &l); err != nil {
		t.Fatal(err)
	}
	if !l.Possible || !bytes.Contains(b, []byte("may have received it")) {
		t.Errorf("XML log does not mark a possible duplicate:\n%s", b)
	}
}

// blackhole is a dial function under which connections to one address never
// complete: the dial blocks until its context ends, as a connect to a
// firewalled host does.
type blackhole struct {
	addr  string
	mu    sync.Mutex
	dials []time.Time
}

func (b *blackhole) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	if addr != b.addr {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	b.mu.Lock()
	b.dials = append(b.dials, time.Now())
	b.mu.Unlock()
	<-ctx.Done()
	return nil, &net.OpError{Op: "dial", Net: network, Err: ctx.Err()}
}

func (b *blackhole) started() []time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.dials)
}

// hookedLogger is observed with a signal that fires on the first entry with
// the message msg.
func hookedLogger(t *testing.T, level zapcore.Level, msg string) (*zap.Logger, *observer.ObservedLogs, *signal) {
	core, logs := observer.New(level)
	sig := newSignal()
	l := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t, zaptest.Level(level)).Core()),
		zap.Hooks(func(e zapcore.Entry) error {
			if e.Message == msg {
				sig.Fire()
			}
			return nil
		}))
	return l, logs, sig
}

func TestBlackholedHostIsPausedWithoutCountingAttempts(t *testing.T) {
	t.Parallel()
	const connectTimeout = 500 * time.Millisecond
	const held, perHost = 6, 3
	bh := &blackhole{addr: "127.0.0.9:2525"}
	healthy := startServer(t, "127.0.0.2")
	env := pipelinetest.New(t, withHost("127.0.0.9", hostLimits(perHost)), func(c *pipeline.Config) {
		c.MaxThreads = perHost + 2
		c.Timeouts.Connect = pipeline.Duration(connectTimeout)
		c.Retry.MaxAttempts = 10 // none given up while the test runs
	})
	var names []string
	for i := range held {
		p := queuefile.Params{Host: "127.0.0.9", Port: 2525, TLS: queuefile.TLSNone, From: "app@example.com",
			To: []string{fmt.Sprintf("user%d@example.org", i)}}
		names = append(names, env.Enqueue(testMessage(i), p))
	}
	const pausedMsg = "host paused after repeated failures"
	logger, logs, paused := hookedLogger(t, zapcore.DebugLevel, pausedMsg)
	env.Start(pipeline.Options{Logger: logger, Dial: bh.dial})

	paused.await(t, "the blackholed host to be paused")
	entry := logs.FilterMessage(pausedMsg).All()[0]
	pause, _ := entry.ContextMap()["pause"].(time.Duration)
	if pause <= 0 {
		t.Fatalf("pause log entry without a pause: %v", entry.ContextMap())
	}
	pausedAt := entry.Time

	// Mail for other hosts flows meanwhile.
	other := env.Enqueue(testMessage(100), healthy.Params("other@example.org"))
	wantSent(t, env.Wait(other))

	var d *stages.Outcome
	for _, f := range env.Filed() {
		if f.Verdict == stages.Deferred && slices.Contains(names, f.Job.Name) {
			d = &f.Job.Outcome
			break
		}
	}
	if d == nil {
		t.Fatal("no blackholed message was deferred")
	}
	if d.Err == nil || d.Err.Step != "connect" || !d.Err.Temporary || !d.Err.HostDown {
		t.Errorf("deferral error = %#v, want a temporary connect failure marking the host down", d.Err)
	}
	if d.Duration < connectTimeout || d.Duration > connectTimeout+5*time.Second {
		t.Errorf("the attempt took %v, want about timeouts.connect (%v)", d.Duration, connectTimeout)
	}

	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
	dials := bh.started()
	if len(dials) < perHost {
		t.Fatalf("%d dials before the host was paused, want %d (max_connections)", len(dials), perHost)
	}
	for _, at := range dials {
		if !at.Before(pausedAt) && at.Before(pausedAt.Add(pause)) {
			t.Errorf("dialled the paused host %v after the pause began (pause %v)", at.Sub(pausedAt), pause)
		}
	}
	// Every attempt a message is charged with is a real connection attempt:
	// waiting for the paused host costs none.
	attempts := 0
	for _, name := range names {
		if st, err := stateOf(t, env.Config.QueueDir, name); err == nil {
			attempts += st.Attempts
		}
	}
	t.Logf("%d connection attempts, paused %v after the first, for %v", len(dials), pausedAt.Sub(dials[0]), pause)
	if attempts != len(dials) {
		t.Errorf("messages were charged %d attempts for %d connection attempts", attempts, len(dials))
	}
	for _, name := range names {
		if at := whereIs(t, env, name); len(at) != 1 {
			t.Errorf("%s is in %v, want exactly one place", name, at)
		}
	}
}

func TestTLSFailuresAreNeverSent(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		mode     queuefile.TLSMode
		trust    bool     // the client trusts the server's certificate
		server   []string // certificate names; none: a server without TLS
		config   func(*tls.Config)
		implicit bool
		want     string // in the error text
	}{
		{name: "plain server, implicit client", mode: queuefile.TLSImplicit,
			want: "first record does not look like a TLS handshake"},
		{name: "no common TLS version", mode: queuefile.TLSImplicit, trust: true, server: []string{"127.0.0.2"}, implicit: true,
			config: func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 },
			want:   "version"},
		{name: "wrong name, implicit", mode: queuefile.TLSImplicit, trust: true, server: []string{"wrong.example"}, implicit: true,
			want: "cannot validate certificate for 127.0.0.2"},
		{name: "wrong name, starttls", mode: queuefile.TLSStartTLS, trust: true, server: []string{"wrong.example"},
			want: "cannot validate certificate for 127.0.0.2"},
		{name: "wrong address, starttls", mode: queuefile.TLSStartTLS, trust: true, server: []string{"127.0.0.3", "wrong.example"},
			want: "certificate is valid for 127.0.0.3, not 127.0.0.2"},
		{name: "self-signed, implicit", mode: queuefile.TLSImplicit, server: []string{"127.0.0.2"}, implicit: true,
			want: "certificate"},
		{name: "self-signed, starttls", mode: queuefile.TLSStartTLS, server: []string{"127.0.0.2"},
			want: "certificate"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var opts pipeline.Options
			srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
				if c.server == nil {
					return
				}
				cert, pool, err := smtptest.SelfSigned(c.server...)
				if err != nil {
					t.Fatal(err)
				}
				s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
				if c.config != nil {
					c.config(s.TLSConfig)
				}
				s.ImplicitTLS = c.implicit
				if c.trust {
					opts.TLSConfig = &tls.Config{RootCAs: pool}
				}
			})
			env := pipelinetest.New(t)
			env.Start(opts)
			p := srv.Params("user1@example.org")
			p.TLS = c.mode
			name := env.Enqueue(testMessage(1), p)

			wantRetriedOut(t, env, name, "tls", c.want)
			if n := len(srv.Messages()); n != 0 {
				t.Errorf("%d messages sent over a failed TLS connection", n)
			}
		})
	}
}

func TestStartTLSMissingSendsNothing(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		withTLS bool // a certificate, but STARTTLS disabled
	}{{"STARTTLS disabled", true}, {"no TLS at all", false}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var steps stepCounter
			srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
				if c.withTLS {
					cert, _, err := smtptest.SelfSigned("127.0.0.2")
					if err != nil {
						t.Fatal(err)
					}
					s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
					s.DisableStartTLS = true
				}
				// AUTH would be accepted in the clear: only the client's
				// refusal keeps the login and the message off the wire.
				s.Users = map[string]string{faultUser: faultPassword}
				s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
					steps.count(p)
					return smtptest.Fault{}
				}
			})
			wire := &wireLog{addr: srv.AddrString()}
			env := pipelinetest.New(t)
			env.Start(pipeline.Options{Dial: wire.dial})
			p := faultParams(srv, true, "user1@example.org")
			p.TLS = queuefile.TLSStartTLS
			name := env.Enqueue(testMessage(1), p)

			wantRetriedOut(t, env, name, "starttls", "")
			if steps.get(smtptest.Hello) == 0 {
				t.Fatal("the server never saw EHLO: the test proves nothing")
			}
			if n, m := steps.get(smtptest.Auth), steps.get(smtptest.Mail); n != 0 || m != 0 {
				t.Errorf("the server saw %d AUTH and %d MAIL", n, m)
			}
			sent := wire.String()
			for _, cmd := range []string{"AUTH", "MAIL FROM", faultPassword} {
				if strings.Contains(strings.ToUpper(sent), strings.ToUpper(cmd)) {
					t.Errorf("the client sent %q without TLS:\n%s", cmd, sent)
				}
			}
			if n := len(srv.Messages()); n != 0 {
				t.Errorf("server received %d messages", n)
			}
		})
	}
}
