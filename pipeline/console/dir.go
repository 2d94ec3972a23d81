package console

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"filippo.io/age"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// ErrBadKey: a message key in a URL that is neither a queue-file name nor
// a message id (a path, "..", a hidden name...). Nothing is looked up.
var ErrBadKey = errors.New("not a message name or id")

// RescanEvery is how often DirBackend lists the queue's folders to catch
// what the pipeline does not report: files dropped in queue_dir, moves by
// the queue commands. (The metrics count the same folders every 10 s.)
const RescanEvery = 30 * time.Second

// readPerSecond bounds how many messages a second the background reader
// opens to learn their host, envelope and subject.
const readPerSecond = 200

// DirBackend is the Backend of the directory spool: an Index fed by the
// pipeline (Observe) and by scans of the folders (Run), and the spool's
// queue administration (spool.HoldMessage...) for actions. Run must run
// for the index to fill.
type DirBackend struct {
	Dirs       spool.Dirs
	Identities []age.Identity // to open seals: host and envelope
	Index      *Index
	Now        func() time.Time
	Log        *zap.Logger
	// LiftPause, if set, is called after a retry (the service tries the
	// host now); nil when no service runs.
	LiftPause func(host string, all bool)

	kick chan struct{}
}

var _ Backend = (*DirBackend)(nil)

// NewDirBackend returns a backend for the spool in dirs.
func NewDirBackend(dirs spool.Dirs, ids []age.Identity, now func() time.Time, log *zap.Logger) *DirBackend {
	if log == nil {
		log = zap.NewNop()
	}
	return &DirBackend{Dirs: dirs, Identities: ids, Index: NewIndex(), Now: now, Log: log, kick: make(chan struct{}, 1)}
}

// Observe records a filing (the Archiver's OnFiled).
func (b *DirBackend) Observe(f stages.Filed) { b.Index.Observe(f, b.Now()) }

// scanPlaces are the folders a scan lists (Sent only grows and is not
// listed: the index keeps the latest sent from the filings).
var scanPlaces = []spool.Place{spool.PlaceQueued, spool.PlaceActive, spool.PlaceDeferred, spool.PlaceHeld, spool.PlaceUndeliverable}

// Scan lists the spool's folders once and puts what it finds in the index.
func (b *DirBackend) Scan(ctx context.Context) error {
	since := b.Index.Seq()
	var found []Item
	err := spool.Walk(ctx, b.Dirs, scanPlaces, func(e spool.Entry) error {
		it := Item{ID: e.ID, Name: e.Name, State: e.Place, Path: e.Path, Next: e.Due}
		if t, ok := queuefile.NameTime(e.Name); ok {
			it.Queued = t
		}
		found = append(found, it)
		return nil
	})
	if err != nil {
		return err
	}
	b.Index.Replace(scanPlaces, found, since)
	return nil
}

// Run scans the spool at once and every RescanEvery (or sooner after a
// bulk action), and reads the details of messages not read yet, until ctx
// is done.
func (b *DirBackend) Run(ctx context.Context) {
	scan := time.NewTimer(0)
	defer scan.Stop()
	read := time.NewTicker(time.Second)
	defer read.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-scan.C:
		case <-b.kick:
			scan.Stop()
		case <-read.C:
			b.readSome(ctx, readPerSecond)
			continue
		}
		if err := b.Scan(ctx); err != nil && ctx.Err() == nil {
			b.Log.Warn("console: listing the spool", zap.Error(err))
		}
		scan.Reset(RescanEvery)
	}
}

// rescan asks Run for a scan soon.
func (b *DirBackend) rescan() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// readSome reads the details of up to n messages the index has not read.
func (b *DirBackend) readSome(ctx context.Context, n int) {
	for _, it := range b.Index.Unread(n) {
		if ctx.Err() != nil {
			return
		}
		b.Index.Enrich(it.Key(), placeOf(it), b.details(it))
	}
}

// placeOf is the place to look a message up in: none for one with an id.
func placeOf(it Item) spool.Place {
	if it.ID != "" {
		return ""
	}
	return it.State
}

// details reads a message's host, envelope and subject from its file.
func (b *DirBackend) details(it Item) Item {
	var d Item
	path := b.locate(it)
	if path == "" {
		return d
	}
	if subject, err := readSubject(path); err == nil {
		d.Subject = subject
	}
	if it.State == spool.PlaceSent || it.State == spool.PlaceUndeliverable {
		return d
	}
	if prm, _, err := spool.PeekParams(path, b.Identities); err == nil && prm != nil {
		d.From = prm.From
		if prm.Relay == "" {
			// A relay profile's host is the configuration's: known once
			// the service has tried it.
			d.Host = stages.HostKey(prm.Host)
		}
		if len(prm.To) > 0 {
			d.To, d.Rcpts = prm.To[0], len(prm.To)
		}
	}
	return d
}

// Summary implements Backend.
func (b *DirBackend) Summary() Summary { return b.Index.Summary(b.Now()) }

// List implements Backend: a page from the index, the rows not read yet
// read now.
func (b *DirBackend) List(q Query) Page {
	p := b.Index.List(q)
	for i, it := range p.Items {
		if it.known || (it.Host != "" && it.Subject != "") {
			continue
		}
		d := b.details(it)
		b.Index.Enrich(it.Key(), placeOf(it), d)
		if it.Host == "" {
			p.Items[i].Host = d.Host
		}
		if it.From == "" {
			p.Items[i].From, p.Items[i].To, p.Items[i].Rcpts = d.From, d.To, d.Rcpts
		}
		if it.Subject == "" {
			p.Items[i].Subject = d.Subject
		}
	}
	return p
}

// CheckKey refuses a key that is not a message id or queue-file name:
// nothing in a URL reaches outside the spool's folders.
func CheckKey(key string) error {
	if spool.IsID(key) || (queuefile.IsQueueName(key) && !strings.Contains(key, "..") && filepath.Base(key) == key) {
		return nil
	}
	return fmt.Errorf("%q: %w", clip(key), ErrBadKey)
}

// filedDir is the folder of a filed place, "" for the others.
func (b *DirBackend) filedDir(in spool.Place) string {
	switch in {
	case spool.PlaceSent:
		return b.Dirs.Sent
	case spool.PlaceUndeliverable:
		return b.Dirs.Undeliverable
	}
	return ""
}

// find returns the message key names, from the index or, for a copy
// filed by name or a file in queue_dir, from the folder.
func (b *DirBackend) find(key string, in spool.Place) (Item, error) {
	if err := CheckKey(key); err != nil {
		return Item{}, err
	}
	if it, ok := b.Index.Get(key, in); ok {
		return it, nil
	}
	if spool.IsID(key) {
		return Item{}, fmt.Errorf("%s: %w", key, spool.ErrMessageNotFound)
	}
	dir, place := b.filedDir(in), in
	if dir == "" {
		dir, place = b.Dirs.Queue, spool.PlaceQueued
	}
	p := filepath.Join(dir, key)
	if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() {
		return Item{}, fmt.Errorf("%s: %w", key, spool.ErrMessageNotFound)
	}
	it := Item{Name: key, State: place, Path: p}
	it.Queued, _ = queuefile.NameTime(key)
	return it, nil
}

// locate returns the path of the message's file now, or "". A message
// with an id is looked for where its state says, then in every working
// folder by its two possible working names (no folder is listed but the
// few instance and bucket folders).
func (b *DirBackend) locate(it Item) string {
	if it.Path != "" && isRegular(it.Path) {
		return it.Path
	}
	if it.ID == "" {
		return ""
	}
	q := b.Dirs.Queue
	dirs := []string{filepath.Join(q, spool.ReadyDir), filepath.Join(q, spool.HoldDir)}
	for _, sub := range []string{spool.ActiveDir, spool.DeferredDir} {
		ents, _ := os.ReadDir(filepath.Join(q, sub))
		for _, e := range ents {
			if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
				dirs = append(dirs, filepath.Join(q, sub, e.Name()))
			}
		}
	}
	for _, d := range dirs {
		for _, n := range []string{it.ID + "_" + it.Name, it.ID + queuefile.Ext} {
			if p := filepath.Join(d, n); isRegular(p) {
				return p
			}
		}
	}
	return ""
}

func isRegular(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}

// State implements Backend.
func (b *DirBackend) State(key string, in spool.Place) spool.Place {
	it, err := b.find(key, in)
	if err != nil {
		return ""
	}
	return it.State
}

// Message implements Backend.
func (b *DirBackend) Message(key string, in spool.Place) (*Message, error) {
	it, err := b.find(key, in)
	if err != nil {
		return nil, err
	}
	m := &Message{Item: it}
	var problems []string
	st, err := spool.ReadState(b.Dirs, it.ID)
	if err != nil {
		problems = append(problems, err.Error())
	}
	if st != nil {
		m.Attempts, m.Next, m.LastErr, m.History = st.Attempts, st.NextAttempt, st.LastError, st.History
		for _, a := range st.Done {
			m.Rcpts = append(m.Rcpts, stages.RcptResult{Addr: a, Status: stages.RcptDelivered})
		}
		m.Rcpts = append(m.Rcpts, st.Failed...)
		if !st.Queued.IsZero() {
			m.Queued = st.Queued
		}
	}
	path := b.locate(it)
	if path == "" {
		problems = append(problems, "the file is not where the index last saw it (moved just now?)")
	} else {
		m.Path = path
		b.readFile(m, path, &problems)
	}
	b.attachLog(m)
	m.Problem = strings.Join(problems, "; ")
	return m, nil
}

// readFile fills in the envelope, header and preview from the file.
func (b *DirBackend) readFile(m *Message, path string, problems *[]string) {
	c, err := readContent(path)
	if err != nil {
		*problems = append(*problems, err.Error())
	}
	m.Headers, m.Body, m.Cut, m.Subject = c.headers, c.body, c.cut, c.subject
	if m.State == spool.PlaceSent || m.State == spool.PlaceUndeliverable {
		return
	}
	prm, kind, err := spool.PeekParams(path, b.Identities)
	if err != nil {
		*problems = append(*problems, "sealed parameters: "+err.Error())
		return
	}
	m.From, m.Rcpts = prm.From, mergeRcpts(m.Rcpts, prm.To)
	if len(prm.To) > 0 {
		m.To = prm.To[0]
	}
	if kind == stages.KindSealed {
		m.Host, m.Port, m.TLS = stages.HostKey(prm.Host), prm.Port, string(prm.TLS)
		if prm.Relay != "" {
			m.Host = "relay " + prm.Relay
		}
	}
}

// mergeRcpts adds the recipients not in known (in any case), as pending.
// A set, not a scan of known per recipient: a message may have thousands.
func mergeRcpts(known []stages.RcptResult, to []string) []stages.RcptResult {
	seen := make(map[string]bool, len(known))
	for _, k := range known {
		seen[strings.ToLower(k.Addr)] = true
	}
	out := known
	for _, a := range to {
		if !seen[strings.ToLower(a)] {
			out = append(out, stages.RcptResult{Addr: a, Status: "pending"})
		}
	}
	return out
}

// attachLog adds the XML log: Undeliverable's file, or the last attempt's
// kept in memory.
func (b *DirBackend) attachLog(m *Message) {
	if m.State == spool.PlaceUndeliverable && m.Path != "" {
		if l, err := spool.ReadXMLLog(spool.XMLLogPath(m.Path)); err == nil {
			m.Log, m.LogSource = l, filepath.Base(spool.XMLLogPath(m.Path))
		}
	} else if m.ID != "" {
		if l := b.Index.LastLog(m.ID); l != nil {
			m.Log, m.LogSource = l, "the last attempt (kept in memory)"
		}
	}
	if l := m.Log; l != nil {
		if m.Host == "" {
			m.Host, m.Port, m.TLS = l.Host, l.Port, l.TLS
		}
		if m.From == "" {
			m.From = l.From
		}
		if len(m.Rcpts) == 0 {
			for _, r := range l.Recipients {
				m.Rcpts = append(m.Rcpts, stages.RcptResult{Addr: r.Addr, Status: stages.RcptStatus(r.Status), Code: r.Code, Enhanced: r.Enhanced, Text: r.Text})
			}
		}
	}
}

// Act implements Backend.
func (b *DirBackend) Act(ctx context.Context, a Action) Result {
	if a.Host != "" {
		return b.actOnHost(ctx, a)
	}
	var r Result
	for _, key := range a.Keys {
		if err := b.actOne(a.Op, key, a.In); err != nil {
			r.Errors = append(r.Errors, err.Error())
			continue
		}
		r.Done++
	}
	return r
}

// actOne carries out op on one message and updates the index.
func (b *DirBackend) actOne(op, key string, in spool.Place) error {
	it, err := b.find(key, in)
	if err != nil {
		return err
	}
	name := it.Key()
	since := b.Index.Seq()
	var to spool.Place
	switch op {
	case OpHold:
		_, err = spool.HoldMessage(b.Dirs, name)
		to = spool.PlaceHeld
	case OpRelease:
		_, err = spool.ReleaseMessage(b.Dirs, name)
		to = spool.PlaceQueued
	case OpRetry:
		_, err = spool.RetryMessage(b.Dirs, name)
		to = spool.PlaceQueued
		if err == nil && b.LiftPause != nil && it.Host != "" {
			b.LiftPause(it.Host, false)
		}
	case OpRequeue:
		if it.State != spool.PlaceUndeliverable {
			return fmt.Errorf("%s is %s: only undeliverable messages are requeued", it.Name, it.State)
		}
		_, err = spool.RequeueMessage(b.Dirs, filepath.Base(it.Path), b.Now())
		if err == nil {
			b.Index.Remove(key, in)
			b.rescan()
		}
		return err
	case OpPurge:
		return b.purge(it, key, in)
	default:
		return fmt.Errorf("unknown action %q", op)
	}
	if err != nil {
		return err
	}
	b.Index.Update(key, in, since, func(x *Item) { x.State, x.Next = to, time.Time{} })
	return nil
}

// purge removes a filed copy (Sent, or Undeliverable with its XML log).
// Messages still in the queue are not purged: hold them, or let them be
// filed.
func (b *DirBackend) purge(it Item, key string, in spool.Place) error {
	dir := b.filedDir(it.State)
	if dir == "" {
		return fmt.Errorf("%s is %s: purge removes sent and undeliverable copies only (hold a message to stop it)", it.Name, it.State)
	}
	p := it.Path
	if p == "" || filepath.Dir(p) != filepath.Clean(dir) || !isRegular(p) {
		return fmt.Errorf("%s: %w", it.Name, spool.ErrMessageNotFound)
	}
	if err := os.Remove(p); err != nil {
		return err
	}
	if it.State == spool.PlaceUndeliverable {
		if err := os.Remove(spool.XMLLogPath(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	b.Index.Remove(key, in)
	return nil
}

// actOnHost carries out op on every message of a host: the spool's bulk
// moves, selecting by the index's host or, for a message it has not read,
// the sealed host.
func (b *DirBackend) actOnHost(ctx context.Context, a Action) Result {
	host := strings.ToLower(strings.TrimSpace(a.Host))
	match := func(e spool.Entry) bool { return b.entryHost(e) == host }
	var res spool.MoveResult
	var err error
	switch a.Op {
	case OpHold:
		res, err = spool.HoldAll(ctx, b.Dirs, match)
	case OpRelease:
		res, err = spool.ReleaseAll(ctx, b.Dirs, match)
	case OpRetry:
		res, err = spool.RetryAll(ctx, b.Dirs, match)
		if b.LiftPause != nil {
			b.LiftPause(host, false)
		}
	case OpRequeue:
		res, err = spool.RequeueAll(ctx, b.Dirs, b.Now(), match)
	case OpPurge:
		return b.purgeHost(host)
	default:
		return Result{Errors: []string{fmt.Sprintf("unknown action %q", a.Op)}}
	}
	b.rescan()
	r := Result{Done: res.Moved}
	if err != nil {
		r.Errors = append(r.Errors, err.Error())
	}
	if res.Active > 0 {
		r.Errors = append(r.Errors, fmt.Sprintf("%d being sent right now: left alone", res.Active))
	}
	if res.Clash > 0 {
		r.Errors = append(r.Errors, fmt.Sprintf("%d not moved: a file of that name is in the way", res.Clash))
	}
	return r
}

// entryHost is the SMTP host of a spool entry: the index's, or the seal's.
func (b *DirBackend) entryHost(e spool.Entry) string {
	key, in := e.ID, spool.Place("")
	if key == "" {
		key, in = e.Name, e.Place
	}
	if it, ok := b.Index.Get(key, in); ok && it.Host != "" {
		return it.Host
	}
	if e.Place == spool.PlaceUndeliverable {
		if l, err := spool.ReadXMLLog(spool.XMLLogPath(e.Path)); err == nil {
			return l.Host
		}
		return ""
	}
	if prm, _, err := spool.PeekParams(e.Path, b.Identities); err == nil && prm != nil && prm.Relay == "" {
		return stages.HostKey(prm.Host)
	}
	return ""
}

// purgeHost purges the filed copies of a host that the index lists.
func (b *DirBackend) purgeHost(host string) Result {
	var r Result
	for _, st := range []spool.Place{spool.PlaceSent, spool.PlaceUndeliverable} {
		for {
			p := b.Index.List(Query{State: st, Host: host, PerPage: 500})
			if len(p.Items) == 0 {
				break
			}
			for _, it := range p.Items {
				if err := b.purge(it, it.Key(), placeOf(it)); err != nil {
					r.Errors = append(r.Errors, err.Error())
					b.Index.Remove(it.Key(), placeOf(it))
					continue
				}
				r.Done++
			}
		}
	}
	return r
}
