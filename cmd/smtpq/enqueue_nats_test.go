package main

import (
	"os"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
)

// With a nats section, enqueue and sendmail publish to the stream and
// enqueue prints the message's id; nothing stays in queue_dir.
func TestEnqueuePublishesToTheStream(t *testing.T) {
	srv := natstest.NewServer(t)
	e := newEnv(t, true)
	f, err := os.OpenFile(e.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("nats: {urls: " + srv.URL() + "}\n")
	f.Close()

	code, out, stderr := e.smtpq(testMsg, "enqueue", "-")
	if code != 0 {
		t.Fatalf("enqueue: exit %d: %s", code, stderr)
	}
	id := strings.TrimSpace(out)
	if !spool.IsID(id) {
		t.Fatalf("enqueue printed %q, want the message's id", out)
	}
	if code, _, stderr := e.smtpq(testMsg, "sendmail", "-t", "-oi"); code != 0 {
		t.Fatalf("sendmail: exit %d: %s", code, stderr)
	}
	if left := e.queued(); len(left) != 0 {
		t.Errorf("left in queue_dir: %v", left)
	}

	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	str, err := js.Stream(t.Context(), stream.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(t.Context())
	if err != nil || info.State.Msgs != 2 {
		t.Fatalf("the stream holds %v messages (%v), want 2", info.State.Msgs, err)
	}
	m, err := str.GetMsg(t.Context(), info.State.FirstSeq)
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(stream.HeaderID) != id {
		t.Errorf("first message's id %q, enqueue printed %q", m.Header.Get(stream.HeaderID), id)
	}
	if !strings.HasPrefix(string(m.Data), "X-SmtpQ-Sealed:") || !queuefile.IsQueueName(m.Header.Get(stream.HeaderName)) {
		t.Errorf("published %q as %q: not a sealed queue file", m.Data[:min(40, len(m.Data))], m.Header.Get(stream.HeaderName))
	}
	noClearText(t, m.Data, relayPassword)
}
