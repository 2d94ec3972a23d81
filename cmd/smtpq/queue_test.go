package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// queueEnvT is a pipeline in temporary folders (pipelinetest) with its
// configuration written as YAML, for the CLI.
type queueEnvT struct {
	*pipelinetest.Env
	cli *testEnv
}

// newQueueTestEnv makes the environment; call it before anything that
// starts goroutines, so that the leak check it registers runs last.
func newQueueTestEnv(t *testing.T, configure ...func(*pipeline.Config)) *queueEnvT {
	t.Helper()
	t.Setenv("SMTPQ_CONFIG", "")
	env := pipelinetest.New(t, configure...)
	b, err := env.Config.Masked()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(env.Config.Path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return &queueEnvT{Env: env, cli: &testEnv{t: t, dir: env.Dir, cfgPath: env.Config.Path, queue: env.Config.QueueDir}}
}

// q runs "smtpq queue ARGS... --config CFG".
func (e *queueEnvT) q(args ...string) (int, string, string) {
	e.cli.t.Helper()
	return e.cli.smtpq("", append([]string{"queue"}, args...)...)
}

// ok runs a queue command that must succeed without a word on stderr.
func (e *queueEnvT) ok(args ...string) string {
	e.cli.t.Helper()
	code, out, errOut := e.q(args...)
	if code != 0 || errOut != "" {
		e.cli.t.Fatalf("queue %q: exit %d, stderr %q", args, code, errOut)
	}
	return out
}

// noLeaks checks, when the test ends (after every other cleanup), that no
// goroutine was left behind.
func noLeaks(t *testing.T) {
	opt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, opt) })
}

func testMail(i int) []byte {
	return fmt.Appendf(nil, "From: app@example.com\r\nTo: user%d@example.org\r\nSubject: test %d\r\nMessage-ID: <m%d@example.com>\r\n\r\nHello %d.\r\n", i, i, i, i)
}

// listLines returns the data lines of "queue list" by message name.
func listLines(t *testing.T, out string) map[string][]string {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "NAME ") {
		t.Fatalf("list: no header: %q", out)
	}
	got := map[string][]string{}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if len(f) < 11 {
			t.Fatalf("list line %q: %d fields", l, len(f))
		}
		got[f[0]] = f
	}
	return got
}

func listJSON(t *testing.T, out string) map[string]map[string]any {
	t.Helper()
	got := map[string]map[string]any{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("list --json line %q: %v", sc.Text(), err)
		}
		got[m["name"].(string)] = m
	}
	return got
}

func TestQueueCommandsWithRunningService(t *testing.T) {
	noLeaks(t)
	srv := smtptest.NewServer(t, func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			switch {
			case p.Step == smtptest.Rcpt && p.Arg == "later@example.org":
				return smtptest.Reply(451, smtp.EnhancedCode{4, 2, 1}, "mailbox busy, try later")
			case p.Step == smtptest.Rcpt && p.Arg == "nobody@example.org":
				return smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
			}
			return smtptest.Fault{}
		}
	})
	// A second host, with logins: reached through a relay profile.
	authSrv := smtptest.NewServer(t, func(s *smtptest.Server) {
		s.Addr = "127.0.0.2:0"
		s.Users = map[string]string{"relay-user": relayPassword}
	})
	var pwFile string
	e := newQueueTestEnv(t, func(c *pipeline.Config) {
		c.Retry = pipeline.RetryConfig{MinBackoff: pipeline.Duration(time.Hour), MaxBackoff: pipeline.Duration(time.Hour),
			MaxAttempts: 5, MaxAge: pipeline.Duration(24 * time.Hour)}
		pwFile = filepath.Join(filepath.Dir(c.QueueDir), "relay.pw")
		c.Relays = map[string]pipeline.Relay{"main": {Host: authSrv.Host(), Port: authSrv.Port(), TLS: "none",
			Username: "relay-user", PasswordFile: pwFile}}
	})
	if err := os.WriteFile(pwFile, []byte(relayPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var outputs []string
	run := func(args ...string) string {
		t.Helper()
		out := e.ok(args...)
		outputs = append(outputs, out)
		return out
	}

	// Queued while the service is not running yet.
	sent := e.Enqueue(testMail(1), srv.Params("ok@example.org"))
	later := e.Enqueue(testMail(2), srv.Params("later@example.org"))
	sched := e.Enqueue(testMail(3), func() queuefile.Params {
		p := srv.Params("ok@example.org")
		p.NotBefore = time.Now().Add(time.Hour)
		return p
	}())
	relayed := e.Enqueue(testMail(4), queuefile.Params{Relay: "main", From: "", To: []string{"a@example.org", "b@example.org"}})
	failed := e.Enqueue(testMail(5), srv.Params("nobody@example.org"))
	login := authSrv.Params("c@example.org")
	login.Username, login.Password = "relay-user", queuefile.NewSecret(relayPassword)
	inline := e.Enqueue(testMail(6), login)
	all := []string{sent, later, sched, relayed, failed, inline}

	lines := listLines(t, run("list"))
	if len(lines) != len(all) {
		t.Fatalf("list: %d lines, want %d", len(lines), len(all))
	}
	for _, n := range all {
		l := lines[n]
		if l == nil || l[2] != "queued" {
			t.Errorf("list: %s: %q, want queued", n, l)
		}
	}
	if l := lines[sent]; l[3] != srv.Host() || l[4] != "app@example.com" || l[5] != "1" {
		t.Errorf("list: %q: want host %s, sender, 1 recipient", l, srv.Host())
	}
	if l := lines[relayed]; l[3] != authSrv.Host()+"(main)" || l[4] != "app@example.com" || l[5] != "2" {
		t.Errorf("list: relay message %q: want host %s(main), 2 recipients", l, authSrv.Host())
	}
	js := listJSON(t, run("list", "--json"))
	if m := js[relayed]; m["state"] != "queued" || m["host"] != authSrv.Host() || m["relay"] != "main" || m["recipients"] != 2.0 {
		t.Errorf("list --json: relay message %v", m)
	}
	if m := js[inline]; m["user"] != nil || m["password"] != nil {
		t.Errorf("list --json shows credentials: %v", m)
	}

	// Hold one before the service starts; it must stay held.
	if out := run("hold", relayed); !strings.Contains(out, "held "+relayed) {
		t.Errorf("hold: %q", out)
	}
	if out := run("hold", filepath.Join(e.Config.QueueDir, spool.HoldDir, relayed)); !strings.Contains(out, "already held") {
		t.Errorf("hold twice (by path): %q", out)
	}
	if l := listLines(t, run("list", "--state", "held")); len(l) != 1 || l[relayed] == nil {
		t.Errorf("list --state held: %v", l)
	}

	e.Start(pipeline.Options{})
	for n, want := range map[string]string{sent: "sent", failed: "failed", inline: "sent"} {
		if f := e.Wait(n); f.Verdict.String() != want {
			t.Fatalf("%s: %s (%v), want %s", n, f.Verdict, f.Job.Outcome.Err, want)
		}
	}
	filedAs := func(name, result string) func([]stages.Filed) bool {
		return func(fs []stages.Filed) bool {
			for _, f := range fs {
				if f.Job.Name == name && f.Verdict.String() == result {
					return true
				}
			}
			return false
		}
	}
	e.WaitFor("the 451 message to be deferred", filedAs(later, "deferred"))
	e.WaitFor("the scheduled message to be parked", filedAs(sched, "parked"))

	lines = listLines(t, run("list"))
	if len(lines) != 3 || lines[later] == nil || lines[sched] == nil || lines[relayed] == nil {
		t.Fatalf("list after sending: %v", lines)
	}
	if l := lines[later]; l[2] != "deferred" || l[8] != "1" || !strings.HasPrefix(l[9], "+") || !strings.Contains(strings.Join(l[10:], " "), "451") {
		t.Errorf("list: deferred message %q: want 1 attempt, a next attempt and the 451", l)
	}
	if l := lines[sched]; l[2] != "deferred" || l[8] != "0" {
		t.Errorf("list: scheduled message %q", l)
	}
	if l := listLines(t, run("list", "--state", "sent")); len(l) != 2 || l[sent] == nil || l[inline] == nil || l[sent][3] != "-" {
		t.Errorf("list --state sent: %v", l)
	}
	if l := listLines(t, run("list", "--state", "undeliverable")); len(l) != 1 || !strings.Contains(strings.Join(l[failed], " "), "550") {
		t.Errorf("list --state undeliverable: %v", l)
	}
	if l := listLines(t, run("list", "--state", "all", "--host", "127.0.0.2")); len(l) != 1 || l[relayed] == nil {
		t.Errorf("list --host 127.0.0.2: %v (the Sent copy of the inline message has no host)", l)
	}

	// status answers "what happened to the file enqueue returned?"
	out := run("status", sent)
	if !strings.HasPrefix(out, sent+": sent: "+filepath.Join(e.Config.SentDir, sent)) {
		t.Errorf("status of a sent message: %q", out)
	}
	out = run("status", later)
	if !regexp.MustCompile(`(?m)^  attempts: +1$`).MatchString(out) {
		t.Errorf("status of a deferred message: not 1 attempt: %q", out)
	}
	for _, want := range []string{later + ": deferred until ", "451", "try later", "later@example.org"} {
		if !strings.Contains(out, want) {
			t.Errorf("status of a deferred message: no %q in %q", want, out)
		}
	}
	out = run("status", filepath.Join(e.Config.UndeliverableDir, strings.TrimSuffix(failed, ".eml")+".xml"))
	for _, want := range []string{failed + ": undeliverable: " + filepath.Join(e.Config.UndeliverableDir, failed), "550", "no such user", "log:"} {
		if !strings.Contains(out, want) {
			t.Errorf("status of an undeliverable message: no %q in %q", want, out)
		}
	}
	if out = run("status", sched); !strings.Contains(out, "scheduled: not before") {
		t.Errorf("status of a scheduled message: %q", out)
	}
	if out = run("status", relayed); !strings.Contains(out, relayed+": held") || !regexp.MustCompile(`(?m)^  user: +relay-user$`).MatchString(out) {
		t.Errorf("status of a held message: %q", out)
	}
	var st struct {
		Name       string   `json:"name"`
		State      string   `json:"state"`
		Attempts   int      `json:"attempts"`
		LastError  string   `json:"last_error"`
		Recipients int      `json:"recipients"`
		List       []string `json:"recipient_list"`
	}
	if err := json.Unmarshal([]byte(run("status", "--json", later)), &st); err != nil || st.State != "deferred" || st.Attempts != 1 ||
		!strings.Contains(st.LastError, "451") || st.Recipients != 1 || !slices.Equal(st.List, []string{"later@example.org"}) {
		t.Errorf("status --json: %+v, %v", st, err)
	}

	// stats
	var stats struct {
		States map[string]struct{ Count int }            `json:"states"`
		Hosts  map[string]map[string]struct{ Count int } `json:"hosts"`
	}
	if err := json.Unmarshal([]byte(run("stats", "--json")), &stats); err != nil {
		t.Fatal(err)
	}
	for state, n := range map[string]int{"queued": 0, "active": 0, "deferred": 2, "held": 1, "sent": 2, "undeliverable": 1} {
		if got := stats.States[state].Count; got != n {
			t.Errorf("stats: %s %d, want %d", state, got, n)
		}
	}
	if stats.Hosts[srv.Host()]["deferred"].Count != 2 || stats.Hosts[srv.Host()]["undeliverable"].Count != 1 || stats.Hosts["127.0.0.2"]["held"].Count != 1 {
		t.Errorf("stats per host: %+v", stats.Hosts)
	}
	if out := run("stats"); !regexp.MustCompile(`(?m)^deferred +2 `).MatchString(out) || !strings.Contains(out, "127.0.0.2") {
		t.Errorf("stats: %q", out)
	}

	// retry cannot send a scheduled message early.
	if code, _, errOut := e.q("retry", sched); code != 1 || !strings.Contains(errOut, "scheduled") {
		t.Errorf("retry of a scheduled message: exit %d, %q", code, errOut)
	}

	// release: the held message goes now.
	if out := run("release", relayed); !strings.Contains(out, "released") {
		t.Errorf("release: %q", out)
	}
	if f := e.Wait(relayed); f.Verdict != stages.Sent {
		t.Fatalf("released message: %s (%v)", f.Verdict, f.Job.Outcome.Err)
	}

	// requeue: it fails again, with a new log; the old one is history.
	if out := run("requeue", failed); !strings.Contains(out, filepath.Join(e.Config.QueueDir, failed)) {
		t.Errorf("requeue: %q", out)
	}
	e.WaitFor("the requeued message to fail again", func(fs []stages.Filed) bool {
		n := 0
		for _, f := range fs {
			if f.Job.Name == failed && f.Verdict == stages.Failed {
				n++
			}
		}
		return n == 2
	})
	logs, _ := filepath.Glob(filepath.Join(e.Config.UndeliverableDir, strings.TrimSuffix(failed, ".eml")+".*"))
	if len(logs) != 3 {
		t.Errorf("undeliverable files of the requeued message: %q, want .eml, .xml and a history .xml", logs)
	}
	if code, _, errOut := e.q("requeue", failed, "--all"); code != 2 || !strings.Contains(errOut, "only one of") {
		t.Errorf("requeue NAME --all: exit %d, %q", code, errOut)
	}

	// purge
	if out := run("purge", "--state", "sent", "--older-than", "1h"); !strings.HasPrefix(out, "purged 0 messages") {
		t.Errorf("purge 1h: %q", out)
	}
	if out := run("purge", "--state", "sent", "--older-than", "0s"); !strings.HasPrefix(out, "purged 3 messages") {
		t.Errorf("purge sent: %q", out)
	}
	if left := pipelinetest.Files(t, e.Config.SentDir); len(left) != 0 {
		t.Errorf("left in Sent: %v", left)
	}
	if out := run("purge", "--state", "undeliverable", "--older-than", "0s"); !strings.HasPrefix(out, "purged 1 messages and 1 XML logs") {
		t.Errorf("purge undeliverable: %q", out)
	}
	if out := run("status", later); !strings.Contains(out, "deferred") {
		t.Errorf("purge touched the queue: %q", out)
	}

	for _, o := range outputs {
		if strings.Contains(o, relayPassword) {
			t.Errorf("output shows a password: %q", o)
		}
	}
}

// Retry makes a deferred message go before its backoff (1h: only retry
// can make it go within the test).
func TestQueueRetrySendsBeforeBackoff(t *testing.T) {
	noLeaks(t)
	var mu sync.Mutex
	first := true
	srv := smtptest.NewServer(t, func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			mu.Lock()
			defer mu.Unlock()
			if p.Step == smtptest.Mail && first {
				first = false
				return smtptest.Reply(451, smtp.EnhancedCode{4, 3, 0}, "not now")
			}
			return smtptest.Fault{}
		}
	})
	e := newQueueTestEnv(t, func(c *pipeline.Config) {
		c.Retry = pipeline.RetryConfig{MinBackoff: pipeline.Duration(time.Hour), MaxBackoff: pipeline.Duration(time.Hour),
			MaxAttempts: 5, MaxAge: pipeline.Duration(24 * time.Hour)}
	})
	e.Start(pipeline.Options{})
	name := e.Enqueue(testMail(1), srv.Params("user1@example.org"))
	e.WaitFor("a deferral", func(fs []stages.Filed) bool { return len(fs) > 0 })
	if f := e.Filed()[0]; f.Verdict != stages.Deferred || f.Job.State.NextAttempt.Before(time.Now().Add(50*time.Minute)) {
		t.Fatalf("first filing: %s, next attempt %v", f.Verdict, f.Job.State.NextAttempt)
	}
	if out := e.ok("status", name); !strings.Contains(out, "deferred until") || !strings.Contains(out, "not now") {
		t.Errorf("status: %q", out)
	}
	out := e.ok("retry", name)
	if !strings.Contains(out, "moved from deferred until") || !strings.Contains(out, "lift any pause of "+srv.Host()) {
		t.Errorf("retry: %q", out)
	}
	if f := e.Wait(name); f.Verdict != stages.Sent || f.Job.State.Attempts != 2 {
		t.Fatalf("after retry: %s after %d attempts, want sent after 2", f.Verdict, f.Job.State.Attempts)
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("server got %d messages", n)
	}
	if code, _, errOut := e.q("retry", name); code != 1 || !strings.Contains(errOut, "sent already") {
		t.Errorf("retry of a sent message: exit %d, %q", code, errOut)
	}
}

var messageID = regexp.MustCompile(`(?m)^Message-ID: <([^>]+)>`)

// Holding every message while the service claims them, 200 at once, to a
// server that stalls: afterwards each message is sent exactly once.
func TestQueueHoldRacesWithService(t *testing.T) {
	noLeaks(t)
	gate := make(chan struct{})
	var once sync.Once
	open := func() { once.Do(func() { close(gate) }) }
	srv := smtptest.NewServer(t, func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Mail {
				select {
				case <-gate:
				case <-time.After(pipelinetest.WaitTimeout):
				}
			}
			return smtptest.Fault{}
		}
	})
	e := newQueueTestEnv(t, func(c *pipeline.Config) {
		c.Retry.MaxAttempts = 10
		c.Timeouts.Command = pipeline.Duration(2 * pipelinetest.WaitTimeout)
	})
	e.Start(pipeline.Options{})
	t.Cleanup(open) // before the pipeline and the server stop

	const n = 200
	names := make([]string, 0, n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range n {
			name, err := e.Queue.Enqueue(strings.NewReader(string(testMail(i))), srv.Params(fmt.Sprintf("user%d@example.org", i)))
			if err != nil {
				t.Error(err)
				return
			}
			names = append(names, name)
		}
	}()
	holds := 0
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		default:
		}
		code, out, errOut := e.q("hold", "--all")
		if code != 0 || !strings.HasPrefix(out, "held ") {
			t.Fatalf("hold --all: exit %d, %q %q", code, out, errOut)
		}
		holds++
	}
	if len(names) != n {
		t.Fatalf("enqueued %d of %d", len(names), n)
	}

	// Every message is held or with the service, once.
	where := map[string]string{}
	var active string
	for _, name := range names {
		loc, err := spool.LocateMessage(e.Dirs(), name)
		if err != nil || len(loc) != 1 || (loc[0].Place != spool.PlaceHeld && loc[0].Place != spool.PlaceActive) {
			t.Fatalf("%s is at %+v (%v), want held or active", name, loc, err)
		}
		where[name] = string(loc[0].Place)
		if loc[0].Place == spool.PlaceActive {
			active = name
		}
	}
	held := 0
	for _, p := range where {
		if p == "held" {
			held++
		}
	}
	t.Logf("%d hold --all runs; %d held, %d with the service", holds, held, n-held)
	if active != "" {
		// The service has it: the command asks the service to hold it
		// (which it does only if the message is not being sent). The
		// service may also have held it meanwhile, on one of the hold
		// --all requests above: then the command finds it held.
		code, out, errOut := e.q("hold", active)
		switch {
		case code != 0:
			t.Errorf("hold of an active message: exit %d, %q %q", code, out, errOut)
		case strings.Contains(out, "with the running service"):
		case strings.Contains(out, "is already held"):
			if loc, err := spool.LocateMessage(e.Dirs(), active); err != nil || len(loc) != 1 || loc[0].Place != spool.PlaceHeld {
				t.Errorf("hold said %q but %s is at %+v (%v)", out, active, loc, err)
			}
		default:
			t.Errorf("hold of an active message: %q", out)
		}
	}
	// The service holds, asynchronously, what it had in memory when asked:
	// release until everything is sent, then check each arrived once.
	open()
	deadline := time.Now().Add(pipelinetest.WaitTimeout)
	for {
		// The service may be holding what it had in memory at this very
		// moment: a release that races with it can report a message it
		// could not move; the next round gets it.
		if code, out, errOut := e.q("release", "--all"); code != 0 {
			t.Logf("release --all: exit %d, %q %q", code, out, errOut)
		}
		sent := 0
		for _, f := range e.Filed() {
			if f.Verdict == stages.Sent && f.Err == nil {
				sent++
			}
		}
		if sent >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d sent after releasing", sent, n)
		}
		time.Sleep(100 * time.Millisecond) // polling a folder the service fills: no event to wait on from here
	}
	if err := e.Stop(); err != nil {
		t.Fatal(err)
	}

	// Exactly once: in Sent, and at the server.
	got := pipelinetest.Files(t, e.Config.SentDir)
	sort.Strings(got)
	want := slices.Clone(names)
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("Sent holds %d files, want the %d names enqueued", len(got), len(want))
	}
	ids := map[string]int{}
	for _, m := range srv.Messages() {
		if id := messageID.FindSubmatch(m.Data); id != nil {
			ids[string(id[1])]++
		}
	}
	for i := range n {
		if c := ids[fmt.Sprintf("m%d@example.com", i)]; c != 1 {
			t.Errorf("message %d reached the server %d times", i, c)
		}
	}
	if len(ids) != n {
		t.Errorf("the server got %d distinct messages, want %d", len(ids), n)
	}
	for _, dir := range []string{e.Config.QueueDir, filepath.Join(e.Config.QueueDir, spool.HoldDir)} {
		if left := pipelinetest.Files(t, dir); len(left) != 0 {
			t.Errorf("left in %s: %v", dir, left)
		}
	}
}

// Dirs returns the spool's folders.
func (e *queueEnvT) Dirs() spool.Dirs {
	return spool.Dirs{Queue: e.Config.QueueDir, Sent: e.Config.SentDir, Undeliverable: e.Config.UndeliverableDir}
}
