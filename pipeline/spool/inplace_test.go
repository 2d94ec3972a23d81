package spool

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// inPlaceEnv is a spool whose queue files are made by Enqueue, and the
// identities that open them.
type inPlaceEnv struct {
	t *testing.T
	d Dirs
	s *Spool
	q *queuefile.Queue
}

func newInPlaceEnv(t *testing.T, d Dirs) *inPlaceEnv {
	t.Helper()
	q, _ := keyedQueue(t)
	q.Dir = d.Queue
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return &inPlaceEnv{t: t, d: d, s: s, q: q}
}

// parsedJob enqueues msg, claims it and fills in what the Parser would
// (the seal's parameters and the message size).
func (e *inPlaceEnv) parsedJob(msg string) *stages.Job {
	e.t.Helper()
	name, err := e.q.Enqueue(strings.NewReader(msg), queuefile.Params{Host: "h.example.com", Port: 25, From: "a@example.com", To: []string{"b@example.org"}})
	if err != nil {
		e.t.Fatal(err)
	}
	job := claimTest(e.t, e.s, name)
	job.Kind, job.Size = stages.KindSealed, int64(len(msg))
	job.Params = &queuefile.Params{Size: job.Size}
	return job
}

// fileSent files job in Sent and checks the copy: the message byte for
// byte, mode 0640, nothing left in the active folder.
func (e *inPlaceEnv) fileSent(job *stages.Job, msg string) string {
	e.t.Helper()
	active := handle(job).path
	path, err := e.s.FileSent(job, false)
	if err != nil {
		e.t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || string(b) != msg {
		e.t.Fatalf("Sent copy %s: %q, %v; want %q", path, b, err, msg)
	}
	// Windows has no permission bits to check (every file reads
	// -rw-rw-rw- there).
	if fi, err := os.Stat(path); err != nil || runtime.GOOS != "windows" && fi.Mode().Perm() != 0o640 {
		e.t.Fatalf("Sent copy mode: %v, %v", fi.Mode(), err)
	}
	if _, err := os.Lstat(active); !os.IsNotExist(err) {
		e.t.Fatalf("queue copy left in the active folder: %v", err)
	}
	return path
}

// On the test machine's temporary folder, Sent copies are made in place
// if its file system can cut blocks (ext4, XFS) and copied if not; either
// way the copy is the message byte for byte and the counters say which
// way it went, so this fails if the cut is silently never taken.
func TestSentCopiesInPlace(t *testing.T) {
	d := testDirs(t)
	e := newInPlaceEnv(t, d)
	want := CutsInPlace(d.Queue)
	const n = 5
	for i := range n {
		msg := fmt.Sprintf("From: a@example.com\r\nSubject: %d\r\n\r\n%s", i, strings.Repeat("body line\r\n", 100*i))
		job := e.parsedJob(msg)
		queued, err := os.Stat(handle(job).path)
		if err != nil {
			t.Fatal(err)
		}
		path := e.fileSent(job, msg)
		if sent, err := os.Stat(path); err != nil || os.SameFile(queued, sent) != want {
			t.Errorf("message %d: the Sent copy is the queue file itself: %v, want %v (%v)", i, !want, want, err)
			t.Errorf("message %d: the Sent copy is not the queue file itself", i)
		}
	}
	got := e.s.SentCopies()
	if want && got != (SentCopies{InPlace: n}) || !want && got != (SentCopies{Copied: n}) {
		t.Fatalf("the file system can cut blocks: %v; Sent copies %+v", want, got)
	}
	t.Logf("cut in place: %v, %+v", want, got)
}

// Files the cut must not touch get a copy, and are left as they were
// until the copy is durable: a file without padding (dropped by hand), a
// file whose sealed block is not what opens it, a job the Parser could not
// open, and a message accepted before a crash (it may be in Sent already).
func TestSentCopiesInPlaceOnlyForPaddedFiles(t *testing.T) {
	d := testDirs(t)
	e := newInPlaceEnv(t, d)
	msg := "From: a@example.com\r\nSubject: hand\r\n\r\nbody\r\n"

	// Not padded: the sealed block is not a whole block.
	unpadded := e.parsedJob(msg)
	b, err := os.ReadFile(handle(unpadded).path)
	if err != nil {
		t.Fatal(err)
	}
	pad := bytes.Index(b, []byte(queuefile.PadField+":"))
	os.WriteFile(handle(unpadded).path, append(b[:pad:pad], msg...), 0o640)
	e.fileSent(unpadded, msg)

	// A whole block, but a field of the message's in it.
	moved := e.parsedJob(msg)
	shifted := append(queuefile.PadSeal([]byte("X-Kept: 1\r\n"), "\r\n", 0), msg...)
	os.WriteFile(handle(moved).path, shifted, 0o640)
	if _, err := e.s.sentInPlace(moved); err != errNotInPlace {
		t.Errorf("a kept field in the first block: %v, want errNotInPlace", err)
	}
	if got, _ := os.ReadFile(handle(moved).path); !bytes.Equal(got, shifted) {
		t.Error("the refused file was changed")
	}

	notOpened := e.parsedJob(msg)
	notOpened.Params = nil
	e.fileSent(notOpened, msg)

	accepted := e.parsedJob(msg)
	accepted.State.Accepted = true
	e.fileSent(accepted, msg)

	if got := e.s.SentCopies(); got.InPlace != 0 || got.Copied != 3 {
		t.Fatalf("Sent copies %+v, want 3 copied and none in place", got)
	}
}

// On a file system that cannot cut blocks (tmpfs), every Sent copy is
// written as before and the spool stops trying after the first refusal.
func TestSentCopiesInPlaceFallbackOnTmpfs(t *testing.T) {
	root, err := os.MkdirTemp("/dev/shm", "smtpq-inplace-")
	if err != nil {
		t.Skipf("no tmpfs at /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	d := Dirs{Queue: filepath.Join(root, "queue"), Sent: filepath.Join(root, "sent"), Undeliverable: filepath.Join(root, "undeliverable")}
	if CutsInPlace(root) {
		t.Skip("/dev/shm can cut blocks: not a tmpfs")
	}
	e := newInPlaceEnv(t, d)
	for i := range 3 {
		msg := fmt.Sprintf("From: a@example.com\r\nSubject: %d\r\n\r\nbody\r\n", i)
		e.fileSent(e.parsedJob(msg), msg)
	}
	if got := e.s.SentCopies(); got != (SentCopies{Copied: 3}) {
		t.Fatalf("Sent copies on tmpfs %+v, want 3 copied", got)
	}
	if e.s.cutBlock > 0 && !e.s.cutOff.Load() {
		t.Error("the spool did not note that the file system refuses the cut")
	}
}
