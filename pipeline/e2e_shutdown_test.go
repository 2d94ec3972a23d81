package pipeline_test

import (
	"context"
	"fmt"
	"io/fs"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// whereIs lists the spool folders that hold a file called name.
func whereIs(t *testing.T, env *pipelinetest.Env, name string) []string {
	t.Helper()
	var at []string
	for _, rel := range filesUnder(t, env.Dir) {
		base := filepath.Base(rel)
		if _, n, ok := spool.ParseWorkName(base); ok && n == name || base == name {
			at = append(at, filepath.Dir(rel))
		}
	}
	return at
}

// stateOf reads the delivery state of the message named name still in
// the queue (its state file is named by the message's id).
func stateOf(t *testing.T, queueDir, name string) (*stages.State, error) {
	t.Helper()
	d := spool.Dirs{Queue: queueDir}
	var id string
	err := spool.Walk(context.Background(), d, spool.QueuePlaces, func(e spool.Entry) error {
		if e.Name == name && e.ID != "" {
			id = e.ID
			return fs.SkipAll
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if id == "" {
		return nil, fmt.Errorf("%s: no message of that name with an id in %s", name, queueDir)
	}
	st, err := spool.ReadState(d, id)
	if err == nil && st == nil {
		err = fmt.Errorf("%s (id %s) has no state file: %w", name, id, fs.ErrNotExist)
	}
	return st, err
}

func TestShutdownLosesNothing(t *testing.T) {
	t.Parallel()
	const n, threads = 10, 4
	release := newReleaser()
	stalled := newSignal()
	var inData atomic.Int32
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Data {
				if inData.Add(1) == threads {
					stalled.Fire()
				}
				release.Wait()
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t, func(c *pipeline.Config) { c.MaxThreads = threads })
	rcpt := map[string]string{}
	for i := range n {
		to := fmt.Sprintf("user%d@example.org", i)
		rcpt[env.Enqueue(testMessage(i), srv.Params(to))] = to
	}
	env.Start(pipeline.Options{ShutdownGrace: 300 * time.Millisecond})
	t.Cleanup(release.Open)
	stalled.await(t, "every worker to have a message in flight")

	// Stop while messages are in flight: the stalled ones are cut off
	// after the grace period, the rest never started.
	if err := env.Stop(); err != nil {
		t.Fatalf("stopping: %v", err)
	}
	queue := env.Config.QueueDir
	places := map[string]int{}
	cutOff := map[string]bool{} // cut off after the data was sent
	for name := range rcpt {
		at := whereIs(t, env, name)
		if len(at) != 1 {
			t.Errorf("%s is in %v, want exactly one place", name, at)
			continue
		}
		dir := filepath.Join(env.Dir, at[0])
		switch {
		case dir == queue || dir == filepath.Join(queue, spool.ReadyDir):
			places["queue"]++
		case filepath.Dir(dir) == filepath.Join(queue, spool.DeferredDir):
			places["deferred"]++
			st, err := stateOf(t, queue, name)
			if err != nil {
				t.Errorf("deferred %s has no state: %v", name, err)
				break
			}
			if st.Attempts != 1 || st.LastError == "" || !st.Possible {
				t.Errorf("deferred %s: state %+v, want 1 attempt, its error and a possible duplicate", name, st)
			}
			cutOff[name] = true
		case dir == env.Config.SentDir:
			places["sent"]++
		default:
			t.Errorf("%s was left in %s", name, at[0])
		}
	}
	t.Logf("after the stop: %v", places)
	if places["sent"] != 0 {
		t.Errorf("%d messages sent although the server never answered the data", places["sent"])
	}
	if places["deferred"] != threads {
		t.Errorf("%d messages deferred, want the %d cut off in flight", places["deferred"], threads)
	}
	if left := filesUnder(t, filepath.Join(queue, spool.ActiveDir)); len(left) != 0 {
		t.Errorf("left claimed in %s: %v", spool.ActiveDir, left)
	}

	// Started again with a server that answers, the same spool delivers
	// every message. Each arrives once, except one cut off after its data
	// was sent: the server may have taken it without being able to say so
	// (here it has: go-smtp reads the data it had buffered), and a message
	// is sent at least once, never zero times.
	release.Open()
	env.Start(pipeline.Options{})
	wantAllSent(t, env, n) // after the restart
	got := map[string]int{}
	for _, m := range srv.Messages() {
		for _, to := range m.To {
			got[to]++
		}
	}
	for name, to := range rcpt {
		if got[to] != 1 && !(cutOff[name] && got[to] == 2) {
			t.Errorf("%s received %d copies, want 1 (cut off in flight: %v)", to, got[to], cutOff[name])
		}
	}
}
