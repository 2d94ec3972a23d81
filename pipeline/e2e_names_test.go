package pipeline_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

// A cron job drops report.eml; while the service is in the SMTP transaction
// of that message, it drops report.eml again. The server then answers 451
// to the first. Both messages must be delivered, each once, and both filed
// in Sent (report.eml and report-1.eml): the second file neither replaces
// the first in flight nor inherits anything from it.
func TestNamesakeDroppedWhileInFlight(t *testing.T) {
	t.Parallel()
	inData := newSignal()
	release := newReleaser()
	var first atomic.Bool
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Data && first.CompareAndSwap(false, true) {
				inData.Fire()
				release.Wait()
				return smtptest.Reply(451, smtp.EnhancedCode{4, 3, 0}, "try again later")
			}
			return smtptest.Fault{}
		}
	})
	t.Cleanup(release.Open)
	env := pipelinetest.New(t, func(c *pipeline.Config) { c.Retry.MinBackoff = 0; c.Retry.MaxBackoff = 0 })
	// The producer seals its file elsewhere and renames it into the queue.
	stage := *env.Queue
	stage.Dir = filepath.Join(env.Dir, "stage")
	if err := os.MkdirAll(stage.Dir, 0o750); err != nil {
		t.Fatal(err)
	}
	drop := func(i int) {
		t.Helper()
		n, err := stage.Enqueue(bytes.NewReader(testMessage(i)), srv.Params("user@example.org"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(stage.Dir, n), filepath.Join(env.Config.QueueDir, "report.eml")); err != nil {
			t.Fatal(err)
		}
	}
	drop(1)
	env.Start(pipeline.Options{})
	inData.await(t, "the first report.eml in its DATA phase")
	drop(2)
	env.WaitFor("the second report.eml to be sent", func(fs []stages.Filed) bool {
		return count(fs, "report.eml", "sent") == 1
	})
	release.Open()
	env.WaitFor("both report.eml to be sent", func(fs []stages.Filed) bool {
		return count(fs, "report.eml", "sent") == 2
	})
	var ids []string
	for _, f := range env.Filed() {
		if f.Err != nil {
			t.Errorf("filing %s (id %s) as %s failed: %v", f.Job.Name, f.Job.ID, f.Verdict, f.Err)
		}
		if f.Verdict == stages.Sent {
			ids = append(ids, f.Job.ID)
			want := 1 // the second: sent at once
			if strings.Contains(string(mustRead(t, f.Path)), "Subject: test 1") {
				want = 2 // the first: 451, then sent
			}
			if f.Job.State.Attempts != want {
				t.Errorf("%s sent after %d attempts, want %d", f.Path, f.Job.State.Attempts, want)
			}
		}
	}
	if len(ids) != 2 || ids[0] == ids[1] {
		t.Errorf("ids of the two messages: %v", ids)
	}
	var bodies []string
	for _, m := range srv.Messages() {
		bodies = append(bodies, string(m.Data))
	}
	for _, want := range []string{"Subject: test 1", "Subject: test 2"} {
		if n := len(slices.DeleteFunc(slices.Clone(bodies), func(b string) bool { return !strings.Contains(b, want) })); n != 1 {
			t.Errorf("the server got %q %d times, want once", want, n)
		}
	}
	sent := pipelinetest.Files(t, env.Config.SentDir)
	slices.Sort(sent)
	if !slices.Equal(sent, []string{"report-1.eml", "report.eml"}) {
		t.Errorf("Sent holds %q, want report.eml and report-1.eml", sent)
	}
	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
