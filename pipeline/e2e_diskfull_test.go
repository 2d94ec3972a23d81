//go:build linux

package pipeline_test

// Full disks and failing fsyncs (issue 10, "Storage"). A full folder is a
// real one: a small tmpfs mounted for the test (CI runs the tests as root;
// elsewhere these tests skip). An fsync cannot be made to fail on a real
// file system, so that one goes through pipeline.Options.SyncFault.
//
// Each case breaks the storage while a message is on its way, and checks:
// the message stays in the queue's folders while filing fails, is tried
// again, is never lost and ends in Sent exactly once when the storage
// works again, without being sent to the server a second time; /healthz
// is 503 while broken and 200 after; nothing half-written is left in the
// folders, .tmp included.

import (
	"bytes"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// smallFS mounts a tmpfs of size (as mount's size= option) on a new folder
// in the test's temporary folder, and unmounts it when the test ends.
func smallFS(t *testing.T, size string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a small file system to fill needs root (CI runs the tests as root)")
	}
	dir := filepath.Join(t.TempDir(), "fs")
	if err := os.Mkdir(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size="+size+",mode=0750"); err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("root, but may not mount a tmpfs here (no CAP_SYS_ADMIN): %v", err)
		}
		t.Fatalf("mounting a tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

// fill writes a file into dir until its file system is full, and returns
// the function that frees the space again.
func fill(t *testing.T, dir string) (free func()) {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for {
		if _, err = f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling %s: %v, want ENOSPC", dir, err)
	}
	// Whatever page is left half used: a new file of a page must fail.
	if err := os.WriteFile(filepath.Join(dir, "probe"), buf[:4096], 0o600); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("%s is not full: writing a page: %v", dir, err)
	}
	os.Remove(filepath.Join(dir, "probe"))
	return func() {
		t.Helper()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
	}
}

// skewClock is the real clock plus an offset a test can move forward:
// /healthz remembers a failed filing for a minute, and a test should not
// wait that minute out.
type skewClock struct{ off atomic.Int64 }

func (c *skewClock) Now() time.Time                         { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *skewClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (c *skewClock) Skip(d time.Duration)                   { c.off.Add(int64(d)) }

var _ stages.Clock = (*skewClock)(nil)

// syncSwitch fails the fsyncs of paths under one of its folders while on.
type syncSwitch struct {
	on    atomic.Bool
	under []string
	fails atomic.Int32
}

func (s *syncSwitch) fault(path string) error {
	if !s.on.Load() {
		return nil
	}
	for _, dir := range s.under {
		if path == dir || strings.HasPrefix(path, dir+string(filepath.Separator)) {
			s.fails.Add(1)
			return syscall.EIO
		}
	}
	return nil
}

// diskFault is one way the storage breaks.
type diskFault struct {
	name string
	// configure places the folders (on small file systems) before start.
	configure func(t *testing.T, c *pipeline.Config)
	// sync, if set, is given to the pipeline as Options.SyncFault.
	sync *syncSwitch
	// breakIt breaks the storage; it returns the repair.
	breakIt func(t *testing.T, c *pipeline.Config) (repair func())
	// probe: /healthz's write probe sees the breakage itself (a full
	// folder), not only the failed filings (a failing fsync).
	probe bool
	// enqueueFails: a producer cannot enqueue meanwhile (the queue's file
	// system is full).
	enqueueFails bool
	// transient: the server answers 451 to the first attempt, so that the
	// message must be deferred (written to the queue's folders) first.
	transient bool
	// mayFile: filing may succeed even while broken (a full file system
	// that holds Sent and the queue: the Sent copy is written into a
	// filed queue copy's inode, kept for reuse, and needs no new space).
	mayFile bool
	// stuck: the queue's own folders cannot be written, so the Archiver
	// cannot defer the message after the failed filing: it stays in the
	// instance's active folder, safe, and the Archiver tries its filing
	// again while the service runs (stages.Archiver.Run).
	stuck bool
}

func TestStorageFaultsKeepTheMessage(t *testing.T) {
	sentOnly := &syncSwitch{}
	everything := &syncSwitch{}
	for _, fault := range []diskFault{
		{
			name: "sent folder full",
			configure: func(t *testing.T, c *pipeline.Config) {
				c.SentDir = filepath.Join(smallFS(t, "1m"), "sent")
			},
			breakIt: func(t *testing.T, c *pipeline.Config) func() { return fill(t, filepath.Dir(c.SentDir)) },
			probe:   true,
		},
		{
			name: "queue folder full",
			configure: func(t *testing.T, c *pipeline.Config) {
				c.QueueDir = filepath.Join(smallFS(t, "1m"), "queue")
			},
			breakIt:      func(t *testing.T, c *pipeline.Config) func() { return fill(t, filepath.Dir(c.QueueDir)) },
			probe:        true,
			enqueueFails: true,
			transient:    true,
			stuck:        true,
		},
		{
			name: "queue and sent on one full file system",
			configure: func(t *testing.T, c *pipeline.Config) {
				fs := smallFS(t, "1m")
				c.QueueDir, c.SentDir = filepath.Join(fs, "queue"), filepath.Join(fs, "sent")
			},
			breakIt:      func(t *testing.T, c *pipeline.Config) func() { return fill(t, filepath.Dir(c.QueueDir)) },
			probe:        true,
			enqueueFails: true,
			mayFile:      true,
		},
		{
			name: "fsync fails in sent",
			configure: func(t *testing.T, c *pipeline.Config) {
				sentOnly.under = []string{c.SentDir}
			},
			sync: sentOnly,
			breakIt: func(t *testing.T, c *pipeline.Config) func() {
				sentOnly.on.Store(true)
				return func() { sentOnly.on.Store(false) }
			},
		},
		{
			name: "fsync fails everywhere",
			configure: func(t *testing.T, c *pipeline.Config) {
				everything.under = []string{c.QueueDir, c.SentDir, c.UndeliverableDir}
			},
			sync: everything,
			breakIt: func(t *testing.T, c *pipeline.Config) func() {
				everything.on.Store(true)
				return func() { everything.on.Store(false) }
			},
			transient: true,
			stuck:     true,
		},
	} {
		t.Run(fault.name, func(t *testing.T) {
			testStorageFault(t, fault)
		})
	}
}

func testStorageFault(t *testing.T, fault diskFault) {
	var rcpts atomic.Int32
	srv := startServer(t, "127.0.0.1", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Rcpt && p.Arg == "user1@example.org" {
				if rcpts.Add(1) == 1 && fault.transient {
					return tryLater
				}
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		c.Metrics.Listen = "127.0.0.1:0"
		fault.configure(t, c)
	})
	clock := &skewClock{}
	opts := pipeline.Options{Clock: clock}
	if fault.sync != nil {
		opts.SyncFault = fault.sync.fault
	}
	env.Start(opts)
	cfg := env.Config
	wantSent(t, env.Wait(env.Enqueue(testMessage(0), srv.Params("warmup@example.org"))))
	health := "http://" + env.Pipeline.MetricsAddr().String() + "/healthz"
	if code, body := get(t, health); code != http.StatusOK {
		t.Fatalf("/healthz = %d %q before anything broke", code, body)
	}

	// The message is sealed and written under the queue's .tmp first, so
	// that it can be put into a full queue (a rename takes no space).
	msg := testMessage(1)
	name, file := sealOutside(t, env, msg, srv.Params("user1@example.org"))
	staged := filepath.Join(cfg.QueueDir, queuefile.TmpDir, name)
	if err := os.WriteFile(staged, file, 0o640); err != nil {
		t.Fatal(err)
	}

	repair := fault.breakIt(t, cfg)
	if fault.probe {
		if code, body := get(t, health); code != http.StatusServiceUnavailable || !strings.Contains(body, "spool not writable") {
			t.Errorf("/healthz with the storage full = %d %q, want 503 naming the spool", code, body)
		}
	}
	if fault.enqueueFails {
		_, err := env.Queue.Enqueue(bytes.NewReader(testMessage(2)), srv.Params("user2@example.org"))
		if !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("Enqueue into a full queue: %v, want ENOSPC", err)
		}
		if left := tmpFiles(t, cfg.QueueDir); !slices.Equal(left, []string{name}) {
			t.Errorf("queue's .tmp holds %q after a failed enqueue, want only the staged %s", left, name)
		}
	}
	if err := os.Rename(staged, filepath.Join(cfg.QueueDir, name)); err != nil {
		t.Fatal(err)
	}

	// Filing fails, is tried again, fails again: meanwhile the message is
	// in the queue's folders, and nothing half-written is visible.
	failures := 2
	if fault.mayFile {
		failures = 0
	}
	if failures > 0 {
		env.WaitFor("failed filings of "+name, func(fs []stages.Filed) bool {
			n := 0
			for _, f := range fs {
				if f.Job.Name == name && f.Err != nil {
					n++
				}
			}
			return n >= failures
		})
		if code, body := get(t, health); code != http.StatusServiceUnavailable || !strings.Contains(body, "filing failed") {
			t.Errorf("/healthz after failed filings = %d %q, want 503 saying filing failed", code, body)
		}
		where := findQueued(t, cfg.QueueDir, name)
		if where == "" {
			t.Fatalf("%s is nowhere in the queue's folders while filing fails", name)
		}
		// As queued; or, if its Sent copy was being made in place (the
		// sealed block cut off, then the Sent folder's fsync failed), the
		// message without its seal, its acceptance recorded.
		if got, err := os.ReadFile(where); err != nil || !bytes.Equal(got, file) && !bytes.Equal(got, msg) {
			t.Errorf("%s changed while filing failed (%v)", where, err)
		}
		if fault.stuck && !strings.HasPrefix(where, filepath.Join(cfg.QueueDir, spool.ActiveDir)+string(filepath.Separator)) {
			t.Errorf("%s is at %s, want the active folder", name, where)
		}
		if got := pipelinetest.Files(t, cfg.SentDir); len(got) != 1 {
			t.Errorf("Sent holds %q while filing fails, want the warm-up message only", got)
		}
		noHalfWritten(t, cfg)
		if fault.sync != nil && fault.sync.fails.Load() == 0 {
			t.Error("no fsync was failed: the fault did not take")
		}
	}

	// Repaired, the message is filed by the running service, with no
	// restart: a deferred one when its retry is due, a stuck one when the
	// Archiver next tries its filing.
	repair()
	f := env.Wait(name)
	wantSent(t, f)
	health = "http://" + env.Pipeline.MetricsAddr().String() + "/healthz"
	if got, err := os.ReadFile(filepath.Join(cfg.SentDir, name)); err != nil || !bytes.Equal(got, msg) {
		t.Errorf("Sent copy: %v, equal to the message: %v", err, bytes.Equal(got, msg))
	}
	if got := pipelinetest.Files(t, cfg.SentDir); len(got) != 2 {
		t.Errorf("Sent holds %q, want the two messages once each", got)
	}
	if n := len(srv.Messages()); n != 2 {
		t.Errorf("the server received %d messages, want 2: the warm-up, and this one once", n)
	}

	// Healthy again once a minute has passed without a failed filing.
	clock.Skip(61 * time.Second)
	if code, body := get(t, health); code != http.StatusOK {
		t.Errorf("/healthz after the repair = %d %q, want 200", code, body)
	}

	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
	if left := filesUnder(t, cfg.QueueDir); len(left) != 0 {
		t.Errorf("left in queue_dir: %v", left)
	}
	for _, dir := range []string{cfg.SentDir, cfg.UndeliverableDir} {
		if left := filesUnder(t, filepath.Join(dir, queuefile.TmpDir)); len(left) != 0 {
			t.Errorf("left in %s: %v", filepath.Join(dir, queuefile.TmpDir), left)
		}
	}
	if got := pipelinetest.Files(t, cfg.UndeliverableDir); len(got) != 0 {
		t.Errorf("Undeliverable holds %q", got)
	}
}

// noHalfWritten fails the test if a filing left a partial file behind:
// anything in the folders' .tmp but the Sent folder's pool of filed queue
// copies (.tmp/.free-<instance>/, not messages), or a state file's
// temporary.
func noHalfWritten(t *testing.T, cfg *pipeline.Config) {
	t.Helper()
	for _, dir := range []string{cfg.QueueDir, cfg.SentDir, cfg.UndeliverableDir} {
		for _, rel := range tmpFiles(t, dir) {
			if !strings.HasPrefix(rel, ".free-") {
				t.Errorf("left in %s: %s", filepath.Join(dir, queuefile.TmpDir), rel)
			}
		}
	}
	// A state file being written (<id>.json.tmp, then renamed) may be seen
	// while the service tries a filing again: only one that stays, the
	// same file unchanged a moment later, was left behind.
	seen := map[string]os.FileInfo{}
	for _, rel := range filesUnder(t, cfg.QueueDir) {
		if strings.HasSuffix(rel, ".tmp") {
			if fi, err := os.Stat(filepath.Join(cfg.QueueDir, rel)); err == nil {
				seen[rel] = fi
			}
		}
	}
	if len(seen) == 0 {
		return
	}
	time.Sleep(500 * time.Millisecond)
	for rel, before := range seen {
		fi, err := os.Stat(filepath.Join(cfg.QueueDir, rel))
		if err == nil && os.SameFile(before, fi) && fi.ModTime().Equal(before.ModTime()) {
			t.Errorf("left in queue_dir: %s", rel)
		}
	}
}

// findQueued returns the path of name in the queue folder or its working
// folders (active, deferred), or "".
func findQueued(t *testing.T, queueDir, name string) string {
	t.Helper()
	for _, rel := range filesUnder(t, queueDir) {
		base := filepath.Base(rel)
		_, n, ok := spool.ParseWorkName(base)
		if (base == name || ok && n == name) && !strings.HasPrefix(rel, queuefile.TmpDir+string(filepath.Separator)) &&
			!strings.HasPrefix(rel, spool.PoolDir+string(filepath.Separator)) {
			return filepath.Join(queueDir, rel)
		}
	}
	return ""
}

// tmpFiles lists the files in dir/.tmp.
func tmpFiles(t *testing.T, dir string) []string {
	t.Helper()
	return filesUnder(t, filepath.Join(dir, queuefile.TmpDir))
}
