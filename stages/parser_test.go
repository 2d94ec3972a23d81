package stages

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// A message up to MaxInMemory is read once: the Parser keeps it, without
// its seal, for the Sender and the Sent copy, within the InMemory budget;
// a bigger one, or one over the budget, is read from disk again. What is
// sent and what is filed are the same bytes either way.
func TestParserKeepsSmallMessagesInMemory(t *testing.T) {
	q, ids := keyedQueue(t)
	msg := func(n int) string {
		return "From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\n" + strings.Repeat("x", n) + "\r\n"
	}
	p := &Parser{
		Identities: ids, MaxInMemory: 12 << 10, InMemory: 20 << 10, // a 4 KiB message makes an 8 KiB queue file (the padded seal)
		Resolve: func(p *queuefile.Params) (Route, error) { return Route{Host: p.Host, Port: p.Port}, nil },
		Clock:   SystemClock{}, Log: zap.NewNop(),
	}
	open := func(body string) *Job {
		t.Helper()
		name, err := q.Enqueue(strings.NewReader(body), queuefile.Params{Host: "smtp.example.org", Port: 25})
		if err != nil {
			t.Fatal(err)
		}
		job := &Job{Name: name, Msg: fileMsg(filepath.Join(q.Dir, name)), State: State{Queued: time.Now()}}
		if !p.parse(job) {
			t.Fatalf("parse %s: %+v", name, job.Outcome)
		}
		var sent, filed bytes.Buffer
		if _, err := writeData(&sent, job); err != nil {
			t.Fatal(err)
		}
		if err := job.WriteMessage(&filed); err != nil {
			t.Fatal(err)
		}
		if sent.String() != body || filed.String() != body {
			t.Fatalf("%d-byte message: sent %d bytes, filed %d, want it byte for byte", len(body), sent.Len(), filed.Len())
		}
		return job
	}
	small := open(msg(4 << 10))
	if small.body == nil {
		t.Fatal("a 4 KiB message was not kept in memory")
	}
	big := open(msg(16 << 10))
	if big.body != nil {
		t.Fatal("a 16 KiB message was kept in memory, over MaxInMemory (12 KiB)")
	}
	second := open(msg(4 << 10))
	third := open(msg(4 << 10))
	if second.body == nil || third.body != nil {
		t.Fatalf("with 20 KiB of budget, the 2nd and 3rd 4 KiB messages kept: %v, %v; want true, false",
			second.body != nil, third.body != nil)
	}
	small.dropBody()
	if fourth := open(msg(4 << 10)); fourth.body == nil {
		t.Fatal("the budget did not come back when a job let go of its message")
	}
	// A file whose seal does not open keeps nothing.
	bad := filepath.Join(q.Dir, "20261127T120000.000000000Z-broken00.eml")
	os.WriteFile(bad, []byte("X-SmtpQ-Sealed: v1 AAAA\r\n\r\nbody\r\n"), 0o640)
	job := &Job{Name: filepath.Base(bad), Msg: fileMsg(bad), State: State{Queued: time.Now()}}
	left := p.budget.left.Load()
	if p.parse(job) || job.body != nil || p.budget.left.Load() != left {
		t.Fatalf("a broken file: parsed %v, body kept %v, budget %d bytes after, %d before", job.Outcome, job.body != nil, p.budget.left.Load(), left)
	}
}

// A pickup file (no digest to tell that it is whole) is sent only once it
// has not changed for Settle: a younger one is parked until then.
func TestParserSettlesPickupFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pickup.eml")
	if err := os.WriteFile(path, []byte("X-Sender: a@example.com\r\nX-Receiver: b@example.org\r\n\r\nSubject: hi\r\n\r\nbody\r\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	p := &Parser{
		Pickup: &Route{Host: "relay.example.org", Port: 25, TLS: queuefile.TLSNone},
		Settle: time.Minute, Clock: SystemClock{}, Log: zap.NewNop(),
	}
	os.Chtimes(path, now.Add(-10*time.Second), now.Add(-10*time.Second))
	job := &Job{Name: "pickup.eml", Msg: fileMsg(path)}
	if p.parse(job) || job.Outcome.Verdict != Parked || job.Outcome.Due.Before(now.Add(time.Minute)) {
		t.Fatalf("a pickup file changed 10s ago: outcome %+v; want parked for the settle time", job.Outcome)
	}
	// Unchanged for longer than Settle, or changed "in a year" (a clock
	// set wrong, a touch): no writer is at work, it goes.
	for _, mod := range []time.Time{now.Add(-2 * time.Minute), now.Add(365 * 24 * time.Hour)} {
		os.Chtimes(path, mod, mod)
		job = &Job{Name: "pickup.eml", Msg: fileMsg(path)}
		if !p.parse(job) || job.Kind != KindPickup || len(job.Pending) != 1 {
			t.Fatalf("a pickup file last changed at %v: outcome %+v, pending %v; want it ready", mod, job.Outcome, job.Pending)
		}
	}
}

// fileMsg is a Message read from a file, as the directory spool's are.
type fileMsg string

func (m fileMsg) Stat() (fs.FileInfo, error)   { return os.Lstat(string(m)) }
func (m fileMsg) Open() (io.ReadCloser, error) { return os.Open(string(m)) }
func (m fileMsg) Released() bool               { return false }

// keyedQueue makes a key pair in memory and a queue folder sealing to it;
// it returns the queue and the service's identity.
func keyedQueue(t *testing.T) (*queuefile.Queue, []age.Identity) {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	q := &queuefile.Queue{Dir: t.TempDir(), Recipients: []age.Recipient{id.Recipient()}}
	return q, []age.Identity{id}
}

// failingMsg is a message whose storage stops answering after a few bytes.
type failingMsg struct{ fileMsg }

func (m failingMsg) Open() (io.ReadCloser, error) {
	f, err := os.Open(string(m.fileMsg))
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(io.LimitReader(f, 20), errReader{fmt.Errorf("chunk 3: %w: timeout", ErrStorage)}), f}, nil
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

// A message the storage fails to deliver while the Parser reads it is not
// failed as invalid: it is parked, to be read again, not counting an
// attempt.
func TestParserParksOnStorageErrors(t *testing.T) {
	q, ids := keyedQueue(t)
	name, err := q.Enqueue(strings.NewReader("From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nbody\r\n"), queuefile.Params{Host: "smtp.example.org", Port: 25})
	if err != nil {
		t.Fatal(err)
	}
	p := &Parser{
		Identities: ids, Clock: SystemClock{}, Log: zap.NewNop(),
		Resolve: func(p *queuefile.Params) (Route, error) { return Route{Host: p.Host, Port: p.Port}, nil },
	}
	job := &Job{Name: name, Msg: failingMsg{fileMsg(filepath.Join(q.Dir, name))}, State: State{Queued: time.Now()}}
	if p.parse(job) || job.Outcome.Verdict != Parked || job.Outcome.Due.IsZero() || job.State.Attempts != 0 {
		t.Fatalf("outcome %+v, want parked for later", job.Outcome)
	}
}
