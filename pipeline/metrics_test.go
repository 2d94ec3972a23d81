package pipeline_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestMetricsAndHealth(t *testing.T) {
	srv := smtptest.NewServer(t)
	env := pipelinetest.New(t, func(c *pipeline.Config) { c.Metrics.Listen = "127.0.0.1:0" })
	env.Start(pipeline.Options{})
	for i := range 3 {
		env.Enqueue(testMessage(i), srv.Params("user@example.org"))
	}
	env.WaitFinal(3)
	base := "http://" + env.Pipeline.MetricsAddr().String()

	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: %d", code)
	}
	for _, want := range []string{
		fmt.Sprintf(`smtpq_messages_total{class="",host="%s",result="sent"} 3`, srv.Host()),
		`smtpq_queue_messages{state="queued"} 0`,
		fmt.Sprintf(`smtpq_smtp_sessions{host="%s"}`, srv.Host()),
		"smtpq_dispatch_wait_seconds_count",
		"smtpq_delivery_attempt_duration_seconds_count",
		"smtpq_oldest_message_age_seconds",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	if code, body := get(t, base+"/healthz"); code != http.StatusOK || !strings.HasPrefix(body, "ok") {
		t.Fatalf("/healthz = %d %q, want 200 ok", code, body)
	}
	// Make the Sent folder unwritable in a way root cannot ignore: it is
	// moved aside and a file takes its name.
	sent := env.Config.SentDir
	if err := os.Rename(sent, sent+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sent, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	code, body = get(t, base+"/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "spool not writable") {
		t.Fatalf("/healthz with an unwritable sent_dir = %d %q, want 503 naming the spool", code, body)
	}
	// A message now cannot be filed in Sent: it must stay safe and be
	// retried, not lost.
	name := env.Enqueue(testMessage(9), srv.Params("user@example.org"))
	env.WaitFor("a failed filing of "+name, func(fs []stages.Filed) bool {
		for _, f := range fs {
			if f.Job.Name == name && f.Err != nil {
				return true
			}
		}
		return false
	})
	code, body = get(t, base+"/healthz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "filing failed") {
		t.Fatalf("/healthz after a failed filing = %d %q", code, body)
	}
	if err := os.Remove(sent); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(sent+".away", sent); err != nil {
		t.Fatal(err)
	}
	// The server already accepted it: the retry files it as sent without
	// sending it again.
	if f := env.Wait(name); f.Verdict != stages.Sent {
		t.Fatalf("%s: %s", name, f.Verdict)
	}
	if n := len(srv.Messages()); n != 4 {
		t.Errorf("server got %d messages, want 4 (no resend after the failed filing)", n)
	}
}

// A node whose cluster cannot be joined gives its metrics port back: Run
// returns with the listener closed (it was left open, nothing serving it).
func TestMetricsPortFreedWhenTheClusterFails(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dead, err := net.Listen("tcp", "127.0.0.1:0") // a port where no NATS server answers
	if err != nil {
		t.Fatal(err)
	}
	natsURL := "nats://" + dead.Addr().String()
	dead.Close()
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		c.Metrics.Listen = addr
		c.NATS = &pipeline.NATSConfig{URLs: []string{natsURL}, Node: "n1"}
	})
	p, err := pipeline.New(env.Config, pipeline.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	p.Run(ctx) // fails to connect, or is stopped while it tries
	again, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("the metrics port is still taken after Run returned: %v", err)
	}
	again.Close()
}
