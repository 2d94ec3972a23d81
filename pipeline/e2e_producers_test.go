//go:build !windows

package pipeline_test

// The producer side of issue 6's fault matrix: files written slowly in
// place, files that vanish, a flood of files whose events the watcher loses,
// entries that are not files, and two service instances on one queue.

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// spoolDirs are env's folders as package stages names them.
func spoolDirs(env *pipelinetest.Env) spool.Dirs {
	return spool.Dirs{Queue: env.Config.QueueDir, Sent: env.Config.SentDir, Undeliverable: env.Config.UndeliverableDir}
}

func TestFileWrittenSlowlyInPlaceIsSent(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "127.0.0.2")
	env := pipelinetest.New(t)
	msg := testMessage(1)
	name, file := sealOutside(t, env, msg, srv.Params("user1@example.org"))
	seal, _ := sealLines(t, file)
	if len(seal) < 5 {
		t.Fatalf("a seal of %d lines is too short for this test", len(seal))
	}
	sealLen := len(bytes.Join(seal, nil))
	// Three chunks: the first ends after whole lines of the seal (the
	// base64 so far decodes, the encryption inside is cut), the second in
	// the middle of the message, the third is the rest.
	cut1 := len(bytes.Join(seal[:3], nil))
	cut2 := sealLen + (len(file)-sealLen)/2
	chunks := [][]byte{file[:cut1], file[cut1:cut2], file[cut2:]}

	env.Start(pipeline.Options{})
	f, err := os.OpenFile(filepath.Join(env.Config.QueueDir, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// looked waits until the service has looked at the file and set it
	// aside n times, or filed it for good.
	looked := func(n int) {
		t.Helper()
		env.WaitFor(fmt.Sprintf("%s to be parked %d times", name, n), func(fs []stages.Filed) bool {
			return count(fs, name, "parked") >= n || count(fs, name, "failed")+count(fs, name, "sent") > 0
		})
		if r := results(env, name); slices.Contains(r, "failed") || slices.Contains(r, "sent") {
			f := env.Wait(name)
			t.Fatalf("%s filed as %s (%v) while still being written; filings %v", name, f.Verdict, f.Job.Outcome.Err, r)
		}
	}
	// The producer's file is claimed (renamed) as soon as it appears; it
	// goes on writing into the same file, wherever it now is.
	parks := 0
	for i, chunk := range chunks {
		if _, err := f.Write(chunk); err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			parks++
			looked(parks) // when it appeared, at the latest with this chunk
		}
		if i == len(chunks)-1 {
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		}
		// Have the service look again now, rather than when the settle
		// time is up, as `smtpq queue retry` would.
		if _, err := spool.RetryMessage(spoolDirs(env), name); err != nil {
			t.Fatalf("after chunk %d: %v", i+1, err)
		}
		if i < len(chunks)-1 {
			parks++
			looked(parks)
		}
	}
	final := env.Wait(name)
	wantSent(t, final)
	if got, err := os.ReadFile(filepath.Join(env.Config.SentDir, name)); err != nil || !bytes.Equal(got, msg) {
		t.Errorf("Sent copy: %v, equal to the message: %v", err, bytes.Equal(got, msg))
	}
	if msgs := srv.Messages(); len(msgs) != 1 || !bytes.Equal(msgs[0].Data, msg) {
		t.Errorf("server received %d messages, want the message once", len(msgs))
	}
	if final.Job.State.Attempts != 1 {
		t.Errorf("attempts = %d, want 1: being set aside is not an attempt", final.Job.State.Attempts)
	}
}

func TestFilesVanishingBeforeClaimLeaveNoTrace(t *testing.T) {
	t.Parallel()
	const n = 300
	srv := startServer(t, "127.0.0.2")
	env := pipelinetest.New(t)
	logger, logs := observed(t)
	env.Start(pipeline.Options{Logger: logger})
	_, file := sealOutside(t, env, testMessage(1), srv.Params("user1@example.org"))
	side := filepath.Join(env.Dir, "producer")
	if err := os.MkdirAll(side, 0o750); err != nil {
		t.Fatal(err)
	}
	removed := map[string]bool{}
	var kept []string // the service took them first
	for range n {
		name, err := queuefile.NewName(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		tmp, path := filepath.Join(side, name), filepath.Join(env.Config.QueueDir, name)
		if err := os.WriteFile(tmp, file, 0o640); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		switch err := os.Remove(path); {
		case err == nil:
			removed[name] = true
		case errors.Is(err, fs.ErrNotExist):
			kept = append(kept, name)
		default:
			t.Fatal(err)
		}
	}
	if len(removed) == 0 {
		t.Fatal("the service claimed every file before it could be removed: the test proves nothing")
	}
	t.Logf("%d files removed before the service claimed them, %d claimed first", len(removed), len(kept))
	// Events are handled in order: once a message queued after all that is
	// sent, every file was looked at.
	last := env.Enqueue(testMessage(2), srv.Params("last@example.org"))
	wantSent(t, env.Wait(last))
	final := env.WaitFinal(len(kept) + 1)
	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}

	for _, name := range kept {
		if r := results(env, name); !slices.Equal(r, []string{"sent"}) {
			t.Errorf("%s, claimed before it vanished: filings %v, want [sent]", name, r)
		}
	}
	for _, f := range env.Filed() {
		if removed[f.Job.Name] {
			t.Errorf("%s vanished before it was claimed, yet was filed: %s", f.Job.Name, f.Verdict)
		}
		if f.Err != nil || f.Verdict == stages.Failed {
			t.Errorf("%s: %s (%v, filing error %v)", f.Job.Name, f.Verdict, f.Job.Outcome.Err, f.Err)
		}
	}
	if len(final) != len(kept)+1 {
		t.Errorf("%d messages filed for good, want %d", len(final), len(kept)+1)
	}
	for _, e := range logs.All() {
		if e.Level >= zapcore.WarnLevel {
			t.Errorf("logged %s: %s %v", e.Level, e.Message, e.ContextMap())
		}
	}
	if n := len(srv.Messages()); n != len(kept)+1 {
		t.Errorf("server received %d messages, want %d", n, len(kept)+1)
	}
	if left := filesUnder(t, env.Config.QueueDir); len(left) != 0 {
		t.Errorf("left in queue_dir: %v", left)
	}
}

func TestSymlinksFIFOsAndDirectoriesAreNeverTouched(t *testing.T) {
	t.Parallel()
	// The message that proves a full rescan ran: refused once, so that it
	// comes back from .deferred, which a rescan of the queue folder reaches.
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) { s.Fault = firstTime(smtptest.Rcpt, tryLater) })
	env := pipelinetest.New(t)
	queue := env.Config.QueueDir
	_, good := sealOutside(t, env, testMessage(9), srv.Params("never@example.org"))
	outside := filepath.Join(env.Dir, "outside")
	if err := os.MkdirAll(outside, 0o750); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(outside, "target.eml")
	if err := os.WriteFile(target, good, 0o640); err != nil {
		t.Fatal(err)
	}

	// special is what the test made at a queue name, to check afterwards.
	type special struct{ kind, link string }
	specials := map[string]special{}
	makeSpecials := func() {
		t.Helper()
		for _, kind := range []string{"symlink", "dirlink", "dangling", "fifo", "dir"} {
			name, err := queuefile.NewName(time.Now())
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(queue, name)
			s := special{kind: kind}
			switch kind {
			case "symlink":
				s.link = target
			case "dirlink":
				s.link = outside
			case "dangling":
				s.link = filepath.Join(outside, "missing.eml")
			}
			switch kind {
			case "fifo":
				err = syscall.Mkfifo(path, 0o640)
			case "dir":
				if err = os.Mkdir(path, 0o750); err == nil {
					err = os.WriteFile(filepath.Join(path, "inner.eml"), good, 0o640)
				}
			default:
				err = os.Symlink(s.link, path)
			}
			if err != nil {
				t.Fatal(err)
			}
			specials[name] = s
		}
	}
	makeSpecials() // found by the start-up scan
	env.Start(pipeline.Options{})
	makeSpecials() // reported by the watcher
	name := env.Enqueue(testMessage(1), srv.Params("user1@example.org"))
	wantRetriedOnce(t, env, name)
	// A FIFO opened for reading would block the service: it would not stop.
	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}

	for _, f := range env.Filed() {
		if _, ok := specials[f.Job.Name]; ok {
			t.Errorf("%s (a %s) was claimed: %s", f.Job.Name, specials[f.Job.Name].kind, f.Verdict)
		}
	}
	for name, s := range specials {
		path := filepath.Join(queue, name)
		fi, err := os.Lstat(path)
		if err != nil {
			t.Errorf("%s (a %s): %v", name, s.kind, err)
			continue
		}
		switch s.kind {
		case "fifo":
			if fi.Mode().Type() != fs.ModeNamedPipe {
				t.Errorf("%s: the FIFO became %v", name, fi.Mode())
			}
		case "dir":
			got, err := os.ReadFile(filepath.Join(path, "inner.eml"))
			if !fi.IsDir() || err != nil || !bytes.Equal(got, good) {
				t.Errorf("%s: the folder or its file was touched (%v, %v)", name, fi.Mode(), err)
			}
		default:
			if link, err := os.Readlink(path); err != nil || link != s.link {
				t.Errorf("%s: the %s now points to %q (%v), want %q", name, s.kind, link, err, s.link)
			}
		}
	}
	if got, err := os.ReadFile(target); err != nil || !bytes.Equal(got, good) {
		t.Errorf("the link's target was touched: %v", err)
	}
	if got := pipelinetest.Files(t, outside); !slices.Equal(got, []string{"target.eml"}) {
		t.Errorf("outside the queue: %v, want only target.eml", got)
	}
	for _, m := range srv.Messages() {
		if !slices.Equal(m.To, []string{"user1@example.org"}) {
			t.Errorf("server received a message for %v: a special entry was followed", m.To)
		}
	}
}

// onTmpfs moves env's spool folders to a tmpfs if the machine has one
// (/dev/shm), where fsync costs nothing: for tests whose subject is not the
// disk but that would otherwise spend their time in fsyncs.
func onTmpfs(t *testing.T) func(*pipeline.Config) {
	return func(c *pipeline.Config) {
		dir, err := os.MkdirTemp("/dev/shm", "smtpq-test-")
		if err != nil {
			t.Logf("no tmpfs, the spool stays in %s: %v", filepath.Dir(c.QueueDir), err)
			return
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		c.QueueDir = filepath.Join(dir, "queue")
		c.SentDir = filepath.Join(dir, "sent")
		c.UndeliverableDir = filepath.Join(dir, "undeliverable")
	}
}

// maxQueuedEvents is the kernel's bound on inotify events waiting to be
// read, beyond which events are dropped.
func maxQueuedEvents(t *testing.T) int {
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	if err != nil {
		t.Logf("inotify queue size unknown: %v", err)
		return 16384
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestTenThousandFilesWithLostEventsAreAllSent(t *testing.T) {
	t.Parallel()
	const n = 10000
	const overflowMsg = "queue folder watcher"
	srv := startServer(t, "127.0.0.2")
	env := pipelinetest.New(t, onTmpfs(t), func(c *pipeline.Config) {
		c.MaxThreads = 8
		c.Hosts["default"] = hostLimits(8)
	})
	logger, logs, overflowed := hookedLogger(t, zapcore.WarnLevel, overflowMsg)

	// Every filing waits at the gate until the files are in place: the
	// pipeline fills up, the Scanner stops reading the watcher's events,
	// and the kernel drops those beyond its queue.
	gate := newReleaser()
	gated := newSignal()
	var sent atomic.Int32
	allSent := newSignal()
	env.Start(pipeline.Options{Logger: logger, OnFiled: func(f stages.Filed) {
		gated.Fire()
		gate.Wait()
		if f.Verdict == stages.Sent && f.Err == nil && sent.Add(1) == n+1 {
			allSent.Fire()
		}
	}})
	t.Cleanup(gate.Open)
	first := env.Enqueue(testMessage(0), srv.Params("first@example.org"))
	gated.await(t, "the first filing")

	// One sealed message, copied to n names beside the queue.
	_, file := sealOutside(t, env, testMessage(1), srv.Params("user1@example.org"))
	side := filepath.Join(filepath.Dir(env.Config.QueueDir), "producer")
	if err := os.MkdirAll(side, 0o750); err != nil {
		t.Fatal(err)
	}
	names := make([]string, n)
	for i := range names {
		name, err := queuefile.NewName(time.Now())
		if err != nil {
			t.Fatal(err)
		}
		names[i] = name
		if err := os.WriteFile(filepath.Join(side, name), file, 0o640); err != nil {
			t.Fatal(err)
		}
	}
	// Renamed in at once, then touched (an attribute change is an event
	// too) until the events are sure to be more than the kernel queues
	// while the Scanner can take at most a few thousand files.
	for _, name := range names {
		if err := os.Rename(filepath.Join(side, name), filepath.Join(env.Config.QueueDir, name)); err != nil {
			t.Fatal(err)
		}
	}
	limit := maxQueuedEvents(t)
	rounds := (limit + n/2) / (n / 2)
	if rounds > 20 {
		t.Logf("inotify queues %d events: not forcing an overflow", limit)
		rounds = 0
	}
	for r := range rounds {
		for _, name := range names {
			// Fails harmlessly for a file the service has claimed.
			os.Chmod(filepath.Join(env.Config.QueueDir, name), fs.FileMode(0o600+0o040*(r%2)))
		}
	}
	gate.Open()

	select {
	case <-allSent.ch:
	case <-time.After(2 * pipelinetest.WaitTimeout):
		t.Fatalf("after %v: %d of %d messages sent", 2*pipelinetest.WaitTimeout, sent.Load(), n+1)
	}
	if rounds > 0 {
		overflowed.await(t, "the watcher to report lost events")
		t.Logf("watcher: %v", logs.FilterMessage(overflowMsg).All()[0].ContextMap())
	}
	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
	sentFiles := pipelinetest.Files(t, env.Config.SentDir)
	if len(sentFiles) != n+1 {
		t.Errorf("Sent holds %d files, want %d", len(sentFiles), n+1)
	}
	want := append(slices.Clone(names), first)
	slices.Sort(want)
	slices.Sort(sentFiles)
	if !slices.Equal(sentFiles, want) {
		t.Errorf("Sent does not hold exactly the queued names")
	}
	if got := len(srv.Messages()); got != n+1 {
		t.Errorf("server received %d messages, want %d", got, n+1)
	}
	if left := filesUnder(t, env.Config.QueueDir); len(left) != 0 {
		t.Errorf("%d files left in queue_dir, such as %s", len(left), left[0])
	}
	for _, e := range logs.All() {
		if e.Level >= zapcore.ErrorLevel {
			t.Errorf("logged %s: %s %v", e.Level, e.Message, e.ContextMap())
		}
	}
}

func TestTwoInstancesSendEachMessageOnce(t *testing.T) {
	t.Parallel()
	const n = 500
	srv := startServer(t, "127.0.0.2")
	a := pipelinetest.New(t, onTmpfs(t))
	b := pipelinetest.NewShared(t, a.Config)
	var mu sync.Mutex
	filed := map[string][]string{} // name -> "a:sent", ...
	done := newSignal()
	sent := 0
	onFiled := func(who string) func(stages.Filed) {
		return func(f stages.Filed) {
			mu.Lock()
			defer mu.Unlock()
			filed[f.Job.Name] = append(filed[f.Job.Name], who+":"+f.Verdict.String())
			if f.Verdict == stages.Sent && f.Err == nil {
				if sent++; sent == n {
					done.Fire()
				}
			}
		}
	}
	quiet := func() *zap.Logger { return zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)) }
	a.Start(pipeline.Options{Logger: quiet(), OnFiled: onFiled("a")})
	b.Start(pipeline.Options{Logger: quiet(), OnFiled: onFiled("b")})
	names := make([]string, n)
	for i := range names {
		names[i] = a.Enqueue(testMessage(i), srv.Params(fmt.Sprintf("user%d@example.org", i)))
	}
	done.await(t, fmt.Sprintf("%d messages to be sent", n))
	if err := a.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}

	ids := map[string]int{}
	for _, m := range srv.Messages() {
		id := messageID.FindSubmatch(m.Data)
		if id == nil {
			t.Fatalf("a message without a Message-ID: %q", m.Data)
		}
		ids[string(id[1])]++
	}
	for i := range n {
		if id := fmt.Sprintf("<m%d@example.com>", i); ids[id] != 1 {
			t.Errorf("%s arrived %d times", id, ids[id])
		}
	}
	if len(ids) != n {
		t.Errorf("%d distinct messages arrived, want %d", len(ids), n)
	}
	by := map[string]int{}
	mu.Lock()
	for _, name := range names {
		got := filed[name]
		if len(got) != 1 || !strings.HasSuffix(got[0], ":sent") {
			t.Errorf("%s filed %v, want sent once", name, got)
			continue
		}
		by[got[0][:1]]++
	}
	mu.Unlock()
	t.Logf("sent by instance: %v", by)
	if by["a"] == 0 || by["b"] == 0 {
		t.Errorf("one instance sent everything (%v): the test proves nothing", by)
	}
	if got := pipelinetest.Files(t, a.Config.SentDir); len(got) != n {
		t.Errorf("Sent holds %d files, want %d", len(got), n)
	}
	if left := filesUnder(t, a.Config.QueueDir); len(left) != 0 {
		t.Errorf("left in queue_dir: %v", left)
	}
}
