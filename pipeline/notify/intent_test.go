package notify_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline/notify"
	"github.com/smtpq/smtpq/stages"
)

// dieAfterFiling plays a service that prepares f's filing, files it, and
// dies before it is told: Filing, then the instance's lock released as a
// dead process's is, its intent left on disk.
func dieAfterFiling(n *notify.Notifier, f stages.Filed) {
	before := f
	before.Path, before.Err = "", nil
	n.Filing(before)
	n.Close()
}

// intents returns the intent files under queue_dir's FilingDir.
func intents(t *testing.T, n *notify.Notifier) []string {
	t.Helper()
	var out []string
	root := filepath.Join(n.QueueDir, notify.FilingDir)
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".json") {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// intentEventID returns the event id in the one intent file.
func intentEventID(t *testing.T, n *notify.Notifier) string {
	t.Helper()
	files := intents(t, n)
	if len(files) != 1 {
		t.Fatalf("intents %v, want one", files)
	}
	b, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	var it struct {
		Event struct {
			ID string `json:"id"`
		} `json:"event"`
	}
	if err := json.Unmarshal(b, &it); err != nil || it.Event.ID == "" {
		t.Fatalf("intent %s: %v", b, err)
	}
	return it.Event.ID
}

// restartWith opens a new Notifier on n's folders, as the next start,
// finding messages with locate.
func restartWith(t *testing.T, n *notify.Notifier, locate notify.Locate) *notify.Notifier {
	t.Helper()
	m := &notify.Notifier{
		QueueDir: n.QueueDir, Queue: n.Queue, ReportingMTA: n.ReportingMTA, Failure: n.Failure, Delay: n.Delay,
		Webhooks: n.Webhooks, Clock: n.Clock, Log: n.Log, MinBackoff: n.MinBackoff, MaxBackoff: n.MaxBackoff,
		Locate: locate,
	}
	if err := m.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// at returns a Locate that finds message id at place ("": not in the
// queue), and counts its calls.
func at(id, place string, calls *int) notify.Locate {
	return func(ids []string) (map[string]string, error) {
		*calls++
		where := map[string]string{}
		for _, x := range ids {
			if x == id && place != "" {
				where[x] = place
			}
		}
		return where, nil
	}
}

func TestFilingCutShortIsToldAtTheNextStart(t *testing.T) {
	for _, tc := range []struct {
		name    string
		verdict stages.Verdict
		place   string // where the message is at the next start
		nilLoc  bool   // no Locate (a stream): told
		told    bool
	}{
		{name: "failed and gone", verdict: stages.Failed, told: true},
		{name: "failed but still active", verdict: stages.Failed, place: "active"},
		{name: "failed but back in the queue", verdict: stages.Failed, place: "queued"},
		{name: "deferred in its folder", verdict: stages.Deferred, place: "deferred", told: true},
		{name: "deferred but still active", verdict: stages.Deferred, place: "active"},
		{name: "held in its folder", verdict: stages.Held, place: "held", told: true},
		{name: "failed, no Locate", verdict: stages.Failed, place: "active", nilLoc: true, told: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newReceiver(t, 0)
			start := time.Now()
			n, ids := newNotifier(t, func(n *notify.Notifier) {
				n.Failure, n.Delay = true, time.Hour
				n.Webhooks = []notify.Webhook{hookTo(r)}
			})
			j := failedJob(start.Add(-2 * time.Hour))
			j.Outcome.Verdict = tc.verdict
			dieAfterFiling(n, stages.Filed{Job: j, Verdict: tc.verdict})
			id := intentEventID(t, n)
			if q := queued(t, n.QueueDir); len(q) != 0 || len(outboxFiles(t, n)) != 0 {
				t.Fatalf("told before the filing was: queued %v, outbox %v", q, outboxFiles(t, n))
			}

			calls := 0
			loc := at(j.ID, tc.place, &calls)
			if tc.nilLoc {
				loc = nil
			}
			m := restartWith(t, n, loc)
			if left := intents(t, m); len(left) != 0 {
				t.Errorf("intents left after the start: %v", left)
			}
			box := outboxFiles(t, m)
			if !tc.told {
				if q := queued(t, n.QueueDir); len(q) != 0 || len(box) != 0 {
					t.Errorf("a filing that did not take place was told: queued %v, outbox %v", q, box)
				}
				return
			}
			if len(box) != 1 || box[0] != id+".json" {
				t.Fatalf("outbox %v, want the intent's event %s", box, id)
			}
			if tc.verdict != stages.Held {
				// A failure notice, or a delay notice for the deferral
				// (queued two hours ago, notify.delay one hour).
				p, _ := theNotice(t, m, ids)
				if p.To[0] != "app@example.com" {
					t.Errorf("notice to %v", p.To)
				}
			}
			if tc.verdict == stages.Deferred {
				if _, err := os.Stat(filepath.Join(n.QueueDir, notify.DelayedDir, j.ID)); err != nil {
					t.Errorf("the delay notice told at start is not marked: %v", err)
				}
			}
			runNotifier(t, m)
			if e := r.next().event; e.ID != id || e.QueueID != j.ID || e.Path != "" {
				t.Errorf("event %+v, want id %s for %s and no path (the crash lost it)", e, id, j.ID)
			}
		})
	}
}

func TestFilingToldOnceWhenTheServiceLives(t *testing.T) {
	r := newReceiver(t, 0)
	n, ids := newNotifier(t, func(n *notify.Notifier) {
		n.Failure = true
		n.Webhooks = []notify.Webhook{hookTo(r)}
	})
	j := failedJob(time.Now())
	before := stages.Filed{Job: j, Verdict: stages.Failed}
	n.Filing(before)
	id := intentEventID(t, n)
	n.Filed(stages.Filed{Job: j, Verdict: stages.Failed, Path: "/u/x.eml"})
	if left := intents(t, n); len(left) != 0 {
		t.Errorf("intents left after the filing was told: %v", left)
	}
	theNotice(t, n, ids)
	// A restart finds nothing to tell again.
	calls := 0
	m := restartWith(t, n, at(j.ID, "", &calls))
	theNotice(t, m, ids)
	runNotifier(t, m)
	if e := r.next().event; e.ID != id || e.Path != "/u/x.eml" {
		t.Errorf("event %+v, want id %s with the path", e, id)
	}
	waitOutboxEmpty(t, m)
	if len(r.posts()) != 1 {
		t.Errorf("%d POSTs, want 1", len(r.posts()))
	}
}

func TestFailedFilingDropsWhatItWouldTell(t *testing.T) {
	r := newReceiver(t, 0)
	n, _ := newNotifier(t, func(n *notify.Notifier) {
		n.Failure = true
		n.Webhooks = []notify.Webhook{hookTo(r)}
	})
	file(n, stages.Filed{Job: failedJob(time.Now()), Verdict: stages.Failed, Err: os.ErrPermission})
	if left := intents(t, n); len(left) != 0 {
		t.Errorf("intents left: %v", left)
	}
	if q := queued(t, n.QueueDir); len(q) != 0 || len(outboxFiles(t, n)) != 0 {
		t.Errorf("a failed filing told: queued %v, outbox %v", q, outboxFiles(t, n))
	}
	var staged []string
	filepath.WalkDir(filepath.Join(n.QueueDir, notify.FilingDir), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && !strings.HasSuffix(p, ".lock") {
			staged = append(staged, p)
		}
		return nil
	})
	if len(staged) != 0 {
		t.Errorf("files left of the dropped filing: %v", staged)
	}
}

func TestRunningInstanceIntentsAreLeftAlone(t *testing.T) {
	n, _ := newNotifier(t, func(n *notify.Notifier) { n.Failure = true })
	j := failedJob(time.Now())
	n.Filing(stages.Filed{Job: j, Verdict: stages.Failed}) // n still runs: its filing is under way
	calls := 0
	restartWith(t, n, at(j.ID, "", &calls)) // another instance starts on the same queue
	if calls != 0 || len(intents(t, n)) != 1 || len(queued(t, n.QueueDir)) != 0 {
		t.Fatalf("a running instance's intent was resolved: Locate called %d times, intents %v, queued %v",
			calls, intents(t, n), queued(t, n.QueueDir))
	}
	n.Filed(stages.Filed{Job: j, Verdict: stages.Failed, Path: "/u/x.eml"})
	if q := queued(t, n.QueueDir); len(q) != 1 {
		t.Errorf("queued %v, want the one notice", q)
	}
}
