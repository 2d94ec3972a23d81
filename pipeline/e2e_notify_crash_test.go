package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/notify"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
)

// crashChildEnv, set in the environment of a copy of this test binary,
// makes a test below play the service that is killed: its value is the
// configuration file to run, crashPointEnv's the crash point to die at.
const (
	crashChildEnv = "SMTPQ_NOTIFY_CRASH_CHILD"
	crashPointEnv = "SMTPQ_NOTIFY_CRASH_POINT"
)

// killedAt runs a copy of this test binary as the service on env's
// configuration, to be killed with SIGKILL at crash point point, and
// returns its output.
func killedAt(t *testing.T, env *pipelinetest.Env, test, point string) []byte {
	t.Helper()
	cfgPath := filepath.Join(env.Dir, "smtpq.yaml")
	if err := os.WriteFile(cfgPath, crashChildConfig(env.Config), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pipelinetest.WaitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+test+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+cfgPath, crashPointEnv+"="+point)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Exited() || ctx.Err() != nil {
		t.Fatalf("the service was not killed (%v):\n%s", err, out)
	}
	return out
}

// TestNotifyEventSurvivesSIGKILL kills a service (a copy of this test
// binary) with SIGKILL right after it recorded a webhook event and before
// it delivered it; the next start delivers it.
func TestNotifyEventSurvivesSIGKILL(t *testing.T) {
	if cfgPath := os.Getenv(crashChildEnv); cfgPath != "" {
		runCrashChild(t, cfgPath, os.Getenv(crashPointEnv))
		return
	}
	srv := startServer(t, "127.0.0.1")
	r, env, name := notifiedMessage(t, srv, "user@example.org")

	// The child sends the message, files it in Sent, records the event
	// and is killed before any delivery.
	out := killedAt(t, env, "TestNotifyEventSurvivesSIGKILL", notify.CrashRecorded)
	if _, err := os.Stat(filepath.Join(env.Config.SentDir, name)); err != nil {
		t.Fatalf("the message is not in Sent after the crash: %v\n%s", err, out)
	}
	if r.count() != 0 {
		t.Fatalf("the event was delivered before the crash point: the test proves nothing")
	}
	pending, err := os.ReadDir(filepath.Join(env.Config.QueueDir, notify.EventsDir, notify.HookKey(env.Config.Notify.Webhooks[0].URL)))
	if err != nil || len(pending) != 1 {
		t.Fatalf("outbox after the crash: %v (%v), want the one event", pending, err)
	}

	// The next start delivers it, and sends nothing again.
	env.Start(pipeline.Options{})
	e := r.waitEvent(name, notify.EventSent)
	if e.MessageID != "m1@example.com" || e.Path == "" {
		t.Errorf("event %+v", e)
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("the server got %d messages, want 1", n)
	}
}

// TestNotifyFilingSurvivesSIGKILL kills a service right after it filed a
// refused message in Undeliverable and before its event was recorded or
// its failure notice queued: the next start does both, with the event id
// chosen before the crash, and only once.
func TestNotifyFilingSurvivesSIGKILL(t *testing.T) {
	if cfgPath := os.Getenv(crashChildEnv); cfgPath != "" {
		runCrashChild(t, cfgPath, os.Getenv(crashPointEnv))
		return
	}
	srv := startServer(t, "127.0.0.1", refuseRcpt("gone@example.org"))
	r, env, name := notifiedMessage(t, srv, "gone@example.org")

	out := killedAt(t, env, "TestNotifyFilingSurvivesSIGKILL", notify.CrashFiled)
	if _, err := os.Stat(filepath.Join(env.Config.UndeliverableDir, name)); err != nil {
		t.Fatalf("the message is not in Undeliverable after the crash: %v\n%s", err, out)
	}
	outbox := filepath.Join(env.Config.QueueDir, notify.EventsDir, notify.HookKey(env.Config.Notify.Webhooks[0].URL))
	if pending, _ := os.ReadDir(outbox); len(pending) != 0 || r.count() != 0 || len(srv.Messages()) != 0 {
		t.Fatalf("told before the crash point (outbox %v, %d POSTs, %d messages at the server): the test proves nothing",
			pending, r.count(), len(srv.Messages()))
	}
	intents, _ := filepath.Glob(filepath.Join(env.Config.QueueDir, notify.FilingDir, "*", "*.json"))
	if len(intents) != 1 {
		t.Fatalf("intents after the crash: %v, want the filing's", intents)
	}
	var it struct {
		Event notify.Event `json:"event"`
	}
	if b, err := os.ReadFile(intents[0]); err != nil || json.Unmarshal(b, &it) != nil {
		t.Fatalf("reading the intent: %v", err)
	}

	// The next start tells the filing: the event, with the id chosen
	// before the crash, and the failure notice, sent to the sender.
	env.Start(pipeline.Options{})
	e := r.waitEvent(name, notify.EventFailed)
	if e.ID != it.Event.ID || e.ID == "" {
		t.Errorf("event id %q, want the intent's %q", e.ID, it.Event.ID)
	}
	notice := waitNotice(t, srv)
	if len(notice.To) != 1 || notice.To[0] != "app@example.com" {
		t.Errorf("notice to %v, want the sender", notice.To)
	}
	env.Stop()
	if evs := r.eventsOf(name); len(evs) != 1 {
		t.Errorf("events about the message: %+v, want the one", evs)
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("the server got %d messages, want the one notice", n)
	}
}

// notifiedMessage queues a message from app@example.com to srv for rcpt,
// with a webhook and failure notices configured.
func notifiedMessage(t *testing.T, srv *smtptest.Server, rcpt string) (*hookReceiver, *pipelinetest.Env, string) {
	t.Helper()
	r := startHookReceiver(t, 0)
	env := pipelinetest.New(t, withWebhook(r), withDSN)
	p := srv.Params(rcpt)
	p.From = "app@example.com"
	return r, env, env.Enqueue(testMessage(1), p)
}

// waitNotice waits for the server to get a message with the null sender.
func waitNotice(t *testing.T, srv *smtptest.Server) smtptest.Message {
	t.Helper()
	deadline := time.Now().Add(pipelinetest.WaitTimeout)
	for time.Now().Before(deadline) {
		if got := nullSenderMessages(srv); len(got) > 0 {
			return got[0]
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no notice reached the server (it got %d messages)", len(srv.Messages()))
	return smtptest.Message{}
}

// runCrashChild runs the service on cfgPath with a crash hook that kills
// the process with SIGKILL at crash point point. It never returns
// normally: reaching the end is a failure.
func runCrashChild(t *testing.T, cfgPath, point string) {
	cfg, err := pipeline.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pipeline.New(cfg, pipeline.Options{Logger: zap.NewNop(), Crash: func(at string) {
		if at == point {
			if self, err := os.FindProcess(os.Getpid()); err == nil {
				self.Kill()
			}
			select {} // the kill is asynchronous: go no further
		}
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), pipelinetest.WaitTimeout)
	defer cancel()
	_ = p.Run(ctx)
	t.Fatal("the crash point was never reached")
}

// crashChildConfig writes c as a configuration file for the child.
func crashChildConfig(c *pipeline.Config) []byte {
	hook := c.Notify.Webhooks[0]
	return []byte("queue_dir: " + strconv.Quote(c.QueueDir) + "\n" +
		"sent_dir: " + strconv.Quote(c.SentDir) + "\n" +
		"undeliverable_dir: " + strconv.Quote(c.UndeliverableDir) + "\n" +
		"identity_file: " + strconv.Quote(c.IdentityFile[0]) + "\n" +
		"recipient_file: " + strconv.Quote(c.RecipientFile) + "\n" +
		"helo: pipelinetest.local\n" +
		"scan_interval: 200ms\n" +
		"retry: {min_backoff: 0s, max_backoff: 0s, max_attempts: 3}\n" +
		"notify:\n  dsn: {failure: true}\n  webhooks:\n" +
		"    - url: " + strconv.Quote(hook.URL) + "\n      secret_file: " + strconv.Quote(hook.SecretFile) + "\n")
}
