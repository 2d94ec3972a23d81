package stream_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
	"github.com/smtpq/smtpq/stages"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// connect returns a JetStream context on the servers at urls, closed when
// the test ends.
func connect(t *testing.T, urls ...string) jetstream.JetStream {
	t.Helper()
	_, js := natstest.Connect(t, strings.Join(urls, ","))
	return js
}

// node opens a node's spool on the stream with its own folders.
func node(t *testing.T, js jetstream.JetStream, cfg stream.Config) *stream.Spool {
	t.Helper()
	dir := t.TempDir()
	if cfg.Sent == "" {
		cfg.Sent, cfg.Undeliverable = filepath.Join(dir, "sent"), filepath.Join(dir, "undeliverable")
	}
	if cfg.Poll == 0 {
		cfg.Poll = 100 * time.Millisecond
	}
	s, err := stream.Open(t.Context(), js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// fetch claims up to n jobs, waiting at most a few seconds for them.
func fetch(t *testing.T, s *stream.Spool, n int) []*stages.Job {
	t.Helper()
	var jobs []*stages.Job
	deadline := time.Now().Add(5 * time.Second)
	for len(jobs) < n && time.Now().Before(deadline) {
		_, err := s.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool {
			jobs = append(jobs, j)
			return len(jobs) != n
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return jobs
}

func publish(t *testing.T, js jetstream.JetStream, name, body string) string {
	t.Helper()
	id, err := stream.Publish(t.Context(), js, "", name, []byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func read(t *testing.T, job *stages.Job) string {
	t.Helper()
	r, err := job.Msg.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A published message is claimed with its id, name and bytes; filed as sent,
// its copy is in the node's Sent folder and the stream holds nothing more.
func TestPublishClaimFileSent(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{})
	body := "From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n"
	id := publish(t, js, "welcome.eml", body)
	jobs := fetch(t, s, 1)
	if len(jobs) != 1 {
		t.Fatalf("claimed %d jobs, want 1", len(jobs))
	}
	job := jobs[0]
	if job.ID != id || job.Name != "welcome.eml" || read(t, job) != body {
		t.Fatalf("claimed id %q name %q, want %q welcome.eml and the published bytes", job.ID, job.Name, id)
	}
	if fi, err := job.Msg.Stat(); err != nil || fi.Size() != int64(len(body)) || !fi.Mode().IsRegular() {
		t.Fatalf("stat: %v, %v", fi, err)
	}
	path, err := s.FileSent(job, false)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != body || filepath.Base(path) != "welcome.eml" {
		t.Fatalf("Sent copy %s: %q, %v", path, b, err)
	}
	if !job.Msg.Released() {
		t.Error("filed, but the handle says the node still holds it")
	}
	waitEmpty(t, js)
}

// waitEmpty waits until the stream's queue holds no message.
func waitEmpty(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := queued(t, js)
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stream still holds %d messages to send", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A producer's name that is not one plain file name is not used as one: the
// copy is filed under the message's id.
func TestOddNamesAreFiledByID(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{})
	for _, name := range []string{"../../etc/passwd", "a/b.eml", ".hidden.eml", "", strings.Repeat("x", 300)} {
		id := publish(t, js, name, "Subject: x\r\n\r\nbody\r\n")
		jobs := fetch(t, s, 1)
		if len(jobs) != 1 {
			t.Fatalf("%q: claimed %d", name, len(jobs))
		}
		path, err := s.FileSent(jobs[0], false)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(path) == "" || filepath.Base(path) != id+".eml" {
			t.Errorf("%q filed as %s, want %s.eml in the Sent folder", name, path, id)
		}
	}
}

// A deferred message comes back after its delay, with its state (attempts,
// recipients done); a returned one comes back at once.
func TestDeferAndReturn(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{})
	publish(t, js, "later.eml", "Subject: x\r\n\r\nbody\r\n")
	job := fetch(t, s, 1)[0]
	job.State.Attempts = 2
	job.State.AddDone("a@example.org")
	start := time.Now()
	if err := s.Defer(job, start.Add(700*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	again := fetch(t, s, 1)
	if len(again) != 1 {
		t.Fatal("a deferred message did not come back")
	}
	if time.Since(start) < 600*time.Millisecond {
		t.Errorf("came back after %v, before its delay", time.Since(start))
	}
	if st := again[0].State; st.Attempts != 2 || !slices.Equal(st.Done, []string{"a@example.org"}) {
		t.Errorf("state after the retry: %+v", st)
	}
	if err := s.Return(again[0]); err != nil {
		t.Fatal(err)
	}
	if back := fetch(t, s, 1); len(back) != 1 || back[0].ID != job.ID {
		t.Fatal("a returned message did not come back")
	} else if _, err := s.FileSent(back[0], true); err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, js)
}

// A node that dies (here: closes without filing) after the server accepted
// a message leaves the record of that acceptance: the node that gets it
// next sees it was accepted, so it files it rather than sends it again.
func TestAcceptedSurvivesTheNode(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	a := node(t, js, stream.Config{})
	b := node(t, js, stream.Config{})
	publish(t, js, "once.eml", "Subject: x\r\n\r\nbody\r\n")
	job := fetch(t, a, 1)[0]
	job.Outcome = stages.Outcome{Verdict: stages.Sent, Rcpts: []stages.RcptResult{{Addr: "b@example.org", Status: stages.RcptDelivered, Code: 250}}}
	if err := a.RecordAccepted(job); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	next := fetch(t, b, 1)
	if len(next) != 1 || !next[0].State.Accepted {
		t.Fatalf("after the node died: %d jobs, accepted %v; want the record of the 250", len(next), len(next) == 1 && next[0].State.Accepted)
	}
	if _, err := b.FileSent(next[0], false); err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, js)
}

// Two nodes share the stream: each message is claimed by one of them once.
// A node that holds a message longer than the ack wait keeps it, by its
// heartbeats.
func TestTwoNodesShareTheWork(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	cfg := stream.Config{AckWait: 600 * time.Millisecond}
	a, b := node(t, js, cfg), node(t, js, cfg)
	const n = 40
	for i := range n {
		publish(t, js, fmt.Sprintf("m%02d.eml", i), "Subject: x\r\n\r\nbody\r\n")
	}
	ja := fetch(t, a, n/2)
	jb := fetch(t, b, n-len(ja))
	if len(ja)+len(jb) != n {
		t.Fatalf("claimed %d + %d, want %d", len(ja), len(jb), n)
	}
	time.Sleep(2 * time.Second) // over three ack waits
	if extra := fetch(t, b, 1); len(extra) != 0 {
		t.Fatalf("%s was delivered again while node a held it", extra[0].Name)
	}
	seen := map[string]bool{}
	for _, j := range append(ja, jb...) {
		if seen[j.ID] {
			t.Fatalf("%s claimed twice", j.Name)
		}
		seen[j.ID] = true
	}
	for _, j := range ja {
		if _, err := a.FileSent(j, true); err != nil {
			t.Fatal(err)
		}
	}
	for _, j := range jb {
		if _, err := b.FileSent(j, true); err != nil {
			t.Fatal(err)
		}
	}
	waitEmpty(t, js)
}

// A failed message is filed with its XML log in the node's Undeliverable
// folder, as published (sealed header and all).
func TestFileUndeliverable(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{})
	body := "X-SmtpQ-Sealed: v1 junk\r\nSubject: x\r\n\r\nbody\r\n"
	publish(t, js, "bad.eml", body)
	job := fetch(t, s, 1)[0]
	path, err := s.FileUndeliverable(job, []byte("<log/>"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != body {
		t.Errorf("Undeliverable copy: %q", b)
	}
	if b, _ := os.ReadFile(strings.TrimSuffix(path, ".eml") + ".xml"); string(b) != "<log/>" {
		t.Errorf("XML log: %q", b)
	}
	waitEmpty(t, js)
}

// A held message is not delivered again; its copy waits on the held subject.
func TestHold(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{})
	id := publish(t, js, "held.eml", "Subject: x\r\n\r\nbody\r\n")
	job := fetch(t, s, 1)[0]
	if err := s.Hold(job); err != nil {
		t.Fatal(err)
	}
	if again := fetch(t, s, 1); len(again) != 0 {
		t.Fatal("a held message was delivered again")
	}
	str, err := js.Stream(t.Context(), stream.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := str.GetLastMsgForSubject(t.Context(), stream.DefaultStream+".held."+id)
	if err != nil || string(m.Data) != "Subject: x\r\n\r\nbody\r\n" {
		t.Fatalf("held copy: %v", err)
	}
}

// On an R3 stream, losing one of three NATS servers loses nothing: what was
// published before is claimed and filed after.
func TestClusterLosesANode(t *testing.T) {
	c := natstest.NewCluster(t, 3)
	js := connect(t, c.URLs()...)
	s := node(t, js, stream.Config{Replicas: 3})
	const n = 30
	for i := range n {
		publish(t, js, fmt.Sprintf("r%02d.eml", i), "Subject: x\r\n\r\nbody\r\n")
	}
	c.Stop(0)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	got := 0
	for got < n && ctx.Err() == nil {
		for _, j := range fetch(t, s, n-got) {
			if _, err := s.FileSent(j, true); err != nil {
				t.Logf("filing while the cluster elects: %v", err)
				s.Return(j)
				continue
			}
			got++
		}
	}
	if got != n {
		t.Fatalf("filed %d of %d after a NATS node was lost", got, n)
	}
}

// Every step of a message is recorded in the cluster, under its id, for the
// queue commands of any node: queued when published, active when claimed,
// then where it was filed and by which node.
func TestRecords(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{Node: "n1"})
	id := publish(t, js, "rec.eml", "Subject: x\r\n\r\nbody\r\n")
	want := func(state spool.Place) stream.Record {
		t.Helper()
		return waitRecord(t, js, id, state)
	}
	if r := want("queued"); r.Name != "rec.eml" {
		t.Errorf("queued record: %+v", r)
	}
	job := fetch(t, s, 1)[0]
	if r := want("active"); r.Node != "n1" {
		t.Errorf("active record: %+v", r)
	}
	job.State.Attempts, job.State.LastError = 1, "451 try later"
	due := time.Now().Add(200 * time.Millisecond)
	if err := s.Defer(job, due); err != nil {
		t.Fatal(err)
	}
	if r := want("deferred"); r.Attempts != 1 || r.LastError != "451 try later" || r.NextAttempt.IsZero() {
		t.Errorf("deferred record: %+v", r)
	}
	job = fetch(t, s, 1)[0]
	path, err := s.FileSent(job, false)
	if err != nil {
		t.Fatal(err)
	}
	if r := want("sent"); r.Path != path || r.Node != "n1" {
		t.Errorf("sent record: %+v, want path %s", r, path)
	}
	if rs, err := stream.Records(t.Context(), js, "", "rec.eml"); err != nil || len(rs) != 1 || rs[0].ID != id {
		t.Errorf("by name: %+v, %v", rs, err)
	}
	if rs, err := stream.Records(t.Context(), js, "", ""); err != nil || len(rs) != 1 {
		t.Errorf("all: %+v, %v", rs, err)
	}
}

// An operator's hold reaches the nodes: one that fetches the message holds
// it instead of handing it on, and tells OnHold of it; released, it comes
// back to be sent, with its state.
func TestHoldAskedAndRelease(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	told := make(chan string, 4)
	s := node(t, js, stream.Config{OnHold: func(id string) { told <- id }})
	held := publish(t, js, "held.eml", "Subject: held\r\n\r\nbody\r\n")
	other := publish(t, js, "other.eml", "Subject: other\r\n\r\nbody\r\n")
	if err := stream.RequestHold(t.Context(), js, "", held); err != nil {
		t.Fatal(err)
	}
	select {
	case id := <-told:
		if id != held {
			t.Fatalf("OnHold told of %s, want %s", id, held)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnHold was not told of the hold")
	}
	jobs := fetch(t, s, 2)
	if len(jobs) != 1 || jobs[0].ID != other {
		t.Fatalf("handed on %d jobs (%v), want only %s", len(jobs), jobs, other)
	}
	if err := stream.Release(t.Context(), js, "", other); err != stream.ErrNotHeld {
		t.Errorf("releasing a message not held: %v", err)
	}
	if _, err := s.FileSent(jobs[0], true); err != nil {
		t.Fatal(err)
	}
	if err := stream.Release(t.Context(), js, "", held); err != nil {
		t.Fatal(err)
	}
	back := fetch(t, s, 1)
	if len(back) != 1 || back[0].ID != held || back[0].Name != "held.eml" || read(t, back[0]) != "Subject: held\r\n\r\nbody\r\n" {
		t.Fatalf("after the release: %v", back)
	}
	if _, err := s.FileSent(back[0], true); err != nil {
		t.Fatal(err)
	}
	waitEmpty(t, js)
}

// An operator's retry sends a deferred message now: a copy comes at once,
// and the deferred one, when its delay is over, is dropped unsent.
func TestRetryDeferred(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{Node: "n1"})
	id := publish(t, js, "later.eml", "Subject: x\r\n\r\nbody\r\n")
	job := fetch(t, s, 1)[0]
	job.State.Attempts = 1
	due := time.Now().Add(12 * time.Second)
	if err := s.Defer(job, due); err != nil {
		t.Fatal(err)
	}
	retryDeferred(t, js, id)
	now := fetch(t, s, 1)
	if len(now) != 1 || now[0].ID != id || now[0].State.Attempts != 1 {
		t.Fatalf("after the retry: %v", now)
	}
	if _, err := s.FileSent(now[0], true); err != nil {
		t.Fatal(err)
	}
	if err := stream.RetryDeferred(t.Context(), js, "", id); err == nil {
		t.Error("a message already sent was retried")
	}
	time.Sleep(time.Until(due) + 500*time.Millisecond)
	if again := fetch(t, s, 1); len(again) != 0 {
		t.Fatalf("the superseded deferred copy was handed on: %s", again[0].ID)
	}
	waitEmpty(t, js)
}

// A message deferred before its first attempt (its not_before) has no
// state; retried, its new copy is still as old as the message, not as the
// retry (seen in "queue list": its age started again at 0s).
func TestRetriedKeepsItsAge(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{Node: "n1"})
	enqueued := time.Now().Add(-time.Hour).UTC().Truncate(time.Microsecond)
	name, err := queuefile.NewName(enqueued)
	if err != nil {
		t.Fatal(err)
	}
	id := publish(t, js, name, "Subject: x\r\n\r\nbody\r\n")
	job := fetch(t, s, 1)[0]
	if err := s.Defer(job, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	retryDeferred(t, js, id)
	again := fetch(t, s, 1)
	if len(again) != 1 || again[0].ID != id {
		t.Fatalf("after the retry: %v", again)
	}
	if q := again[0].State.Queued; !q.Equal(enqueued) {
		t.Errorf("queued %v after the retry, want %v (its name's time)", q, enqueued)
	}
	if _, err := s.FileSent(again[0], true); err != nil {
		t.Fatal(err)
	}
}

// A message deferred by its not_before, before the Parser works out its
// pending recipients, is recorded with all of them, not none ("queue list"
// showed 0 recipients for it on a cluster, its true count from a folder).
func TestDeferredBeforeFirstAttemptCountsItsRecipients(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{Node: "n1"})
	id := publish(t, js, "later.eml", "Subject: x\r\n\r\nbody\r\n")
	job := fetch(t, s, 1)[0]
	job.Params = &queuefile.Params{From: "a@example.org", To: []string{"b@example.org", "c@example.org"}}
	if err := s.Defer(job, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if r := waitRecord(t, js, id, spool.PlaceDeferred); r.Recipients != 2 || r.Sender != "a@example.org" {
		t.Errorf("deferred record: %d recipients, sender %q; want 2, a@example.org", r.Recipients, r.Sender)
	}
}

// retryDeferred retries the deferred message id once its deferred record
// has arrived.
func retryDeferred(t *testing.T, js jetstream.JetStream, id string) {
	t.Helper()
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if err = stream.RetryDeferred(t.Context(), js, "", id); err == nil {
			break // the deferred record has arrived
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}

// A requeue reaches the node it names, once; a purge reaches every node.
func TestAdminOpsReachTheirNodes(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	got := map[string]chan stream.AdminOp{"a": make(chan stream.AdminOp, 4), "b": make(chan stream.AdminOp, 4)}
	for _, n := range []string{"a", "b"} {
		node(t, js, stream.Config{Node: n, OnAdmin: func(op stream.AdminOp) error { got[n] <- op; return nil }})
	}
	if err := stream.RequestRequeue(t.Context(), js, "", "0pgst78dm4r5384m", "b", "x.eml"); err != nil {
		t.Fatal(err)
	}
	before := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	if err := stream.RequestPurge(t.Context(), js, "", spool.PlaceSent, before); err != nil {
		t.Fatal(err)
	}
	next := func(n string) stream.AdminOp {
		t.Helper()
		select {
		case op := <-got[n]:
			return op
		case <-time.After(5 * time.Second):
			t.Fatalf("node %s got nothing", n)
			return stream.AdminOp{}
		}
	}
	if op := next("b"); op.Op != "requeue" || op.ID != "0pgst78dm4r5384m" || op.Name != "x.eml" {
		t.Errorf("node b got %+v, want the requeue", op)
	}
	for _, n := range []string{"a", "b"} {
		if op := next(n); op.Op != "purge" || op.Place != "sent" || !op.Before.Equal(before) {
			t.Errorf("node %s got %+v, want the purge", n, op)
		}
	}
	select {
	case op := <-got["a"]:
		t.Errorf("node a got %+v too", op)
	case <-time.After(200 * time.Millisecond):
	}
}

// lossyJS loses the answers to the first lose publishes of queue messages:
// stored says whether the stream stores them all the same (an ack lost on
// its way back) or not (a request lost on its way there).
type lossyJS struct {
	jetstream.JetStream
	mu     sync.Mutex
	lose   int
	stored bool
	tries  int
	err    error // what a lost publish returns; nil: no answer
}

func (j *lossyJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if !strings.HasPrefix(msg.Subject, stream.DefaultStream+".q.") {
		return j.JetStream.PublishMsg(ctx, msg, opts...)
	}
	j.mu.Lock()
	j.tries++
	lost := j.tries <= j.lose
	j.mu.Unlock()
	if !lost {
		return j.JetStream.PublishMsg(ctx, msg, opts...)
	}
	if j.stored {
		if _, err := j.JetStream.PublishMsg(ctx, msg, opts...); err != nil {
			return nil, err
		}
	}
	if j.err != nil {
		return nil, j.err
	}
	return nil, errors.New("injected: no answer from the stream")
}

// A publish the server refuses outright (too large for it) is not tried
// again: no retry can mend it, and enqueue reports it at once.
func TestPublishRefusedIsNotRetried(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	if _, _, err := stream.Setup(t.Context(), js, "", 1); err != nil {
		t.Fatal(err)
	}
	for _, refusal := range []error{nats.ErrMaxPayload, nats.ErrPermissionViolation,
		&jetstream.APIError{Code: 400, ErrorCode: 10054, Description: "message size exceeds maximum allowed"}} {
		lossy := &lossyJS{JetStream: js, lose: 1 << 30, err: refusal}
		_, err := stream.Publish(t.Context(), lossy, "", "refused.eml", []byte("Subject: x\r\n\r\nbody\r\n"))
		if !errors.Is(err, refusal) {
			t.Errorf("publish refused with %v returned %v", refusal, err)
		}
		if lossy.tries != 1 {
			t.Errorf("refused with %v: tried %d times, want once", refusal, lossy.tries)
		}
	}
}

// queued returns how many messages the stream holds to send.
func queued(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	str, err := js.Stream(t.Context(), stream.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(t.Context(), jetstream.WithSubjectFilter(stream.DefaultStream+".q.>"))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// waitRecord waits until the record of id is in state, and returns it.
func waitRecord(t *testing.T, js jetstream.JetStream, id string, state spool.Place) stream.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rs, err := stream.Records(t.Context(), js, "", id)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) == 1 && rs[0].State == state {
			return rs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("records of %s: %+v, want one %s", id, rs, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A publish whose ack is lost, though the stream stored the message, is
// tried again under the same id: the enqueue succeeds, and the stream holds
// the message once.
func TestPublishLostAckRetried(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	if _, _, err := stream.Setup(t.Context(), js, "", 1); err != nil {
		t.Fatal(err)
	}
	lossy := &lossyJS{JetStream: js, lose: 1, stored: true}
	id, err := stream.Publish(t.Context(), lossy, "", "lost-ack.eml", []byte("Subject: x\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatalf("publish with its first ack lost: %v", err)
	}
	if lossy.tries != 2 {
		t.Errorf("published %d times, want 2 (one lost ack, one retry)", lossy.tries)
	}
	if n := queued(t, js); n != 1 {
		t.Fatalf("the stream holds %d messages, want 1", n)
	}
	waitRecord(t, js, id, "queued")
	s := node(t, js, stream.Config{})
	if jobs := fetch(t, s, 2); len(jobs) != 1 || jobs[0].ID != id {
		t.Fatalf("claimed %d jobs, want the one message %s", len(jobs), id)
	}
}

// A publish the stream never stored fails, and leaves no record that would
// show the message as queued.
func TestPublishFailedLeavesNoRecord(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	if _, _, err := stream.Setup(t.Context(), js, "", 1); err != nil {
		t.Fatal(err)
	}
	lossy := &lossyJS{JetStream: js, lose: 1 << 30}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	id, err := stream.Publish(ctx, lossy, "", "never.eml", []byte("Subject: x\r\n\r\nbody\r\n"))
	if err == nil {
		t.Fatal("a publish the stream never answered succeeded")
	}
	if lossy.tries < 2 {
		t.Errorf("tried %d times, want it tried again", lossy.tries)
	}
	if n := queued(t, js); n != 0 {
		t.Errorf("the stream holds %d messages, want none", n)
	}
	if rs, err := stream.Records(t.Context(), js, "", id); err != nil || len(rs) != 0 {
		t.Errorf("records of the failed publish %s: %+v, %v; want none", id, rs, err)
	}
}

// A publish run again under the same id after a node claimed the message
// stores nothing more, and does not set its record back to queued.
func TestPublishAgainKeepsTheRecord(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{Node: "n1"})
	body := []byte("Subject: x\r\n\r\nbody\r\n")
	id := publish(t, js, "again.eml", string(body))
	if jobs := fetch(t, s, 1); len(jobs) != 1 {
		t.Fatalf("claimed %d jobs, want 1", len(jobs))
	}
	waitRecord(t, js, id, "active")
	if err := stream.PublishAs(t.Context(), js, "", id, "again.eml", body); err != nil {
		t.Fatal(err)
	}
	if n := queued(t, js); n != 1 {
		t.Errorf("the stream holds %d messages, want 1", n)
	}
	if r := waitRecord(t, js, id, "active"); r.Node != "n1" {
		t.Errorf("record after the second publish: %+v", r)
	}
}

// A fetched batch is claimed at once (its states read together), and
// handed on in the stream's order, each job with its own state.
func TestScanClaimsABatchInOrder(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{Batch: 40})
	var ids []string
	for i := range 40 {
		ids = append(ids, publish(t, js, fmt.Sprintf("m%02d.eml", i), "Subject: x\r\n\r\nbody\r\n"))
	}
	for _, i := range []int{5, 17, 39} {
		if err := s.WriteState(ids[i], &stages.State{Attempts: i}); err != nil {
			t.Fatal(err)
		}
	}
	jobs := fetch(t, s, 40)
	if len(jobs) != 40 {
		t.Fatalf("claimed %d jobs, want 40", len(jobs))
	}
	for i, j := range jobs {
		want := 0
		if i == 5 || i == 17 || i == 39 {
			want = i
		}
		if j.ID != ids[i] || j.Name != fmt.Sprintf("m%02d.eml", i) || j.State.Attempts != want {
			t.Errorf("job %d: %s %s with %d attempts, want %s m%02d.eml with %d", i, j.ID, j.Name, j.State.Attempts, ids[i], i, want)
		}
	}
}
