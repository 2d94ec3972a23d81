package pipeline_test

// Issue 10, "SMTP servers choose the bytes they send": whatever a server
// sends, at whatever speed, ends in a bounded, transient failure of the
// message at hand; no worker dies, nothing is kept whole in memory, no wait
// is extended by a trickle.

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

// A server line "AUTH " used to panic the transcript's redactor and, with
// it, the only Sender worker: every message after it stayed in .active and
// shutdown hung.
func TestServerAuthLineKillsNoWorker(t *testing.T) {
	t.Parallel()
	var sessions atomic.Int32
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Greeting && sessions.Add(1) <= 2 {
				return smtptest.Fault{Raw: strings.NewReader("220-hello\r\nAUTH \r\n")}
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t, func(c *pipeline.Config) { c.MaxThreads = 1 })
	env.Start(pipeline.Options{})
	a := env.Enqueue(testMessage(1), srv.Params("user1@example.org"))
	b := env.Enqueue(testMessage(2), srv.Params("user2@example.org"))

	for _, name := range []string{a, b} {
		wantSent(t, env.Wait(name))
	}
	for _, f := range env.Filed() {
		if f.Verdict != stages.Deferred {
			continue
		}
		if e := f.Job.Outcome.Err; e == nil || !e.Temporary || e.Step != "greeting" {
			t.Errorf("%s deferred with %v, want a temporary greeting failure", f.Job.Name, e)
		}
		if tr := f.Job.Outcome.Transcript; !strings.Contains(tr, "S: 220-hello") || !strings.Contains(tr, "AUTH") {
			t.Errorf("transcript of the odd greeting:\n%s", tr)
		}
	}
	if err := env.Stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// A panic while one message is handled (here: injected at a point of the
// delivery) fails that message as a transient failure, logged with the
// stack; the worker goes on with the next message, and /healthz says so.
// A panic after the server accepted the data keeps the message sent.
func TestPanicInSenderFailsOnlyItsMessage(t *testing.T) {
	t.Parallel()
	for _, point := range []string{"connected", "after-mail", "after-dot"} {
		for _, mode := range pipeliningModes {
			t.Run(point+"/"+mode.name, func(t *testing.T) {
				t.Parallel()
				srv := startServer(t, "127.0.0.2")
				env := pipelinetest.New(t, func(c *pipeline.Config) {
					c.MaxThreads = 1
					c.Metrics.Listen = "127.0.0.1:0"
				})
				var panicked atomic.Bool
				crash := func(p string) {
					if p == point && panicked.CompareAndSwap(false, true) {
						panic(fmt.Sprintf("injected at %s", p))
					}
				}
				logger, logs := observed(t)
				env.Start(pipeline.Options{Logger: logger, Crash: crash, NoPipelining: mode.off})
				a := env.Enqueue(testMessage(1), srv.Params("user1@example.org"))
				b := env.Enqueue(testMessage(2), srv.Params("user2@example.org"))

				for _, name := range []string{a, b} {
					wantSent(t, env.Wait(name))
				}
				if !panicked.Load() {
					t.Fatal("the injected panic never ran: the test proves nothing")
				}
				var deferred []stages.Filed
				for _, f := range env.Filed() {
					if f.Verdict == stages.Deferred {
						deferred = append(deferred, f)
					}
				}
				if point == "after-dot" {
					// The server has the message: it is not sent again.
					if len(deferred) != 0 || len(srv.Messages()) != 2 {
						t.Errorf("%d deferrals and %d messages at the server, want none and 2", len(deferred), len(srv.Messages()))
					}
				} else {
					if len(deferred) != 1 {
						t.Fatalf("%d deferrals, want 1 (the message that panicked)", len(deferred))
					}
					e := deferred[0].Job.Outcome.Err
					if e == nil || !e.Temporary || e.Step != "local" || !strings.Contains(e.Text, "injected at "+point) {
						t.Errorf("deferral error %v, want a temporary local error naming the panic", e)
					}
				}
				entries := logs.FilterMessage(stages.SenderPanicLog).All()
				if len(entries) != 1 {
					t.Fatalf("%d %q log entries, want 1", len(entries), stages.SenderPanicLog)
				}
				if st, _ := entries[0].ContextMap()["stack"].(string); !strings.Contains(st, "stages.(*Sender)") {
					t.Errorf("panic log entry without the stack: %v", entries[0].ContextMap())
				}
				code, body := get(t, "http://"+env.Pipeline.MetricsAddr().String()+"/healthz")
				if code != http.StatusServiceUnavailable || !strings.Contains(body, "panic") || !strings.Contains(body, "injected at "+point) {
					t.Errorf("/healthz after a panic = %d %q, want 503 naming it", code, body)
				}
				_, metrics := get(t, "http://"+env.Pipeline.MetricsAddr().String()+"/metrics")
				if !strings.Contains(metrics, "smtpq_sender_panics_total 1") {
					t.Errorf("/metrics lacks smtpq_sender_panics_total 1")
				}
				stopWithin(t, env)
				if err := srv.WaitIdle(waitCtx(t)); err != nil {
					t.Errorf("a connection outlived the pipeline: %v", err)
				}
			})
		}
	}
}

// stopWithin stops env and fails the test if that takes too long.
func stopWithin(t *testing.T, env *pipelinetest.Env) {
	t.Helper()
	start := time.Now()
	if err := env.Stop(); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("shutdown took %v", d)
	}
}

// A connection dropped at the reply to a later RCPT ends the transaction
// before any data: every recipient is deferred, listed in order, except
// one the server had refused for good before the drop. None counts as
// delivered, so the retry sends to all the others.
func TestDroppedAtLaterRcptDefersEveryRecipient(t *testing.T) {
	t.Parallel()
	rcpts := []string{"user1@example.org", "user2@example.org", "user3@example.org", "user4@example.org"}
	for _, mode := range pipeliningModes {
		for _, refuseFirst := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/refuse-first=%v", mode.name, refuseFirst), func(t *testing.T) {
				t.Parallel()
				var dropped atomic.Bool
				srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
					s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
						switch {
						case p.Step == smtptest.Rcpt && p.Arg == rcpts[0] && refuseFirst:
							return smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "No such user")
						case p.Step == smtptest.Rcpt && p.Arg == rcpts[2] && dropped.CompareAndSwap(false, true):
							return smtptest.Fault{Drop: true}
						}
						return smtptest.Fault{}
					}
				})
				env := pipelinetest.New(t)
				env.Start(pipeline.Options{NoPipelining: mode.off})
				name := env.Enqueue(testMessage(1), srv.Params(rcpts...))

				final := env.Wait(name)
				fs := filingsOf(env, name)
				if len(fs) != 2 || fs[0].Verdict != stages.Deferred {
					t.Fatalf("filings %v, want a deferral and a final filing", results(env, name))
				}
				got := fs[0].Job.Outcome.Rcpts
				if len(got) != len(rcpts) {
					t.Fatalf("deferral lists %+v, want the %d recipients", got, len(rcpts))
				}
				for i, r := range got {
					want := stages.RcptDeferred
					if i == 0 && refuseFirst {
						want = stages.RcptFailed
					}
					if r.Addr != rcpts[i] || r.Status != want {
						t.Errorf("recipient %d of the deferral: %+v, want %s %s", i, r, rcpts[i], want)
					}
				}
				wantTo := rcpts
				if refuseFirst {
					wantFailed(t, final, stages.ClassPermanent)
					wantTo = rcpts[1:]
				} else {
					wantSent(t, final)
				}
				msgs := srv.Messages()
				if len(msgs) != 1 || !slices.Equal(msgs[0].To, wantTo) {
					var to [][]string
					for _, m := range msgs {
						to = append(to, m.To)
					}
					t.Errorf("the server received the recipients %v, want once %v", to, wantTo)
				}
			})
		}
	}
}

// floodOf is a Raw reply of b over and over: 8 MiB, far past every bound
// and socket buffer (and finite, so that a client without bounds ends too).
func floodOf(b string) io.Reader {
	return io.LimitReader(smtptest.Repeat([]byte(b)), 8<<20)
}

// noLF is binary noise without a line feed.
func noLF() string {
	b := make([]byte, 1024)
	for i := range b {
		b[i] = byte(i*7 + 3)
		if b[i] == '\n' {
			b[i] = 0
		}
	}
	return string(b)
}

// Whatever bytes a server sends in place of a reply, and however slowly,
// the attempt ends in a transient failure at that step, within the
// command timeout, with an error and a transcript that did not grow with
// what the server sent; the retry goes out as usual.
func TestHostileRepliesAreTransient(t *testing.T) {
	t.Parallel()
	const cmdTimeout = time.Second
	// A trickle of 300 ms a byte takes several seconds for these replies:
	// under a deadline per read it would get through; the deadline is per
	// command or reply.
	const trickle = 300 * time.Millisecond
	lineLimit := fmt.Sprintf("reply line over %d bytes", stages.MaxReplyLine)
	replyLimit := fmt.Sprintf("reply over %d bytes", stages.MaxReply)
	cases := []struct {
		name   string
		step   smtptest.Step
		raw    func() io.Reader
		slow   bool
		want   string // the step recorded
		saying string
	}{
		{"greeting of noise without end", smtptest.Greeting, func() io.Reader { return floodOf(noLF()) }, false, "greeting", lineLimit},
		{"greeting that never ends", smtptest.Greeting, func() io.Reader { return floodOf("220-more\r\n") }, false, "greeting", replyLimit},
		{"greeting of binary noise", smtptest.Greeting, func() io.Reader { return floodOf("\x00\xff\r\n\x1b[2J\x80") }, false, "greeting", ""},
		{"EHLO reply that never ends", smtptest.Hello, func() io.Reader { return floodOf("250-more\r\n") }, false, "ehlo", replyLimit},
		{"EHLO reply line without end", smtptest.Hello, func() io.Reader { return io.MultiReader(strings.NewReader("250-"), floodOf("x")) }, false, "ehlo", lineLimit},
		{"RCPT reply that never ends", smtptest.Rcpt, func() io.Reader { return floodOf("250-more\r\n") }, false, "rcpt", replyLimit},
		{"reply to the dot that never ends", smtptest.AfterDot, func() io.Reader { return floodOf("250-more\r\n") }, false, "data", replyLimit},
		{"trickled greeting", smtptest.Greeting, func() io.Reader { return strings.NewReader("220 smtptest ESMTP\r\n") }, true, "greeting", "timeout"},
		{"trickled RCPT reply", smtptest.Rcpt, func() io.Reader { return strings.NewReader("250 2.1.5 ok\r\n") }, true, "rcpt", "timeout"},
		{"trickled reply to the dot", smtptest.AfterDot, func() io.Reader { return strings.NewReader("250 2.0.0 ok\r\n") }, true, "data", "timeout"},
	}
	for _, c := range cases {
		for _, mode := range pipeliningModes {
			t.Run(c.name+"/"+mode.name, func(t *testing.T) {
				t.Parallel()
				var done atomic.Bool
				srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
					s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
						if p.Step == c.step && done.CompareAndSwap(false, true) {
							f := smtptest.Fault{Raw: c.raw()}
							if c.slow {
								f.Trickle = trickle
							}
							return f
						}
						return smtptest.Fault{}
					}
				})
				env := pipelinetest.New(t, func(cfg *pipeline.Config) {
					cfg.Timeouts.Command = pipeline.Duration(cmdTimeout)
					cfg.Timeouts.Data = pipeline.Duration(cmdTimeout)
				})
				env.Start(pipeline.Options{NoPipelining: mode.off})
				name := env.Enqueue(testMessage(1), srv.Params("user1@example.org", "user2@example.org"))

				d, _ := wantRetriedOnce(t, env, name)
				o := d.Job.Outcome
				if o.Err == nil || !o.Err.Temporary || o.Err.Step != c.want || !strings.Contains(o.Err.Text, c.saying) {
					t.Fatalf("deferral error %v, want a temporary failure at %s saying %q", o.Err, c.want, c.saying)
				}
				if n := len(o.Err.Error()); n > 4096 {
					t.Errorf("error of %d bytes", n)
				}
				if n := len(o.Transcript); n > 40<<10 {
					t.Errorf("transcript of %d bytes", n)
				}
				for _, r := range o.Rcpts {
					if r.Status != stages.RcptDeferred || len(r.Text) > 4096 {
						t.Errorf("recipient %+v, want deferred with a bounded text", r)
					}
				}
				if n := len(srv.Messages()); n != 1 {
					t.Errorf("server received %d messages, want 1", n)
				}
			})
		}
	}
}
