package pipeline_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/notify"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
)

// crashChildEnv, set in the environment of a copy of this test binary,
// makes TestNotifyEventSurvivesSIGKILL play the service that is killed:
// its value is the configuration file to run.
const crashChildEnv = "SMTPQ_NOTIFY_CRASH_CHILD"

// TestNotifyEventSurvivesSIGKILL kills a service (a copy of this test
// binary) with SIGKILL right after it recorded a webhook event and before
// it delivered it; the next start delivers it.
func TestNotifyEventSurvivesSIGKILL(t *testing.T) {
	if cfgPath := os.Getenv(crashChildEnv); cfgPath != "" {
		runCrashChild(t, cfgPath)
		return
	}
	srv := startServer(t, "127.0.0.1")
	r := startHookReceiver(t, 0)
	env := pipelinetest.New(t, withWebhook(r), func(c *pipeline.Config) { c.Notify.DSN.Failure = true })
	cfgPath := filepath.Join(env.Dir, "smtpq.yaml")
	if err := os.WriteFile(cfgPath, crashChildConfig(env.Config), 0o600); err != nil {
		t.Fatal(err)
	}
	p := srv.Params("user@example.org")
	p.From = "app@example.com"
	name := env.Enqueue(testMessage(1), p)

	// The child sends the message, files it in Sent, records the event
	// and is killed before any delivery.
	ctx, cancel := context.WithTimeout(context.Background(), pipelinetest.WaitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestNotifyEventSurvivesSIGKILL$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+cfgPath)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Exited() || ctx.Err() != nil {
		t.Fatalf("the service was not killed (%v):\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(env.Config.SentDir, name)); err != nil {
		t.Fatalf("the message is not in Sent after the crash: %v\n%s", err, out)
	}
	r.mu.Lock()
	early := len(r.events)
	r.mu.Unlock()
	if early != 0 {
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

// runCrashChild runs the service on cfgPath with a crash hook that kills
// the process with SIGKILL at notify.CrashRecorded. It never returns
// normally: reaching the end is a failure.
func runCrashChild(t *testing.T, cfgPath string) {
	cfg, err := pipeline.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pipeline.New(cfg, pipeline.Options{Logger: zap.NewNop(), Crash: func(point string) {
		if point == notify.CrashRecorded {
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
