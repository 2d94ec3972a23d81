package pipeline_test

import (
	"bytes"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

var (
	tryLater   = smtptest.Reply(451, smtp.EnhancedCode{4, 2, 1}, "Mailbox busy, try again later")
	noSuchUser = smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "No such user here")
)

func TestTransientFailureIsRetried(t *testing.T) {
	t.Parallel()
	var refused atomic.Bool
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			// Only the very first RCPT: the retry may well come on the
			// same, reused session.
			if p.Step == smtptest.Rcpt && refused.CompareAndSwap(false, true) {
				return tryLater
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{})
	name := env.Enqueue(testMessage(1), srv.Params("user1@example.org"))

	wantRetriedOnce(t, env, name)
	for _, fl := range env.Filed() {
		if fl.Verdict == stages.Deferred {
			if e := fl.Job.Outcome.Err; e == nil || e.Code != 451 || e.Enhanced != "4.2.1" {
				t.Errorf("deferral error = %v, want the server's 451 4.2.1", e)
			}
		}
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("server received %d messages, want 1", n)
	}
}

func TestPermanentFailureFilesUndeliverable(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) { s.Fault = smtptest.FaultAt(smtptest.Rcpt, noSuchUser) })
	env := pipelinetest.New(t)
	name := env.Enqueue(testMessage(1), srv.Params("nobody@example.org"))
	queued, err := os.ReadFile(filepath.Join(env.Config.QueueDir, name))
	if err != nil {
		t.Fatal(err)
	}
	env.Start(pipeline.Options{})

	f := env.Wait(name)
	wantFailed(t, f, stages.ClassPermanent)
	if want := filepath.Join(env.Config.UndeliverableDir, name); f.Path != want {
		t.Errorf("filed at %s, want %s", f.Path, want)
	}
	if got := results(env, name); !slices.Equal(got, []string{"failed"}) {
		t.Errorf("filings = %v, want [failed]: a 5xx is not retried", got)
	}

	// The original file, seal and all, beside its log.
	got, err := os.ReadFile(filepath.Join(env.Config.UndeliverableDir, name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, queued) {
		t.Errorf("Undeliverable copy differs from the queued file")
	}
	if !bytes.HasPrefix(got, []byte("X-SmtpQ-Sealed:")) {
		t.Errorf("Undeliverable copy lacks the sealed header")
	}
	l := readXMLLog(t, env, name)
	if l.Failure.Class != "permanent" || l.Failure.Code != 550 || l.Failure.Enhanced != "5.1.1" || l.Failure.Step != "rcpt" {
		t.Errorf("failure = %+v, want class permanent, 550 5.1.1 at rcpt", l.Failure)
	}
	if !strings.Contains(l.Failure.Text, "No such user here") {
		t.Errorf("failure text %q lacks the server's text", l.Failure.Text)
	}
	if l.Attempts != 1 || l.From != "app@example.com" || !slices.Equal(l.To, []string{"nobody@example.org"}) {
		t.Errorf("attempts %d, envelope %s -> %v", l.Attempts, l.From, l.To)
	}
	if len(l.Recipients) != 1 || l.Recipients[0].Addr != "nobody@example.org" || l.Recipients[0].Status != "failed" ||
		l.Recipients[0].Code != 550 || l.Recipients[0].Enhanced != "5.1.1" {
		t.Errorf("recipients = %+v, want nobody@example.org failed 550 5.1.1", l.Recipients)
	}
	if !strings.Contains(l.Transcript, "RCPT TO:<nobody@example.org>") || !strings.Contains(l.Transcript, "550") {
		t.Errorf("transcript lacks the refused RCPT:\n%s", l.Transcript)
	}
	// The Sender reads the greeting itself and hands it to go-smtp: the
	// transcript has it once, before EHLO.
	greet, ehlo := strings.Index(l.Transcript, "220 "), strings.Index(l.Transcript, "EHLO ")
	if n := strings.Count(l.Transcript, "220 "); n != 1 || greet < 0 || ehlo < greet {
		t.Errorf("transcript has %d greetings (at %d, EHLO at %d), want one before EHLO:\n%s", n, greet, ehlo, l.Transcript)
	}
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("server received %d messages", n)
	}

	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
	// Nothing left behind: not in the queue, .active, .deferred or .state.
	if left := filesUnder(t, env.Config.QueueDir); len(left) != 0 {
		t.Errorf("left in queue_dir: %v", left)
	}
	if got := pipelinetest.Files(t, env.Config.UndeliverableDir); len(got) != 2 {
		t.Errorf("Undeliverable holds %v, want the message and its log", got)
	}
	if got := pipelinetest.Files(t, env.Config.SentDir); len(got) != 0 {
		t.Errorf("Sent holds %v", got)
	}
}

func TestPartialRecipientFailure(t *testing.T) {
	t.Parallel()
	for _, mode := range pipeliningModes {
		t.Run(mode.name, func(t *testing.T) {
			t.Parallel()
			testPartialRecipientFailure(t, mode.off)
		})
	}
}

func testPartialRecipientFailure(t *testing.T, noPipelining bool) {
	const ok, later, bad = "ok@example.org", "later@example.org", "bad@example.org"
	var refusedLater atomic.Bool
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			switch {
			case p.Step != smtptest.Rcpt:
			case p.Arg == bad:
				return noSuchUser
			case p.Arg == later && refusedLater.CompareAndSwap(false, true):
				return tryLater
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{NoPipelining: noPipelining})
	name := env.Enqueue(testMessage(1), srv.Params(ok, later, bad))

	f := env.Wait(name)
	// One recipient failed for good: the message is undeliverable, even
	// though the last attempt (for the deferred recipient) succeeded.
	wantFailed(t, f, stages.ClassPermanent)
	if got := f.Job.State.Attempts; got != 2 {
		t.Errorf("attempts = %d, want 2", got)
	}
	if got := results(env, name); !slices.Equal(got, []string{"deferred", "failed"}) {
		t.Errorf("filings = %v, want [deferred failed]", got)
	}
	perRcpt := map[string]int{}
	for _, m := range srv.Messages() {
		for _, to := range m.To {
			perRcpt[to]++
		}
	}
	if perRcpt[ok] != 1 || perRcpt[later] != 1 || perRcpt[bad] != 0 {
		t.Errorf("deliveries per recipient = %v, want %s and %s once, %s never", perRcpt, ok, later, bad)
	}
	l := readXMLLog(t, env, name)
	want := map[string]string{ok: "delivered", later: "delivered", bad: "failed"}
	if got := l.rcptStatus(); len(l.Recipients) != 3 || !maps.Equal(got, want) {
		t.Errorf("recipients in the log = %+v, want %v", l.Recipients, want)
	}
	if l.Failure.Class != "permanent" || l.Failure.Code != 550 {
		t.Errorf("failure = %+v, want class permanent, 550", l.Failure)
	}
	if got := pipelinetest.Files(t, env.Config.SentDir); len(got) != 0 {
		t.Errorf("Sent holds %v", got)
	}
}

func TestRetriesExhausted(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) { s.Fault = smtptest.FaultAt(smtptest.Rcpt, tryLater) })
	env := pipelinetest.New(t) // retry.max_attempts 3, zero backoff
	env.Start(pipeline.Options{})
	name := env.Enqueue(testMessage(1), srv.Params("user1@example.org"))

	f := env.Wait(name)
	wantFailed(t, f, stages.ClassPermanent)
	if got := f.Job.State.Attempts; got != 3 {
		t.Errorf("attempts = %d, want 3", got)
	}
	if got := results(env, name); !slices.Equal(got, []string{"deferred", "deferred", "failed"}) {
		t.Errorf("filings = %v, want [deferred deferred failed]", got)
	}
	l := readXMLLog(t, env, name)
	if l.Attempts != 3 || l.Failure.Class != "permanent" || l.Failure.Code != 451 {
		t.Errorf("log: attempts %d, failure %+v; want 3 attempts, class permanent, last code 451", l.Attempts, l.Failure)
	}
	if !strings.Contains(l.Failure.Text, "3 attempts") {
		t.Errorf("failure text %q does not say retries ran out", l.Failure.Text)
	}
	if len(l.History) != 3 {
		t.Errorf("history = %q, want one entry per attempt", l.History)
	}
	if got := l.rcptStatus(); got["user1@example.org"] != "failed" {
		t.Errorf("recipients = %+v, want user1@example.org failed", l.Recipients)
	}
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("server received %d messages", n)
	}
}
