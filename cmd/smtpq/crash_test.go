//go:build crash

// Crash tests: they build the smtpq binary, kill it with SIGKILL at chosen
// points or at random moments while it drains, restart it and check that
// every message ends exactly once in Sent or Undeliverable. Run them with
// "make test-crash".

package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// binary builds smtpq once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "smtpq-crash-bin")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "smtpq")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

type crashTestEnv struct {
	t       *testing.T
	dir     string
	cfg     string
	queue   *queuefile.Queue
	logs    *bytes.Buffer
	logsMu  sync.Mutex
	started int // processes started
	// unpadded: enqueue writes files without the padding after the seal
	// (as by hand, or by a version before it): their Sent copies are
	// always written as new files, never made in place.
	unpadded bool
}

func newCrashTestEnv(t *testing.T, maxThreads int) *crashTestEnv {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "smtpq.yaml")
	text := fmt.Sprintf(`queue_dir: queue
sent_dir: sent
undeliverable_dir: undeliverable
identity_file: keys/identity.txt
recipient_file: keys/recipient.txt
max_threads: %d
hosts:
  default:
    max_connections: %d
    idle_timeout: 1s
retry:
  min_backoff: 0s
  max_backoff: 1s
  max_attempts: 10
scan_interval: 200ms
timeouts:
  connect: 5s
  command: 5s
  data: 10s
log:
  level: debug
`, maxThreads, maxThreads)
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := queuefile.GenerateKeys(filepath.Join(dir, "keys/identity.txt"), filepath.Join(dir, "keys/recipient.txt")); err != nil {
		t.Fatal(err)
	}
	rcpts, err := queuefile.LoadRecipients(filepath.Join(dir, "keys/recipient.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "queue"), 0o750); err != nil {
		t.Fatal(err)
	}
	return &crashTestEnv{t: t, dir: dir, cfg: cfg, queue: &queuefile.Queue{Dir: filepath.Join(dir, "queue"), Recipients: rcpts}, logs: &bytes.Buffer{}}
}

// crashMessage is message i of the crash tests.
func crashMessage(i int, to string) string {
	return fmt.Sprintf("From: app@example.com\r\nTo: %s\r\nSubject: crash %d\r\nMessage-ID: <crash-%d@example.com>\r\n\r\nbody %d\r\n", to, i, i, i)
}

// enqueue queues message i for host:port, not for an smtptest.Server:
// the random-kill tests' sink may be Postfix's smtp-sink.
func (e *crashTestEnv) enqueue(i int, host string, port int, to string) string {
	q := *e.queue
	if e.unpadded {
		// A stream's bytes: the seal without padding.
		q.Publish = func(name string, sealed []byte) (string, error) {
			tmp := filepath.Join(q.Dir, queuefile.TmpDir, name)
			if err := os.WriteFile(tmp, sealed, 0o640); err != nil {
				return "", err
			}
			return name, os.Rename(tmp, filepath.Join(q.Dir, name))
		}
	}
	name, err := q.Enqueue(strings.NewReader(crashMessage(i, to)), queuefile.Params{Host: host, Port: port, TLS: queuefile.TLSNone, From: "app@example.com", To: []string{to}})
	if err != nil {
		e.t.Fatal(err)
	}
	return name
}

func (e *crashTestEnv) Write(b []byte) (int, error) {
	e.logsMu.Lock()
	defer e.logsMu.Unlock()
	return e.logs.Write(b)
}

// start runs the service, with SMTPQ_CRASH_AT=crashAt if not empty.
func (e *crashTestEnv) start(crashAt string) *exec.Cmd {
	cmd := exec.Command(binary(e.t), "run", "--config", e.cfg)
	cmd.Env = append(os.Environ(), crashEnv+"="+crashAt)
	cmd.Stdout, cmd.Stderr = e, e
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	e.started++
	return cmd
}

// waitExit waits for the process to end by itself (a crash point).
func (e *crashTestEnv) waitExit(cmd *exec.Cmd, within time.Duration) {
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(within):
		cmd.Process.Kill()
		<-done
		e.t.Fatalf("the service did not crash within %v\n%s", within, e.logs)
	}
}

// stop ends the service with SIGTERM and waits.
func (e *crashTestEnv) stop(cmd *exec.Cmd) {
	// SIGTERM before the handler is installed would just kill it.
	deadline := time.Now().Add(30 * time.Second)
	for {
		e.logsMu.Lock()
		up := bytes.Count(e.logs.Bytes(), []byte("smtpq running")) > e.started-1
		e.logsMu.Unlock()
		if up || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			e.t.Errorf("service exit after SIGTERM: %v", err)
		}
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		e.t.Fatal("the service did not stop within 60s of SIGTERM")
	}
}

func (e *crashTestEnv) files(sub string) []string {
	var out []string
	filepath.WalkDir(filepath.Join(e.dir, sub), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == ".tmp" && sub != "queue" {
			return filepath.SkipDir // unfinished copies, not filed messages
		}
		if err == nil && d.Type().IsRegular() && strings.HasSuffix(p, ".eml") {
			out = append(out, filepath.Base(p))
		}
		return nil
	})
	return out
}

// waitFiled waits until n messages are in Sent and Undeliverable together.
func (e *crashTestEnv) waitFiled(n int, within time.Duration) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if len(e.files("sent"))+len(e.files("undeliverable")) >= n {
			return
		}
		time.Sleep(50 * time.Millisecond) // polling the file system: there is no event to wait on across processes
	}
	e.t.Fatalf("only %d sent and %d undeliverable of %d after %v\n%s", len(e.files("sent")), len(e.files("undeliverable")), n, within, e.logs)
}

// checkExactlyOnce checks every name is in Sent or Undeliverable exactly
// once and nothing is left in the working folders.
func (e *crashTestEnv) checkExactlyOnce(names []string) {
	e.t.Helper()
	seen := map[string]int{}
	for _, n := range append(e.files("sent"), e.files("undeliverable")...) {
		seen[n]++
	}
	for _, n := range names {
		if seen[n] != 1 {
			e.t.Errorf("%s filed %d times", n, seen[n])
		}
	}
	if len(seen) != len(names) {
		e.t.Errorf("%d files filed, want %d", len(seen), len(names))
	}
	for _, sub := range []string{"queue"} {
		if left := e.files(sub); len(left) > 0 {
			e.t.Errorf("left in %s (or its working folders): %v", sub, left)
		}
	}
	if st, _ := os.ReadDir(filepath.Join(e.dir, "queue", ".state")); len(st) > 0 {
		e.t.Errorf("%d state files left", len(st))
	}
}

// TestCrashAtEachPoint kills the service at each named point of one
// delivery, restarts it, and checks where the message ends and how often
// the server got it: before the server's 250 it is sent again (once); after
// the 250 is recorded it is filed as sent without being sent again; only a
// crash between the 250 and the record can make a duplicate.
func TestCrashAtEachPoint(t *testing.T) {
	for _, tc := range []struct {
		point    string
		refuse   bool // the server refuses the recipient (550): Undeliverable
		received int  // how many times the server gets the message in all
		where    string
	}{
		{"claimed", false, 1, "sent"},
		{"connected", false, 1, "sent"},
		{"after-mail", false, 1, "sent"},
		{"after-dot", false, 2, "sent"}, // the window: accepted, not yet recorded
		{"after-record", false, 1, "sent"},
		{"archive-write", false, 1, "sent"}, // a Sent copy written as a new file
		{"sent-stripped", false, 1, "sent"}, // a Sent copy made in place: cut, not yet renamed
		{"xml-write", true, 0, "undeliverable"},
	} {
		t.Run(tc.point, func(t *testing.T) {
			srv := smtptest.NewServer(t, func(s *smtptest.Server) {
				s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
					if p.Step == smtptest.Rcpt && strings.HasPrefix(p.Arg, "refuse") {
						return smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
					}
					return smtptest.Fault{}
				}
			})
			e := newCrashTestEnv(t, 1)
			e.unpadded = tc.point == "archive-write"
			if tc.point == "sent-stripped" && !spool.CutsInPlace(e.dir) {
				t.Skipf("the file system of %s cannot cut blocks off a file (tmpfs?): Sent copies are never made in place there", e.dir)
			}
			to := "user@example.org"
			if tc.refuse {
				to = "refuse@example.org"
			}
			name := e.enqueue(1, srv.Host(), srv.Port(), to)
			e.waitExit(e.start(tc.point), 30*time.Second)
			cmd := e.start("")
			e.waitFiled(1, 30*time.Second)
			e.stop(cmd)
			e.checkExactlyOnce([]string{name})
			if got := e.files(tc.where); len(got) != 1 {
				t.Errorf("want the message in %s, have sent=%v undeliverable=%v", tc.where, e.files("sent"), e.files("undeliverable"))
			}
			if got := len(srv.Messages()); got != tc.received {
				t.Errorf("the server received the message %d times, want %d", got, tc.received)
			}
			if tc.where == "sent" {
				// Byte for byte the message, whichever way its copy was made.
				b, err := os.ReadFile(filepath.Join(e.dir, "sent", name))
				if want := crashMessage(1, to); err != nil || string(b) != want {
					t.Errorf("Sent copy: %v\n got %q\nwant %q", err, b, want)
				}
			}
			if tc.where == "undeliverable" {
				xml := filepath.Join(e.dir, "undeliverable", strings.TrimSuffix(name, ".eml")+".xml")
				if b, err := os.ReadFile(xml); err != nil || !bytes.Contains(b, []byte("<smtpqLog>")) {
					t.Errorf("XML log %s: %v %q", xml, err, b)
				}
			}
		})
	}
}

// sink is the SMTP server for the random-kill test: Postfix's smtp-sink if
// installed (a server nobody here wrote), else smtptest. It returns the
// address and a function that counts deliveries per Message-ID.
func sink(t *testing.T) (host string, port int, count func() map[string]int) {
	if path, err := exec.LookPath("smtp-sink"); err == nil {
		// smtp-sink drops to user nobody: its dump folder must be reachable
		// by nobody, which a t.TempDir (under a 0700 folder) is not.
		dump, err := os.MkdirTemp("", "smtpq-crash-sink")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dump) })
		os.Chmod(dump, 0o777)
		port = 20000 + rand.IntN(20000)
		cmd := exec.Command(path, "-u", "nobody", "-d", filepath.Join(dump, "%M."), fmt.Sprintf("127.0.0.1:%d", port), "128")
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		waitListening(t, fmt.Sprintf("127.0.0.1:%d", port))
		t.Logf("sink: Postfix smtp-sink on 127.0.0.1:%d", port)
		return "127.0.0.1", port, func() map[string]int {
			ids := map[string]int{}
			ents, _ := os.ReadDir(dump)
			for _, d := range ents {
				b, _ := os.ReadFile(filepath.Join(dump, d.Name()))
				for _, m := range msgID.FindAllSubmatch(b, -1) {
					ids[string(m[1])]++
				}
			}
			return ids
		}
	}
	srv := smtptest.NewServer(t)
	t.Logf("sink: smtptest (smtp-sink not installed)")
	return srv.Host(), srv.Port(), func() map[string]int {
		ids := map[string]int{}
		for _, m := range srv.Messages() {
			for _, id := range msgID.FindAllSubmatch(m.Data, -1) {
				ids[string(id[1])]++
			}
		}
		return ids
	}
}

var msgID = regexp.MustCompile(`(?m)^Message-ID: <([^>]+)>`)

func waitListening(t *testing.T, addr string) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := smtp.Dial(addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nothing listens on %s", addr)
}

// TestCrashRandomKills enqueues a few hundred messages, kills the service
// with SIGKILL at random moments several times while it drains, restarts
// it, and checks that every message is filed exactly once, nothing is left
// in the working folders, the sink got every Message-ID, and duplicates are
// within what the kills can explain.
func TestCrashRandomKills(t *testing.T) {
	// Enough mail that every kill lands while the service drains.
	const n, kills, threads = 1500, 6, 4
	if testing.Short() {
		t.Skip("slow: run by make test-crash")
	}
	host, port, count := sink(t)
	e := newCrashTestEnv(t, threads)
	var names []string
	for i := range n {
		names = append(names, e.enqueue(i, host, port, fmt.Sprintf("user%d@example.org", i)))
	}
	for k := range kills {
		cmd := e.start("")
		time.Sleep(time.Duration(20+rand.IntN(150)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		t.Logf("kill %d: %d filed so far", k+1, len(e.files("sent"))+len(e.files("undeliverable")))
	}
	cmd := e.start("")
	e.waitFiled(n, 120*time.Second)
	e.stop(cmd)
	e.checkExactlyOnce(names)
	ids := count()
	dups := 0
	for i := range n {
		c := ids[fmt.Sprintf("crash-%d@example.com", i)]
		if c == 0 {
			t.Errorf("message %d never reached the server", i)
		}
		dups += max(c-1, 0)
	}
	// A duplicate needs a kill between the server's 250 and the record of
	// it: at most one per session in the data phase at each kill.
	t.Logf("%d kills, %d duplicates (bound: %d sessions that could be in the data phase)", kills, dups, kills*threads)
	if dups > kills*threads {
		t.Errorf("%d duplicates after %d kills with %d sessions: more than the kills explain", dups, kills, threads)
	}
	if len(e.files("undeliverable")) != 0 {
		t.Errorf("undeliverable: %v\n%s", e.files("undeliverable"), e.logs)
	}
}

// TestCrashNameCollisions drops files by hand, with names that collide with
// messages in flight (a cron job's report.eml) and names with spaces and
// newlines, while the service drains and is killed at random moments: every
// drop ends exactly once in Sent or Undeliverable, with its own content,
// and reaches the server.
func TestCrashNameCollisions(t *testing.T) {
	const background, kills, threads = 400, 5, 4
	host, port, count := sink(t)
	e := newCrashTestEnv(t, threads)
	stage := &queuefile.Queue{Dir: filepath.Join(e.dir, "stage"), Recipients: e.queue.Recipients}
	if err := os.MkdirAll(stage.Dir, 0o750); err != nil {
		t.Fatal(err)
	}
	for i := range background {
		e.enqueue(i, host, port, fmt.Sprintf("user%d@example.org", i))
	}
	names := []string{"report.eml", "my report.eml", "line\nbreak.eml", "tab\there all x.eml", "report.eml"}
	var dropped []string // Message-IDs
	// drop writes a sealed message and gives it the name a producer chose,
	// unless a file of that name still waits in queue_dir (a producer
	// writing over its own waiting file replaces it: its doing, not ours).
	drop := func(i int) {
		id := fmt.Sprintf("drop-%d@example.com", i)
		msg := fmt.Sprintf("From: app@example.com\r\nTo: d%d@example.org\r\nSubject: drop %d\r\nMessage-ID: <%s>\r\n\r\nbody\r\n", i, i, id)
		staged, err := stage.Enqueue(strings.NewReader(msg), queuefile.Params{Host: host, Port: port, TLS: queuefile.TLSNone, From: "app@example.com", To: []string{fmt.Sprintf("d%d@example.org", i)}})
		if err != nil {
			t.Fatal(err)
		}
		src := filepath.Join(stage.Dir, staged)
		dst := filepath.Join(e.dir, "queue", names[i%len(names)])
		for range 50 {
			if err := os.Link(src, dst); err == nil {
				os.Remove(src)
				dropped = append(dropped, id)
				return
			}
			time.Sleep(20 * time.Millisecond) // the namesake is still waiting to be claimed
		}
		os.Remove(src)
	}
	i := 0
	for k := range kills {
		cmd := e.start("")
		for range 4 {
			time.Sleep(time.Duration(10+rand.IntN(60)) * time.Millisecond)
			drop(i)
			i++
		}
		cmd.Process.Kill()
		cmd.Wait()
		t.Logf("kill %d: %d filed so far, %d dropped", k+1, len(e.files("sent"))+len(e.files("undeliverable")), len(dropped))
	}
	cmd := e.start("")
	for range 4 {
		drop(i)
		i++
	}
	e.waitFiled(background+len(dropped), 120*time.Second)
	e.stop(cmd)

	filed := map[string]int{}
	for _, sub := range []string{"sent", "undeliverable"} {
		ents, _ := os.ReadDir(filepath.Join(e.dir, sub))
		for _, d := range ents {
			if !d.Type().IsRegular() || !strings.HasSuffix(d.Name(), ".eml") {
				continue
			}
			b, _ := os.ReadFile(filepath.Join(e.dir, sub, d.Name()))
			for _, m := range msgID.FindAllSubmatch(b, -1) {
				filed[string(m[1])]++
			}
		}
	}
	got := count()
	for _, id := range dropped {
		if filed[id] != 1 {
			t.Errorf("%s filed %d times, want once", id, filed[id])
		}
		if got[id] == 0 {
			t.Errorf("%s never reached the server", id)
		}
	}
	for j := range background {
		if id := fmt.Sprintf("crash-%d@example.com", j); filed[id] != 1 {
			t.Errorf("%s filed %d times, want once", id, filed[id])
		}
	}
	if left := e.files("queue"); len(left) > 0 {
		t.Errorf("left in the queue: %q", left)
	}
	if len(e.files("undeliverable")) != 0 {
		t.Errorf("undeliverable: %q\n%s", e.files("undeliverable"), e.logs)
	}
}
