package main

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
	"github.com/smtpq/smtpq/stages"
)

// With a nats section, enqueue and sendmail publish to the stream and
// enqueue prints the message's id; nothing stays in queue_dir.
func TestEnqueuePublishesToTheStream(t *testing.T) {
	e, srv := natsEnv(t)

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

	_, js := natstest.Connect(t, srv.URL())
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

// With a nats section, queue status, list and stats show the cluster's
// messages from any node: queued once published, then where the node that
// sent it filed it.
func TestQueueCommandsSeeTheCluster(t *testing.T) {
	e, srv := natsEnv(t)
	id := enqueueID(t, e)

	if code, out, stderr := e.smtpq("", "queue", "status", id); code != 0 || !strings.Contains(out, "queued") {
		t.Fatalf("status of a published message: exit %d, %q, %s", code, out, stderr)
	}
	if code, out, _ := e.smtpq("", "queue", "list", "--json"); code != 0 || !strings.Contains(out, `"id":"`+id+`"`) || !strings.Contains(out, `"state":"queued"`) {
		t.Fatalf("list: exit %d, %q", code, out)
	}
	if code, out, _ := e.smtpq("", "queue", "stats", "--json"); code != 0 || !strings.Contains(out, `"queued":{"count":1`) {
		t.Fatalf("stats: exit %d, %q", code, out)
	}

	// A node takes it and files it as sent.
	n1, _ := streamNode(t, srv)
	path := sendOn(t, n1, id)
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, out, stderr := e.smtpq("", "queue", "status", id)
		if code == 0 && strings.Contains(out, "sent: "+path) && strings.Contains(out, "on node n1") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status after the node sent it: exit %d, %q, %s", code, out, stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A node's Sent copy is both in its sent_dir and in its record: queue list
// shows it once, with its id, and stats counts it once (each was there
// twice, seen against a real nats-server).
func TestQueueListShowsAFiledCopyOnce(t *testing.T) {
	e, srv := natsEnv(t)
	id := enqueueID(t, e)
	n, _ := streamNodeIn(t, srv, e.dir) // this node's folders
	sendOn(t, n, id)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		code, out, stderr := e.smtpq("", "queue", "status", id)
		if code == 0 && strings.Contains(out, "sent: ") {
			break // its record says sent
		}
		if time.Now().After(deadline) {
			t.Fatalf("status after the node sent it: exit %d, %q, %s", code, out, stderr)
		}
	}
	code, out, _ := e.smtpq("", "queue", "list", "--state", "sent", "--json")
	if lines := strings.Split(strings.TrimSpace(out), "\n"); code != 0 || len(lines) != 1 || !strings.Contains(out, `"id":"`+id+`"`) {
		t.Errorf("list of Sent: exit %d, want its one copy with id %s:\n%s", code, id, out)
	}
	if code, out, _ := e.smtpq("", "queue", "stats", "--json"); code != 0 || !strings.Contains(out, `"sent":{"count":1,`) {
		t.Errorf("stats: exit %d, want one sent: %s", code, out)
	}
}

// queue hold and release by id act on the cluster's message.
func TestQueueHoldReleaseOnTheCluster(t *testing.T) {
	e, srv := natsEnv(t)
	_, out, _ := e.smtpq(testMsg, "enqueue", "-")
	id := strings.TrimSpace(out)

	n1, _ := streamNode(t, srv)
	if code, out, stderr := e.smtpq("", "queue", "hold", id); code != 0 || !strings.Contains(out, "asked the nodes to hold "+id) {
		t.Fatalf("hold: exit %d, %q, %s", code, out, stderr)
	}
	time.Sleep(200 * time.Millisecond) // the node's watch
	var got *stages.Job
	n1.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { got = j; return false })
	if got != nil {
		t.Fatalf("a held message was handed on: %s", got.ID)
	}
	if code, out, _ := e.smtpq("", "queue", "status", id); code != 0 || !strings.Contains(out, "held") {
		t.Fatalf("status after hold: exit %d, %q", code, out)
	}
	if code, out, stderr := e.smtpq("", "queue", "release", id); code != 0 || !strings.Contains(out, "released") {
		t.Fatalf("release: exit %d, %q, %s", code, out, stderr)
	}
	if code, _, stderr := e.smtpq("", "queue", "release", id); code == 0 || !strings.Contains(stderr, "not held") {
		t.Errorf("a second release: exit %d, %s", code, stderr)
	}
	n1.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { got = j; return false })
	if got == nil || got.ID != id {
		t.Fatalf("after the release the node got %v, want %s", got, id)
	}
}

// queue retry of a deferred message of the cluster sends it now.
func TestQueueRetryDeferredOnTheCluster(t *testing.T) {
	e, srv := natsEnv(t)
	_, out, _ := e.smtpq(testMsg, "enqueue", "-")
	id := strings.TrimSpace(out)
	n1, _ := streamNode(t, srv)
	var got *stages.Job
	n1.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { got = j; return false })
	if got == nil {
		t.Fatal("the node got nothing")
	}
	if err := n1.Defer(got, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, out, stderr := e.smtpq("", "queue", "retry", id)
		if code == 0 && strings.Contains(out, "sent again now") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retry of a deferred message: exit %d, %q, %s", code, out, stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	got = nil
	n1.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { got = j; return false })
	if got == nil || got.ID != id {
		t.Fatalf("after the retry the node got %v, want %s at once", got, id)
	}
}

// queue hold --all and release --all act on every message of the cluster.
func TestQueueHoldAllOnTheCluster(t *testing.T) {
	e, srv := natsEnv(t)
	for range 2 {
		if code, _, stderr := e.smtpq(testMsg, "enqueue", "-"); code != 0 {
			t.Fatal(stderr)
		}
	}
	n1, _ := streamNode(t, srv)
	if code, out, stderr := e.smtpq("", "queue", "hold", "--all"); code != 0 || !strings.Contains(out, "cluster: asked the nodes to hold 2 messages") {
		t.Fatalf("hold --all: exit %d, %q, %s", code, out, stderr)
	}
	time.Sleep(200 * time.Millisecond)
	n := 0
	n1.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { n++; return true })
	if n != 0 {
		t.Fatalf("%d held messages were handed on", n)
	}
	var out string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		_, out, _ = e.smtpq("", "queue", "release", "--all")
		if strings.Contains(out, "cluster: released 2 messages") {
			break
		}
	}
	if !strings.Contains(out, "cluster: released 2 messages") {
		t.Fatalf("release --all: %q", out)
	}
	for deadline := time.Now().Add(5 * time.Second); n < 2 && time.Now().Before(deadline); {
		n1.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { n++; return n < 2 })
	}
	if n != 2 {
		t.Fatalf("after release --all the node got %d messages, want 2", n)
	}
}

// natsEnv is a testEnv whose configuration has a nats section for a real
// NATS server started for the test.
func natsEnv(t *testing.T) (*testEnv, *natstest.Server) {
	t.Helper()
	srv := natstest.NewServer(t)
	e := newEnv(t, true)
	f, err := os.OpenFile(e.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString("nats: {urls: " + srv.URL() + "}\n"); err != nil {
		t.Fatal(err)
	}
	return e, srv
}

// streamNode opens a node's spool named n1 on the stream of srv, closed
// when the test ends, with its JetStream context.
func streamNode(t *testing.T, srv *natstest.Server) (*stream.Spool, jetstream.JetStream) {
	t.Helper()
	return streamNodeIn(t, srv, t.TempDir())
}

// streamNodeIn is streamNode with its sent and undeliverable folders in
// dir.
func streamNodeIn(t *testing.T, srv *natstest.Server, dir string) (*stream.Spool, jetstream.JetStream) {
	t.Helper()
	_, js := natstest.Connect(t, srv.URL())
	n, err := stream.Open(t.Context(), js, stream.Config{Node: "n1", Sent: dir + "/sent", Undeliverable: dir + "/undeliverable", Poll: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n, js
}

// enqueueID enqueues testMsg and returns the id enqueue printed.
func enqueueID(t *testing.T, e *testEnv) string {
	t.Helper()
	code, out, stderr := e.smtpq(testMsg, "enqueue", "-")
	if code != 0 {
		t.Fatalf("enqueue: exit %d: %s", code, stderr)
	}
	return strings.TrimSpace(out)
}

// sendOn has node n claim the message id and file it as sent; it returns
// the Sent copy's path.
func sendOn(t *testing.T, n *stream.Spool, id string) string {
	t.Helper()
	var job *stages.Job
	n.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { job = j; return false })
	if job == nil || job.ID != id {
		t.Fatalf("the node claimed %v, want %s", job, id)
	}
	path, err := n.FileSent(job, false)
	if err != nil {
		t.Fatal(err)
	}
	return path
}
