//go:build !windows

package pipeline_test

// The disk side of issue 6's fault matrix: filing folders that cannot be
// written, and Sent and Undeliverable on another file system than the queue.
//
// Not tested here, because a test cannot make them happen without mounting
// file systems: a folder that is full (ENOSPC; the unwritable folder below
// takes the same error path) and an fsync that fails (every Sync and SyncDir
// error in stages/spool.go and stages/journal.go is returned; the Archiver
// then keeps the message where it was, as for the unwritable folder).

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

// dropIn puts a complete queue file into env's queue the way a careful
// producer does: written beside it, then renamed in.
func dropIn(t *testing.T, env *pipelinetest.Env, name string, file []byte) {
	t.Helper()
	side := filepath.Join(env.Dir, "producer")
	if err := os.MkdirAll(side, 0o750); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(side, name)
	if err := os.WriteFile(tmp, file, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(env.Config.QueueDir, name)); err != nil {
		t.Fatal(err)
	}
}

// breakFolder makes dir unwritable for smtpq, even for root: the folder
// is moved aside and a file takes its name. The returned function repairs
// it.
func breakFolder(t *testing.T, dir string) (repair func()) {
	t.Helper()
	away := dir + ".away"
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		if err := os.Remove(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(away, dir); err != nil {
			t.Fatal(err)
		}
	}
}

func TestUnwritableFilingFolderKeepsTheMessage(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		folder func(*pipeline.Config) string
		refuse bool // the server refuses the recipient: the message is undeliverable
	}{
		{"sent", func(c *pipeline.Config) string { return c.SentDir }, false},
		{"undeliverable", func(c *pipeline.Config) string { return c.UndeliverableDir }, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			var rcpts atomic.Int32
			srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
				s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
					if p.Step == smtptest.Rcpt && p.Arg == "user1@example.org" {
						rcpts.Add(1)
						if c.refuse {
							return noSuchUser
						}
					}
					return smtptest.Fault{}
				}
			})
			env := pipelinetest.New(t, func(c *pipeline.Config) { c.Metrics.Listen = "127.0.0.1:0" })
			env.Start(pipeline.Options{})
			// A first message, so that the service is up and its health
			// endpoint listening.
			wantSent(t, env.Wait(env.Enqueue(testMessage(0), srv.Params("warmup@example.org"))))
			health := "http://" + env.Pipeline.MetricsAddr().String() + "/healthz"
			if code, body := get(t, health); code != http.StatusOK {
				t.Fatalf("/healthz = %d %q before anything broke", code, body)
			}
			repair := breakFolder(t, c.folder(env.Config))
			if code, body := get(t, health); code != http.StatusServiceUnavailable || !strings.Contains(body, "spool not writable") {
				t.Errorf("/healthz with %s unwritable = %d %q, want 503 naming the spool", c.name, code, body)
			}

			name, file := sealOutside(t, env, testMessage(1), srv.Params("user1@example.org"))
			dropIn(t, env, name, file)
			// Filing fails, and is tried again, and fails again: the message
			// is kept, not lost, while the folder is broken.
			env.WaitFor("two failed filings of "+name, func(fs []stages.Filed) bool {
				n := 0
				for _, f := range fs {
					if f.Job.Name == name && f.Err != nil {
						n++
					}
				}
				return n >= 2
			})
			if code, body := get(t, health); code != http.StatusServiceUnavailable || !strings.Contains(body, "filing failed") {
				t.Errorf("/healthz after failed filings = %d %q, want 503 saying filing failed", code, body)
			}
			repair()

			f := env.Wait(name)
			if err := env.Stop(); err != nil {
				t.Fatal(err)
			}
			if n := rcpts.Load(); n != 1 {
				t.Errorf("the server saw %d RCPT commands, want 1: the outcome must not be fetched again", n)
			}
			if left := filesUnder(t, env.Config.QueueDir); len(left) != 0 {
				t.Errorf("left in queue_dir: %v", left)
			}
			if !c.refuse {
				wantSent(t, f)
				if n := len(srv.Messages()); n != 2 {
					t.Errorf("server received %d messages, want 2 (the first one, and this one once)", n)
				}
				if got, err := os.ReadFile(filepath.Join(env.Config.SentDir, name)); err != nil || !bytes.Equal(got, testMessage(1)) {
					t.Errorf("Sent copy: %v, equal to the message: %v", err, bytes.Equal(got, testMessage(1)))
				}
				if got := pipelinetest.Files(t, env.Config.SentDir); len(got) != 2 {
					t.Errorf("Sent holds %v, want two messages", got)
				}
				return
			}
			wantFailed(t, f, stages.ClassPermanent)
			l := readXMLLog(t, env, name)
			if l.Failure.Code != 550 || l.Failure.Enhanced != "5.1.1" || !strings.Contains(l.Failure.Text, "No such user here") {
				t.Errorf("XML failure = %+v, want the server's 550 5.1.1", l.Failure)
			}
			if l.Attempts != 1 {
				t.Errorf("XML log: %d attempts, want 1", l.Attempts)
			}
			if got, err := os.ReadFile(filepath.Join(env.Config.UndeliverableDir, name)); err != nil || !bytes.Equal(got, file) {
				t.Errorf("Undeliverable copy differs from the queued file (%v)", err)
			}
			if got := pipelinetest.Files(t, env.Config.UndeliverableDir); len(got) != 2 {
				t.Errorf("Undeliverable holds %v, want the message and its log once", got)
			}
		})
	}
}

// otherFilesystem returns a new folder on another file system than dir
// (tmpfs in /dev/shm), or skips the test if there is none.
func otherFilesystem(t *testing.T, dir string) string {
	t.Helper()
	var a, b syscall.Stat_t
	if err := syscall.Stat(dir, &a); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat("/dev/shm", &b); err != nil {
		t.Skipf("no /dev/shm to put sent_dir on another file system: %v", err)
	}
	if a.Dev == b.Dev {
		t.Skipf("/dev/shm is on the same file system as %s", dir)
	}
	other, err := os.MkdirTemp("/dev/shm", "smtpq-test-")
	if err != nil {
		t.Skipf("cannot write to /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	return other
}

func TestFilingFoldersOnAnotherFilesystem(t *testing.T) {
	t.Parallel()
	other := otherFilesystem(t, t.TempDir())
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Rcpt && p.Arg == "nobody@example.org" {
				return noSuchUser
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		c.SentDir = filepath.Join(other, "sent")
		c.UndeliverableDir = filepath.Join(other, "undeliverable")
	})
	env.Start(pipeline.Options{})
	msg := testMessage(1)
	good := env.Enqueue(msg, srv.Params("user1@example.org"))
	bad, badFile := sealOutside(t, env, testMessage(2), srv.Params("nobody@example.org"))
	dropIn(t, env, bad, badFile)

	final := env.WaitFinal(2)
	wantSent(t, final[good])
	wantFailed(t, final[bad], stages.ClassPermanent)
	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(filepath.Join(env.Config.SentDir, good)); err != nil || !bytes.Equal(got, msg) {
		t.Errorf("Sent copy on the other file system: %v, equal to the message: %v", err, bytes.Equal(got, msg))
	}
	if got, err := os.ReadFile(filepath.Join(env.Config.UndeliverableDir, bad)); err != nil || !bytes.Equal(got, badFile) {
		t.Errorf("Undeliverable copy on the other file system: %v, equal to the queued file: %v", err, bytes.Equal(got, badFile))
	}
	if l := readXMLLog(t, env, bad); l.Failure.Code != 550 {
		t.Errorf("XML failure = %+v, want 550", l.Failure)
	}
	var q, s syscall.Stat_t
	if err := syscall.Stat(env.Config.QueueDir, &q); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(filepath.Join(env.Config.SentDir, good), &s); err != nil {
		t.Fatal(err)
	}
	if q.Dev == s.Dev {
		t.Fatal("the Sent copy is on the queue's file system: the test proves nothing")
	}
	// Copied, synced, then removed from the queue: nothing left there, and
	// no temporary file left in the filing folders.
	if left := filesUnder(t, env.Config.QueueDir); len(left) != 0 {
		t.Errorf("left in queue_dir: %v", left)
	}
	for _, dir := range []string{env.Config.SentDir, env.Config.UndeliverableDir} {
		if left := pipelinetest.Files(t, filepath.Join(dir, queuefile.TmpDir)); len(left) != 0 {
			t.Errorf("left in %s/.tmp: %v", dir, left)
		}
	}
}
