package notify

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/gofrs/flock"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// FilingDir (under queue_dir) holds what a running service will tell
// about the filings it is making: <instance>/<message id>.json, an
// intent, written before the Archiver files the message and removed once
// its event is recorded and its notice queued; <instance>/notices/, each
// notice sealed and written before the filing, moved into queue_dir after
// it. <instance>.lock is held while the instance runs: an instance folder
// whose lock is free was left by a crash, and the next start resolves it.
const FilingDir = ".events/.filing"

// CrashFiled is the crash point (see Notifier.Crash) right after a filing
// is durable and before the notifier is told of it: the filing's event and
// notice are then only intents, which the next start resolves.
const CrashFiled = "notify-filed"

// Locate reports, for the ids of messages whose filing a crash may have
// cut short, where each one still in the queue is: "queued", "active",
// "deferred" or "held" (spool.Place). An id missing from the map is no
// longer in the queue: it was filed for good.
type Locate func(ids []string) (map[string]string, error)

// intent is what a filing will tell, written before the filing.
type intent struct {
	Job     string   `json:"job"`     // the message's id
	Verdict string   `json:"verdict"` // the filing's event type (sent, deferred, failed, held)
	Event   *Event   `json:"event,omitempty"`
	Hooks   []string `json:"hooks,omitempty"`  // the webhooks (keys) that get Event
	Notice  string   `json:"notice,omitempty"` // the staged notice's file name
	Delay   bool     `json:"delay,omitempty"`  // the notice is a delay notice: mark it sent
}

// maxIntentFile bounds what is read back of an intent file (an event and a
// few names).
const maxIntentFile = 4 << 20

// filings is a running notifier's instance folder of intents, and the
// intents of filings in progress.
type filings struct {
	dir   string           // FilingDir/<instance>
	lock  *flock.Flock     // FilingDir/<instance>.lock, held while it runs
	stage *queuefile.Queue // notices are written here before the filing (nil: no notices)

	mu      sync.Mutex
	pending map[string]*intent // by message id
}

func (fs *filings) path(id string) string { return filepath.Join(fs.dir, filepath.Base(id)+".json") }

// openFilings creates this instance's intent folder and locks it, after
// resolving the folders that instances which died left behind.
func (n *Notifier) openFilings() error {
	root := filepath.Join(n.QueueDir, FilingDir)
	if err := os.MkdirAll(root, 0o750); err != nil {
		return err
	}
	n.resolveLeftovers(root)
	var rnd [6]byte
	rand.Read(rnd[:])
	inst := hex.EncodeToString(rnd[:])
	fs := &filings{dir: filepath.Join(root, inst), lock: flock.New(filepath.Join(root, inst+".lock")), pending: map[string]*intent{}}
	if ok, err := fs.lock.TryLock(); err != nil || !ok {
		return fmt.Errorf("locking %s: %v", fs.lock.Path(), err)
	}
	if err := os.Mkdir(fs.dir, 0o750); err != nil {
		fs.lock.Unlock()
		return err
	}
	if n.Queue != nil {
		q := *n.Queue
		q.Dir = filepath.Join(fs.dir, "notices")
		if err := os.Mkdir(q.Dir, 0o750); err != nil {
			fs.lock.Unlock()
			return err
		}
		fs.stage = &q
	}
	n.filings = fs
	return nil
}

// Close releases this instance's intent folder: removed if nothing is left
// in it (a filing that is still to be told keeps it, for the next start).
// Filed must not be called after Close.
func (n *Notifier) Close() {
	fs := n.filings
	if fs == nil {
		return
	}
	n.filings = nil
	removeEmpty(fs.dir)
	fs.lock.Unlock()
	if _, err := os.Stat(fs.dir); errors.Is(err, os.ErrNotExist) {
		os.Remove(fs.lock.Path())
	}
}

// removeEmpty removes an instance folder if it holds no intent and no
// notice (the temporary folders of the notices' queue may be there).
func removeEmpty(dir string) {
	for _, d := range []string{filepath.Join(dir, "notices", queuefile.TmpDir), filepath.Join(dir, "notices"), dir} {
		os.Remove(d)
	}
}

// Filing is the Archiver's OnFiling hook, called before a job is filed
// with the filing about to be made. It prepares what the filing will tell:
// the webhook event (its id fixed now), the notice (built and sealed now,
// written where the service does not pick it up), and records both as an
// intent, durably, so that a crash after the filing loses neither. Filed
// then completes it, or drops it if the filing failed.
func (n *Notifier) Filing(f stages.Filed) {
	fs := n.filings
	if f.Job == nil || fs == nil {
		return
	}
	j := f.Job
	headers := n.headersOnce(j)
	it := &intent{Job: j.ID, Verdict: eventType(f)}
	if rcpts, delay := n.noticeFor(f); len(rcpts) > 0 && fs.stage != nil {
		it.Notice, it.Delay = n.stageNotice(fs.stage, j, rcpts, headers), delay
	}
	if it.Verdict != "" {
		for _, h := range n.hooks {
			if h.wants(it.Verdict) {
				it.Hooks = append(it.Hooks, h.key)
			}
		}
	}
	if len(it.Hooks) > 0 {
		now := n.Clock.Now()
		it.Event = newEvent(n.newEventID(now), it.Verdict, f, now, messageID(headers()))
	}
	if it.Notice == "" && it.Event == nil {
		return
	}
	b, err := json.Marshal(it)
	if err == nil {
		err = queuefile.WriteFileSync(fs.path(j.ID), b)
	}
	if err == nil {
		err = queuefile.SyncDir(fs.dir)
	}
	if err != nil {
		n.Log.Error("recording what a filing will tell: a crash right after the filing would lose its event or notice",
			zap.String("id", j.ID), zap.String("file", j.Name), zap.Error(err))
	}
	fs.mu.Lock()
	fs.pending[j.ID] = it
	fs.mu.Unlock()
}

// take returns and forgets the intent prepared for message id, if any.
func (fs *filings) take(id string) *intent {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	it := fs.pending[id]
	delete(fs.pending, id)
	return it
}

// complete tells what a filing that took place calls for: the notice moved
// into the queue (and a delay notice marked), the event recorded in the
// outbox with what only the filing knew (where the message went, when a
// deferred one is tried again; f is nil when a crash lost that), and then
// the intent removed. Each step may be done again after a crash: a notice
// already moved is not there to move, an event recorded again keeps its id.
func (n *Notifier) complete(dir string, it *intent, f *stages.Filed) {
	if it.Notice != "" {
		n.commitNotice(dir, it)
	}
	if it.Event != nil && len(it.Hooks) > 0 {
		if f != nil {
			it.Event.filed(*f)
		}
		n.record(it)
	}
	if err := os.Remove(filepath.Join(dir, filepath.Base(it.Job)+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
		n.Log.Warn("removing a filing's intent: it is told again at the next start", zap.String("id", it.Job), zap.Error(err))
	}
}

// commitNotice moves an intent's staged notice into queue_dir, where the
// service picks it up, and marks a delay notice as sent.
func (n *Notifier) commitNotice(dir string, it *intent) {
	src := filepath.Join(dir, "notices", filepath.Base(it.Notice))
	err := os.Rename(src, filepath.Join(n.QueueDir, filepath.Base(it.Notice)))
	switch {
	case errors.Is(err, os.ErrNotExist):
		return // moved already, before a crash
	case err == nil:
		err = queuefile.SyncDir(n.QueueDir)
	}
	if err != nil {
		n.Log.Error("queueing a delivery status notice", zap.String("id", it.Job), zap.String("notice", it.Notice), zap.Error(err))
		return
	}
	n.Log.Info("delivery status notice queued", zap.String("id", it.Job), zap.String("notice", it.Notice), zap.Bool("delay", it.Delay))
	if it.Delay {
		n.noteDelay(it.Job)
	}
}

// record writes an intent's event in the outbox of each webhook that asked
// for it, and wakes their workers.
func (n *Notifier) record(it *intent) {
	body, err := json.Marshal(it.Event)
	if err == nil {
		err = n.box.record(it.Hooks, it.Event.ID, body)
	}
	if err != nil {
		n.Log.Error("recording a webhook event: it is lost", zap.String("id", it.Job), zap.String("event", it.Verdict), zap.Error(err))
		return
	}
	if n.Crash != nil {
		n.Crash(CrashRecorded)
	}
	for _, h := range n.hooks {
		for _, k := range it.Hooks {
			if h.key == k {
				h.signal()
			}
		}
	}
}

// abandon drops the intent of a filing that did not take place: the
// message is filed again later, and tells then.
func (n *Notifier) abandon(dir string, it *intent) {
	if it.Notice != "" {
		os.Remove(filepath.Join(dir, "notices", filepath.Base(it.Notice)))
	}
	os.Remove(filepath.Join(dir, filepath.Base(it.Job)+".json"))
}

// resolveLeftovers completes or drops the intents in the folders of
// instances that died (whose lock is free), then removes those folders.
func (n *Notifier) resolveLeftovers(root string) {
	es, err := os.ReadDir(root)
	if err != nil {
		n.Log.Error("reading the intents of filings a crash cut short", zap.String("dir", root), zap.Error(err))
		return
	}
	for _, e := range es {
		if !e.IsDir() {
			continue
		}
		l := flock.New(filepath.Join(root, e.Name()+".lock"))
		if ok, err := l.TryLock(); err != nil || !ok {
			continue // a running instance's
		}
		dir := filepath.Join(root, e.Name())
		n.resolveDir(dir)
		os.RemoveAll(dir)
		l.Unlock()
		os.Remove(l.Path())
	}
	queuefile.SyncDir(root)
}

// resolveDir tells what each intent in dir calls for if its filing took
// place, and drops it if not: a message filed for good is no longer in
// the queue; a deferred or held one is in its folder. Without Locate (a
// stream, whose records of where a message is are written asynchronously)
// every intent is told: its outcome was decided, and a message filed again
// later tells again (at least once).
func (n *Notifier) resolveDir(dir string) {
	its := readIntents(dir, n.Log)
	if len(its) == 0 {
		return
	}
	var where map[string]string
	if n.Locate != nil {
		ids := make([]string, 0, len(its))
		for _, it := range its {
			ids = append(ids, it.Job)
		}
		var err error
		if where, err = n.Locate(ids); err != nil {
			n.Log.Error("looking for messages whose filing a crash cut short: their events and notices are told", zap.Error(err))
			where = nil
		}
	}
	for _, it := range its {
		if where != nil && !tookPlace(it.Verdict, where[it.Job]) {
			n.Log.Info("a filing a crash cut short did not take place: the message tells when it is filed again", zap.String("id", it.Job), zap.String("verdict", it.Verdict))
			n.abandon(dir, it)
			continue
		}
		n.Log.Info("telling a filing a crash cut short", zap.String("id", it.Job), zap.String("verdict", it.Verdict))
		n.complete(dir, it, nil)
	}
}

// tookPlace reports whether a filing with event type verdict took place,
// given where the message is now ("" if no longer in the queue). An
// intent without an event type (a notice alone) is a failure's.
func tookPlace(verdict, place string) bool {
	switch verdict {
	case EventDeferred:
		return place == "deferred"
	case EventHeld:
		return place == "held"
	}
	return place == ""
}

// readIntents reads the intent files in dir; an unreadable one is logged
// and removed.
func readIntents(dir string, log *zap.Logger) []*intent {
	es, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []*intent
	for _, e := range es {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		it, err := readIntent(p)
		if err == nil && it.Job != name {
			err = fmt.Errorf("names message %q", it.Job)
		}
		if err != nil {
			log.Error("an intent file cannot be read: its event or notice is lost", zap.String("path", p), zap.Error(err))
			os.Remove(p)
			continue
		}
		out = append(out, it)
	}
	return out
}

func readIntent(p string) (*intent, error) {
	b, err := readFileMax(p, maxIntentFile)
	if err != nil {
		return nil, err
	}
	var it intent
	if err := json.Unmarshal(b, &it); err != nil {
		return nil, err
	}
	return &it, nil
}
