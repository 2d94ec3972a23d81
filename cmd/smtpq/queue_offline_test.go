package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// The queue commands without a running service: folders as the spool
// leaves them.

// enqueueCLI queues testMsg with extra enqueue flags and returns its name.
func (e *testEnv) enqueueCLI(args ...string) string {
	e.t.Helper()
	msgFile := filepath.Join(e.dir, "msg.eml")
	if _, err := os.Stat(msgFile); err != nil {
		e.writeFile("msg.eml", testMsg)
	}
	code, out, errOut := e.smtpq("", append(append([]string{"enqueue"}, args...), msgFile)...)
	if code != 0 {
		e.t.Fatalf("enqueue: exit %d: %s", code, errOut)
	}
	return filepath.Base(strings.TrimSpace(out))
}

func (e *testEnv) dirs() spool.Dirs {
	return spool.Dirs{Queue: e.queue, Sent: filepath.Join(e.dir, "sent"), Undeliverable: filepath.Join(e.dir, "undeliverable")}
}

// deferNow claims the named queued file with a spool and defers it.
func (e *testEnv) deferNow(name string, due time.Time, lastError string) {
	e.t.Helper()
	s, err := spool.Open(e.dirs(), nil)
	if err != nil {
		e.t.Fatal(err)
	}
	defer s.Close()
	dir, file := e.dirs().Queue, name
	if found, err := spool.LocateMessage(e.dirs(), name); err == nil && found[0].Place == spool.PlaceQueued {
		dir, file = filepath.Dir(found[0].Path), filepath.Base(found[0].Path) // in .ready, by id
	}
	job, err := s.ScanOne(dir, file)
	if err != nil || job == nil {
		e.t.Fatalf("claiming %s: %v", name, err)
	}
	job.State.Attempts, job.State.LastError = 1, lastError
	if err := s.Defer(job, due); err != nil {
		e.t.Fatal(err)
	}
}

func TestQueueUsageErrors(t *testing.T) {
	e := newEnv(t, true)
	name := e.enqueueCLI()
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"queue", "frob"}, 2, "unknown subcommand"},
		{[]string{"queue", "list", "--state", "lost"}, 2, `unknown state "lost"`},
		{[]string{"queue", "list", "--state", "queued,bogus"}, 2, "unknown state"},
		{[]string{"queue", "list", "--host", ""}, 2, "empty host"},
		{[]string{"queue", "list", "extra"}, 2, "unexpected argument"},
		{[]string{"queue", "status"}, 2, "at least 1"},
		{[]string{"queue", "status", "nonsense"}, 2, "not a message name"},
		{[]string{"queue", "status", "20260101T000000.000000000Z-aaaaaaaaaaaaaaaa.eml"}, 1, "not found"},
		{[]string{"queue", "hold"}, 2, "give a message NAME, --all or --host H"},
		{[]string{"queue", "hold", name, "--all"}, 2, "only one of"},
		{[]string{"queue", "release", "--all", "--host", "x.example"}, 2, "only one of"},
		{[]string{"queue", "retry", "a.eml", "b.eml"}, 2, "at most 1"},
		{[]string{"queue", "requeue"}, 2, "give a message NAME or --all"},
		{[]string{"queue", "requeue", "--host", "x"}, 2, "unknown flag"},
		{[]string{"queue", "requeue", name}, 1, "already in the queue"},
		{[]string{"queue", "release", name}, 1, "not held"},
		{[]string{"queue", "purge", "--state", "queued", "--older-than", "1h"}, 2, "only sent or undeliverable"},
		{[]string{"queue", "purge", "--state", "sent"}, 2, "--older-than"},
		{[]string{"queue", "purge", "--state", "sent", "--older-than", "soon"}, 2, "not a duration"},
		{[]string{"queue", "purge", "--state", "sent", "--older-than", "-1h"}, 2, "negative"},
		{[]string{"queue", "purge", "--state", "nowhere", "--older-than", "1h"}, 2, "unknown state"},
	} {
		code, _, errOut := e.smtpq("", c.args...)
		if code != c.code || !strings.Contains(errOut, c.want) {
			t.Errorf("%q: exit %d, %q; want exit %d with %q", c.args, code, errOut, c.code, c.want)
		}
	}
	if q := e.queued(); len(q) != 1 {
		t.Errorf("bad commands moved files: queue holds %v", q)
	}
}

func TestQueueWithoutTheKey(t *testing.T) {
	e := newEnv(t, true)
	name := e.enqueueCLI()
	if err := os.Chmod(filepath.Join(e.dir, "keys", "identity.txt"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := e.smtpq("", "queue", "list")
	if code != 0 || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "warning: cannot open the seals") {
		t.Fatalf("list without the key: exit %d, stderr %q", code, errOut)
	}
	l := listLines(t, out)[name]
	if l == nil || l[2] != "queued" || l[3] != "-" || l[4] != "-" || l[5] != "-" {
		t.Errorf("list without the key: %q, want \"-\" for host, sender, recipients", l)
	}
	if code, _, errOut := e.smtpq("", "queue", "list", "--host", "relay.example.com"); code != 1 || !strings.Contains(errOut, "private key") {
		t.Errorf("list --host without the key: exit %d, %q", code, errOut)
	}
	if code, out, _ := e.smtpq("", "queue", "status", name); code != 0 || !strings.Contains(out, name+": queued") {
		t.Errorf("status without the key: exit %d, %q", code, out)
	}
	// Moving needs no key.
	if code, out, _ := e.smtpq("", "queue", "hold", "--all"); code != 0 || !strings.HasPrefix(out, "held 1 messages") {
		t.Errorf("hold --all without the key: exit %d, %q", code, out)
	}
}

func TestQueueSelectByHostAndRetryControls(t *testing.T) {
	e := newEnv(t, true)
	mainMsgs := []string{e.enqueueCLI(), e.enqueueCLI(), e.enqueueCLI()}
	backup := e.enqueueCLI("--relay", "backup")
	scheduled := e.enqueueCLI("--not-before", "2h")
	direct := e.enqueueCLI("--host", "SMTP.Direct.Example.", "--port", "2525")
	due := time.Now().Add(time.Hour)
	e.deferNow(mainMsgs[0], due, "rcpt: 451 4.2.0 later")
	e.deferNow(backup, due, "connect: connection refused")
	e.deferNow(scheduled, time.Now().Add(2*time.Hour), "")
	e.deferNow(direct, due, "greeting: 421 busy")

	q := &queueEnvT{cli: e}
	l := listLines(t, q.ok("list", "--host", "relay.example.com"))
	if len(l) != 4 || l[scheduled] == nil {
		t.Errorf("list --host relay.example.com: %v", l)
	}
	if l := listLines(t, q.ok("list", "--host", "smtp.direct.example")); len(l) != 1 || l[direct] == nil || l[direct][3] != "smtp.direct.example" {
		t.Errorf("list --host smtp.direct.example (normalized): %v", l)
	}

	// hold --host takes the queued and deferred mail of that host only.
	if out := q.ok("hold", "--host", "RELAY.example.com"); !strings.HasPrefix(out, "held 4 messages for relay.example.com") {
		t.Errorf("hold --host: %q", out)
	}
	if l := listLines(t, q.ok("list", "--state", "held")); len(l) != 4 || l[backup] != nil || l[direct] != nil {
		t.Errorf("held: %v", l)
	} else if id := l[scheduled][1]; !spool.IsID(id) || !strings.Contains(q.ok("status", id), scheduled) {
		t.Errorf("held message's id column %q: want the id that status takes", id)
	}
	if out := q.ok("release", "--host", "relay.example.com"); !strings.HasPrefix(out, "released 4 messages") {
		t.Errorf("release --host: %q", out)
	}
	if out := q.ok("status", mainMsgs[0]); !strings.Contains(out, ": queued") || !regexp.MustCompile(`(?m)^  attempts: +1$`).MatchString(out) {
		t.Errorf("released deferred message: %q (attempts must be kept)", out)
	}

	// retry --host: deferred mail of that host to the queue, and a control
	// file for the service.
	if out := q.ok("retry", "--host", "backup.example.com"); !strings.HasPrefix(out, "moved 1 deferred messages for backup.example.com") ||
		!strings.Contains(out, "lift any pause of backup.example.com") {
		t.Errorf("retry --host: %q", out)
	}
	if l := listLines(t, q.ok("list", "--state", "queued")); l[backup] == nil {
		t.Errorf("retried message not queued: %v", l)
	}
	// retry --all leaves scheduled mail alone.
	e.deferNow(scheduled, time.Now().Add(2*time.Hour), "")
	if out := q.ok("retry", "--all"); !strings.HasPrefix(out, "moved 1 deferred messages to the queue; 1 scheduled for later") {
		t.Errorf("retry --all: %q", out)
	}
	if l := listLines(t, q.ok("list", "--state", "deferred")); len(l) != 1 || l[scheduled] == nil {
		t.Errorf("deferred after retry --all: %v", l)
	} else {
		// The id the list shows names the message to the commands too.
		id := l[scheduled][1]
		if out := q.ok("hold", id); !strings.HasPrefix(out, "held "+id) {
			t.Errorf("hold by id %s: %q", id, out)
		}
		if l := listLines(t, q.ok("list", "--state", "held")); len(l) != 1 || l[scheduled] == nil || l[scheduled][1] != id {
			t.Errorf("held after hold by id: %v", l)
		}
		// An id typed in capitals is the same id.
		if out := q.ok("release", strings.ToUpper(id)); !strings.HasPrefix(out, "released "+id) {
			t.Errorf("release by id in capitals: %q", out)
		}
		e.deferNow(scheduled, time.Now().Add(2*time.Hour), "")
	}
	// retry of one queued message: lifts its host's pause.
	if out := q.ok("retry", mainMsgs[1]); !strings.Contains(out, "in the queue already") || !strings.Contains(out, "relay.example.com") {
		t.Errorf("retry of a queued message: %q", out)
	}
	cs, err := spool.ReadControls(e.queue)
	if err != nil {
		t.Fatal(err)
	}
	want := []spool.Control{{Op: stages.OpRetry, Host: "backup.example.com"}, {Op: stages.OpRetry, All: true}, {Op: stages.OpRetry, Host: "relay.example.com"}}
	if len(cs) != len(want) {
		t.Fatalf("controls %+v, want %+v", cs, want)
	}
	for i := range want {
		if cs[i] != want[i] {
			t.Errorf("control %d: %+v, want %+v", i, cs[i], want[i])
		}
	}

	// requeue: a clash in the queue is refused, nothing overwritten.
	und := e.dirs().Undeliverable
	if err := os.MkdirAll(und, 0o750); err != nil {
		t.Fatal(err)
	}
	found, err := spool.LocateMessage(e.dirs(), mainMsgs[1])
	if err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(found[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(und, mainMsgs[1]), raw, 0o640); err != nil {
		t.Fatal(err)
	}
	// Only a file of that name in queue_dir is in the way (one in the
	// working folders has an id of its own): a producer drops one.
	if err := os.WriteFile(filepath.Join(e.queue, mainMsgs[1]), raw, 0o640); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := q.q("requeue", mainMsgs[1]); code != 1 || !strings.Contains(errOut, "already there") {
		t.Errorf("requeue over a queued message: exit %d, %q", code, errOut)
	}
	if code, out, errOut := q.q("requeue", "--all"); code != 1 || !strings.Contains(out, "1 not requeued") || !strings.Contains(errOut, "already there") {
		t.Errorf("requeue --all over a queued message: exit %d, %q, %q", code, out, errOut)
	}
	if _, err := os.Stat(filepath.Join(und, mainMsgs[1])); err != nil {
		t.Errorf("refused requeue lost the undeliverable copy: %v", err)
	}
	// status shows both copies.
	if out := q.ok("status", mainMsgs[1]); !strings.Contains(out, ": queued") || !strings.Contains(out, ": undeliverable: ") {
		t.Errorf("status of a message in two places: %q", out)
	}
}

// Untrusted names and files cannot break the one-line-per-message output.
func TestQueueListUntrustedFiles(t *testing.T) {
	e := newEnv(t, true)
	good := e.enqueueCLI()
	evil := "evil\x1b[31m\nname with spaces.eml"
	if err := os.WriteFile(filepath.Join(e.queue, evil), []byte("Subject: no seal\r\n\r\nbody\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	q := &queueEnvT{cli: e}
	out := q.ok("list")
	if strings.ContainsAny(out, "\x1b") || strings.Count(out, "\n") != 3 {
		t.Errorf("list: %q", out)
	}
	l := listLines(t, out)
	if l[good] == nil || l["evil[31m_name_with_spaces.eml"] == nil || l["evil[31m_name_with_spaces.eml"][3] != "-" {
		t.Errorf("list: %q", l)
	}
	js := listJSON(t, q.ok("list", "--json"))
	if m := js[evil]; m == nil || m["envelope_error"] == nil || m["host"] != nil {
		t.Errorf("list --json: %v", js)
	}
}
