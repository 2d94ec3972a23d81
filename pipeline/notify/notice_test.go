package notify_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline/notify"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// failedJob is testJob given up: a@ refused with 550 5.1.1 at RCPT, b@
// never attempted after the data was refused.
func failedJob(queued time.Time) *stages.Job {
	j := testJob(queued)
	j.State.Failed = []stages.RcptResult{{Addr: "a@example.org", Status: stages.RcptFailed, Code: 550, Enhanced: "5.1.1", Text: "no such user"}}
	j.Outcome = stages.Outcome{Verdict: stages.Failed, Class: stages.ClassPermanent, Attempted: true,
		Err: &stages.Error{Step: "data", Code: 554, Enhanced: "5.6.0", Text: "message refused"}}
	return j
}

func TestFailureNoticeQueuedThroughTheSameRoute(t *testing.T) {
	n, ids := newNotifier(t, func(n *notify.Notifier) { n.Failure = true })
	j := failedJob(time.Now().Add(-time.Hour))
	file(n, stages.Filed{Job: j, Verdict: stages.Failed, Path: "/undeliverable/x.eml"})
	p, msg := theNotice(t, n, ids)
	if !slices.Equal(p.To, []string{"app@example.com"}) {
		t.Errorf("notice goes to %v, want the original sender", p.To)
	}
	if p.Host != "smtp.example.net" || p.Port != 587 || p.Username != "app" || p.Password.Reveal() != testPassword {
		t.Errorf("notice's route %v, want the failed message's", p)
	}
	if bytes.Contains(msg, []byte(testPassword)) {
		t.Error("the password is in the notice's text")
	}
	d := parseDSNWith(t, msg, 2)
	wantFields(t, d.perRcpt[0],
		"Final-Recipient", "rfc822; a@example.org",
		"Status", "5.1.1",
		"Diagnostic-Code", "smtp; 550 5.1.1 no such user",
		"Remote-MTA", "dns; smtp.example.net",
	)
	wantFields(t, d.perRcpt[1],
		"Final-Recipient", "rfc822; b@example.org",
		"Status", "5.6.0",
		"Diagnostic-Code", "smtp; 554 5.6.0 message refused",
	)
	if d.original == nil || d.original.Get("Message-Id") != "<inv-1@example.com>" {
		t.Errorf("original headers %v, want the message's", d.original)
	}
}

func TestFailureNoticeOfARelayProfileNamesTheProfile(t *testing.T) {
	n, ids := newNotifier(t, func(n *notify.Notifier) { n.Failure = true })
	j := failedJob(time.Now())
	j.Params.Host, j.Params.Port, j.Params.Username, j.Params.Password = "", 0, "", j.Params.OAuth2Token
	j.Params.Relay = "office"
	file(n, stages.Filed{Job: j, Verdict: stages.Failed})
	if p, _ := theNotice(t, n, ids); p.Relay != "office" || p.Host != "" || !p.Password.IsZero() {
		t.Errorf("notice's route %v, want relay profile office alone", p)
	}
}

func TestNoNoticeForANotice(t *testing.T) {
	n, _ := newNotifier(t, func(n *notify.Notifier) { n.Failure, n.Delay = true, time.Minute })
	j := failedJob(time.Now().Add(-time.Hour))
	j.Sender, j.Params.From = "", ""
	file(n, stages.Filed{Job: j, Verdict: stages.Failed})
	d := testJob(time.Now().Add(-time.Hour))
	d.Sender, d.Params.From = "", ""
	d.Outcome = stages.Outcome{Verdict: stages.Deferred, Err: &stages.Error{Temporary: true, Step: "rcpt", Code: 450, Text: "later"}}
	file(n, stages.Filed{Job: d, Verdict: stages.Deferred})
	if files := queued(t, n.QueueDir); len(files) != 0 {
		t.Errorf("a notice about a null-sender message: %v", files)
	}
}

func TestNoNoticeForInvalidOrWhenOff(t *testing.T) {
	n, _ := newNotifier(t, func(n *notify.Notifier) { n.Failure = true })
	j := failedJob(time.Now())
	j.Outcome.Class = stages.ClassInvalid
	file(n, stages.Filed{Job: j, Verdict: stages.Failed})
	off, _ := newNotifier(t, nil)
	file(off, stages.Filed{Job: failedJob(time.Now()), Verdict: stages.Failed})
	if files := append(queued(t, n.QueueDir), queued(t, off.QueueDir)...); len(files) != 0 {
		t.Errorf("notices queued: %v", files)
	}
}

func TestDelayNoticeOnceAfterTheDelay(t *testing.T) {
	start := time.Now()
	clock := &fakeClock{now: start}
	n, ids := newNotifier(t, func(n *notify.Notifier) { n.Delay, n.Clock = 4*time.Hour, clock })
	j := testJob(start)
	j.State.Done = []string{"a@example.org"}
	j.Outcome = stages.Outcome{Verdict: stages.Deferred, Attempted: true,
		Rcpts: []stages.RcptResult{{Addr: "b@example.org", Status: stages.RcptDeferred, Code: 451, Enhanced: "4.2.0", Text: "mailbox busy"}},
		Err:   &stages.Error{Temporary: true, Step: "rcpt", Code: 451, Enhanced: "4.2.0", Text: "mailbox busy"}}
	deferAt := func(d time.Duration) {
		clock.now = start.Add(d)
		file(n, stages.Filed{Job: j, Verdict: stages.Deferred})
	}
	deferAt(time.Hour)
	if files := queued(t, n.QueueDir); len(files) != 0 {
		t.Fatalf("a delay notice before notify.delay: %v", files)
	}
	deferAt(4*time.Hour + time.Minute)
	_, msg := theNotice(t, n, ids)
	d := parseDSNWith(t, msg, 1)
	wantFields(t, d.perRcpt[0],
		"Final-Recipient", "rfc822; b@example.org",
		"Action", "delayed",
		"Status", "4.2.0",
	)
	mark := filepath.Join(n.QueueDir, notify.DelayedDir, j.ID)
	if _, err := os.Stat(mark); err != nil {
		t.Fatalf("no durable mark of the delay notice: %v", err)
	}

	// A second deferral, and a restart (a new Notifier on the same
	// folders): no second notice.
	deferAt(6 * time.Hour)
	again := newNotifierOn(t, n)
	file(again, stages.Filed{Job: j, Verdict: stages.Deferred})
	if files := queued(t, n.QueueDir); len(files) != 1 {
		t.Fatalf("queued %v, want still the one delay notice", files)
	}
	j.Outcome = stages.Outcome{Verdict: stages.Sent}
	file(again, stages.Filed{Job: j, Verdict: stages.Sent})
	if _, err := os.Stat(mark); !os.IsNotExist(err) {
		t.Errorf("the mark outlived the message: %v", err)
	}
}

// newNotifierOn returns a new Notifier on the folders of n, as after a
// restart.
func newNotifierOn(t *testing.T, n *notify.Notifier) *notify.Notifier {
	t.Helper()
	m := &notify.Notifier{
		QueueDir: n.QueueDir, Queue: n.Queue, ReportingMTA: n.ReportingMTA, Failure: n.Failure, Delay: n.Delay,
		Webhooks: n.Webhooks, Clock: n.Clock, Log: n.Log, MinBackoff: n.MinBackoff, MaxBackoff: n.MaxBackoff,
	}
	if err := m.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

func TestFailureNoticeOfAnExpiredPickupFile(t *testing.T) {
	n, ids := newNotifier(t, func(n *notify.Notifier) { n.Failure, n.DefaultRelay = true, "main" })
	j := testJob(time.Now().Add(-120 * time.Hour))
	j.Kind = stages.KindPickup
	j.Params = &queuefile.Params{From: "app@example.com", To: []string{"a@example.org"}}
	j.Outcome = stages.Outcome{Verdict: stages.Failed, Class: stages.ClassExpired,
		Err: &stages.Error{Temporary: true, Step: "connect", Text: "connection refused; given up: queued 120h0m0s ago (retry.max_age)"}}
	file(n, stages.Filed{Job: j, Verdict: stages.Failed})
	p, msg := theNotice(t, n, ids)
	if p.Relay != "main" || p.Host != "" || !p.Password.IsZero() {
		t.Errorf("notice's route %v, want default_relay main", p)
	}
	d := parseDSNWith(t, msg, 1)
	wantFields(t, d.perRcpt[0],
		"Status", "4.4.7",
		"Action", "failed",
		"Diagnostic-Code", "X-SmtpQ; connect: connection refused; given up: queued 120h0m0s ago (retry.max_age)",
	)
}
