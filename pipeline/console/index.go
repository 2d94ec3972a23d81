package console

import (
	"container/heap"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// Bounds of what the index keeps in memory beside the queue itself.
const (
	// MaxSentKept is how many of the latest sent messages the index lists
	// (Sent is never listed from disk: it only grows).
	MaxSentKept = 10000
	// MaxLogsKept is how many last-attempt logs of deferred messages are
	// kept (an Undeliverable message's log is on disk).
	MaxLogsKept = 10000
	// MaxPageOffset bounds how deep the queue page goes: narrow the
	// selection with filters beyond it.
	MaxPageOffset = 10000
	// maxField bounds each string kept from a message (subject, address,
	// error).
	maxField = 200
)

// Index is the console's in-memory picture of the queue: one Item per
// message, fed by the pipeline's filings (Observe) and by scans of the
// storage (Replace), so that a page never lists the spool. It keeps the
// per-host table and the per-minute series too. A cluster backend can feed
// one Index with the whole cluster's filings. Safe for concurrent use.
type Index struct {
	mu     sync.Mutex
	items  map[string]*Item  // by ikey
	alias  map[string]string // place:name of filed copies -> ikey
	sent   []string          // ikeys of sent messages, oldest first (at most MaxSentKept)
	logs   map[string]*stages.XMLLog
	logIDs []string // ids in logs, oldest first
	hosts  map[string]*hostState
	series *Series
	seq    uint64
	day    string // the local date sentToday counts
	today  int    // messages sent today
	unread bool   // messages may have been added whose details were not read (see Unread)
}

type hostState struct {
	failures    int
	lastErr     string
	lastErrAt   time.Time
	pausedUntil time.Time
	sent        [rateMinutes]int // messages sent per minute, a ring by minute
	sentMin     int64            // the minute (Unix time / 60) of the newest bucket
}

// rateMinutes is how many minutes the host table's rate averages.
const rateMinutes = 5

// countSent counts a message sent to the host at now.
func (h *hostState) countSent(now time.Time) {
	m := now.Unix() / 60
	for k := h.sentMin + 1; k <= m && k <= h.sentMin+rateMinutes; k++ {
		h.sent[k%rateMinutes] = 0
	}
	if m > h.sentMin {
		h.sentMin = m
	}
	if m > h.sentMin-rateMinutes {
		h.sent[m%rateMinutes]++
	}
}

// perMinute returns the messages sent per minute over the last
// rateMinutes minutes before now.
func (h *hostState) perMinute(now time.Time) float64 {
	m := now.Unix() / 60
	total := 0
	for k := m - rateMinutes + 1; k <= m; k++ {
		if k <= h.sentMin && k > h.sentMin-rateMinutes {
			total += h.sent[k%rateMinutes]
		}
	}
	return float64(total) / rateMinutes
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{
		items: map[string]*Item{}, alias: map[string]string{}, logs: map[string]*stages.XMLLog{},
		hosts: map[string]*hostState{}, series: NewSeries(),
	}
}

// ikey is the index's key of a message: its id, or where and by what name
// it is for one without an id.
func ikey(id string, place spool.Place, name string) string {
	if id != "" {
		return "i:" + id
	}
	if place == "" {
		place = spool.PlaceQueued
	}
	return string(place) + ":" + name
}

// clip cuts a string kept in the index to maxField bytes.
func clip(s string) string { return clipText(s, maxField) }

// Observe records a filing of the pipeline (stages.Filed, as the Archiver
// reports it) at now.
func (x *Index) Observe(f stages.Filed, now time.Time) {
	j := f.Job
	if j == nil {
		return
	}
	state := verdictState(f)
	var log *stages.XMLLog
	if state == spool.PlaceDeferred && j.Outcome.Attempted {
		log = attemptLog(j, now) // built before the lock: a page waits on it
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.seq++
	x.series.Add(now, f.Verdict)
	x.hostOutcome(f, now)
	if state == "" {
		return
	}
	k := ikey(j.ID, state, j.Name)
	if byName := ikey("", spool.PlaceQueued, j.Name); j.ID != "" && x.items[byName] != nil {
		// Claimed since a scan saw it in queue_dir by its name: a page
		// that shows it by name follows it to its id.
		delete(x.items, byName)
		x.alias[byName] = k
	}
	it := x.items[k]
	if it == nil {
		it = &Item{ID: j.ID, Name: j.Name}
		x.items[k] = it
		x.unread = true
	}
	x.fillFromJob(it, j)
	it.State, it.seq = state, x.seq
	it.Next = time.Time{}
	if state == spool.PlaceDeferred {
		it.Next = j.State.NextAttempt
		if log != nil {
			x.keepLog(j.ID, log)
		}
	}
	if f.Path != "" {
		it.Path = f.Path
		a := string(state) + ":" + filepath.Base(f.Path)
		delete(x.items, a) // a scan may have seen the filed copy first, by name
		x.alias[a] = k
	}
	if state == spool.PlaceSent {
		x.countSent(k, now)
	}
}

// verdictState is where a filing leaves the message; "" for none known.
func verdictState(f stages.Filed) spool.Place {
	if f.Err != nil {
		return spool.PlaceDeferred // the Archiver deferred it to try the filing again
	}
	switch f.Verdict {
	case stages.Sent:
		return spool.PlaceSent
	case stages.Failed:
		return spool.PlaceUndeliverable
	case stages.Deferred, stages.Parked:
		return spool.PlaceDeferred
	case stages.Returned:
		return spool.PlaceQueued
	case stages.Held:
		return spool.PlaceHeld
	}
	return ""
}

// fillFromJob copies what the pipeline knows of the message.
func (x *Index) fillFromJob(it *Item, j *stages.Job) {
	if h := j.Host(); h != "" {
		it.Host = h
	}
	if j.Sender != "" {
		it.From = clip(j.Sender)
	}
	if j.Params != nil && len(j.Params.To) > 0 {
		it.To, it.Rcpts = clip(j.Params.To[0]), len(j.Params.To)
	}
	it.Queued = j.State.Queued
	it.Attempts = j.State.Attempts
	it.LastErr = clip(j.State.LastError)
	if j.Outcome.Err != nil && j.Outcome.Verdict == stages.Failed {
		it.LastErr = clip(j.Outcome.Err.Error())
	}
}

// attemptLog is the log of a deferred message's last attempt, the same
// record an Undeliverable message gets as its XML log (nil if it cannot
// be built).
func attemptLog(j *stages.Job, now time.Time) *stages.XMLLog {
	b, err := stages.BuildXMLLog(j, now)
	if err != nil {
		return nil
	}
	l, err := parseXMLLog(b)
	if err != nil {
		return nil
	}
	// BuildXMLLog writes a give-up's log: every recipient not delivered is
	// failed. This message is deferred: only those failed for good are.
	final := map[string]bool{}
	for _, r := range j.State.Failed {
		final[r.Addr] = true
	}
	for _, r := range j.Outcome.Rcpts {
		if r.Status == stages.RcptFailed {
			final[r.Addr] = true
		}
	}
	for i, r := range l.Recipients {
		if r.Status == string(stages.RcptFailed) && !final[r.Addr] {
			l.Recipients[i].Status = string(stages.RcptDeferred)
		}
	}
	return l
}

// keepLog keeps l as the last attempt's log of message id, dropping the
// oldest beyond MaxLogsKept.
func (x *Index) keepLog(id string, l *stages.XMLLog) {
	if _, ok := x.logs[id]; !ok {
		x.logIDs = append(x.logIDs, id)
	}
	x.logs[id] = l
	for len(x.logIDs) > MaxLogsKept {
		delete(x.logs, x.logIDs[0])
		x.logIDs = x.logIDs[1:]
	}
}

// countSent counts a message sent today and keeps the latest sent listed.
func (x *Index) countSent(k string, now time.Time) {
	if d := now.Format(time.DateOnly); d != x.day {
		x.day, x.today = d, 0
	}
	x.today++
	x.sent = append(x.sent, k)
	for len(x.sent) > MaxSentKept {
		old := x.sent[0]
		x.sent = x.sent[1:]
		if it := x.items[old]; it != nil && it.State == spool.PlaceSent {
			x.drop(old, it)
		}
	}
}

// hostOutcome updates the host table: failures in a row, the last error,
// a pause (the Dispatcher parks a paused or saturated host's mail until
// the time it can send again).
func (x *Index) hostOutcome(f stages.Filed, now time.Time) {
	j := f.Job
	host := j.Host()
	if host == "" {
		return
	}
	h := x.hosts[host]
	if h == nil {
		h = &hostState{}
		x.hosts[host] = h
	}
	switch f.Verdict {
	case stages.Sent:
		h.failures = 0
		h.pausedUntil = time.Time{}
		h.countSent(now)
	case stages.Deferred, stages.Failed:
		if j.Outcome.Attempted && j.Outcome.Err != nil {
			h.lastErr, h.lastErrAt = clip(j.Outcome.Err.Error()), now
			if f.Verdict == stages.Deferred {
				h.failures++
			}
		}
	case stages.Parked:
		if j.Outcome.Due.After(h.pausedUntil) {
			h.pausedUntil = j.Outcome.Due
		}
	}
}

// replaceChunk is how many found messages Replace applies per hold of the
// index's lock: the pipeline's filings wait for the lock, and a listing of
// a million-file queue applied at once held it for seconds.
const replaceChunk = 4096

// Replace puts what a scan of the storage found in place of what the
// index holds for the given places, except for messages updated since the
// scan began (seq, from Seq): a filing during the scan is newer. Filed
// copies already indexed (by their id) are not added again. It holds the
// lock a chunk at a time, so filings go on while a big listing is applied.
func (x *Index) Replace(places []spool.Place, found []Item, since uint64) {
	x.mu.Lock()
	x.seq++
	scan := x.seq
	x.mu.Unlock()
	for start := 0; start < len(found); start += replaceChunk {
		x.mu.Lock()
		for _, f := range found[start:min(start+replaceChunk, len(found))] {
			x.applyFound(f, scan, since)
		}
		x.mu.Unlock()
	}
	// What the scan did not find is gone, unless it changed since. The
	// candidates are taken in one pass (pointers only), dropped a chunk at
	// a time, each checked again under the lock.
	x.mu.Lock()
	var gone []string
	for k, it := range x.items {
		if it.scan != scan && it.seq <= since && slices.Contains(places, it.State) {
			gone = append(gone, k)
		}
	}
	x.mu.Unlock()
	for start := 0; start < len(gone); start += replaceChunk {
		x.mu.Lock()
		for _, k := range gone[start:min(start+replaceChunk, len(gone))] {
			if it := x.items[k]; it != nil && it.scan != scan && it.seq <= since && slices.Contains(places, it.State) {
				x.drop(k, it)
			}
		}
		x.mu.Unlock()
	}
}

// applyFound records one message a scan found; x.mu is held.
func (x *Index) applyFound(f Item, scan, since uint64) {
	k := ikey(f.ID, f.State, f.Name)
	if a, ok := x.alias[string(f.State)+":"+f.Name]; ok && f.ID == "" && f.State == spool.PlaceUndeliverable {
		k = a
	}
	it := x.items[k]
	if it == nil {
		it = &Item{}
		*it = f
		it.seq, it.scan = since, scan
		x.items[k] = it
		x.unread = true
		return
	}
	it.scan = scan
	if it.seq > since {
		return
	}
	// The change is as old as the scan's listing (since), not its
	// applying: an action taken meanwhile (a retry that moved the file)
	// is newer, and its Update must not be refused as older than this.
	it.State, it.Path, it.seq = f.State, f.Path, since
	if !f.Next.IsZero() {
		it.Next = f.Next
	}
	if it.Queued.IsZero() {
		it.Queued = f.Queued
	}
}

// Seq returns the index's change counter, for Replace.
func (x *Index) Seq() uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.seq
}

// lookup returns the message key names (an id, or a name in place in),
// or nil. Call with mu held.
func (x *Index) lookup(key string, in spool.Place) *Item {
	if spool.IsID(key) {
		if it := x.items[ikey(key, "", "")]; it != nil {
			return it
		}
	}
	if in == "" {
		for _, p := range spool.QueuePlaces {
			if it := x.items[ikey("", p, key)]; it != nil {
				return it
			}
		}
		in = spool.PlaceQueued
	}
	if it := x.items[ikey("", in, key)]; it != nil {
		return it
	}
	if a, ok := x.alias[string(in)+":"+key]; ok {
		return x.items[a]
	}
	return nil
}

// Get returns a copy of the message key names, if the index has it.
func (x *Index) Get(key string, in spool.Place) (Item, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if it := x.lookup(key, in); it != nil {
		return *it, true
	}
	return Item{}, false
}

// LastLog returns the last attempt's log of deferred message id, if kept.
func (x *Index) LastLog(id string) *stages.XMLLog {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.logs[id]
}

// Update applies fn to the message key names, if the index has it and it
// has not changed since seq (from Seq: a filing since then is newer than
// what fn knows); a state changed by fn moves it under its new key.
func (x *Index) Update(key string, in spool.Place, since uint64, fn func(*Item)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	it := x.lookup(key, in)
	if it == nil || it.seq > since {
		return
	}
	old := ikey(it.ID, it.State, it.Name)
	fn(it)
	x.seq++
	it.seq = x.seq
	if k := ikey(it.ID, it.State, it.Name); k != old {
		delete(x.items, old)
		x.items[k] = it
	}
}

// Remove takes the message key names out of the index.
func (x *Index) Remove(key string, in spool.Place) {
	x.mu.Lock()
	defer x.mu.Unlock()
	it := x.lookup(key, in)
	if it == nil {
		return
	}
	x.drop(ikey(it.ID, it.State, it.Name), it)
	x.seq++
}

// drop removes the item under ikey k and the aliases that lead to it.
// Call with mu held.
func (x *Index) drop(k string, it *Item) {
	delete(x.items, k)
	for _, a := range []string{string(it.State) + ":" + filepath.Base(it.Path), ikey("", spool.PlaceQueued, it.Name)} {
		if x.alias[a] == k {
			delete(x.alias, a)
		}
	}
}

// Summary returns the counts per state, the host table and the series.
// It walks the index once (no disk access).
func (x *Index) Summary(now time.Time) Summary {
	x.mu.Lock()
	defer x.mu.Unlock()
	s := Summary{Counts: map[spool.Place]Count{}, Series: x.series.Copy()}
	rows := map[string]*HostStatus{}
	for _, it := range x.items {
		if it.State == spool.PlaceSent {
			continue
		}
		c := s.Counts[it.State]
		c.N++
		if !it.Queued.IsZero() && (c.Oldest.IsZero() || it.Queued.Before(c.Oldest)) {
			c.Oldest = it.Queued
		}
		s.Counts[it.State] = c
		if it.State == spool.PlaceUndeliverable {
			continue
		}
		if !it.known && it.Host == "" {
			s.Unindexed++
		}
		if it.Host == "" {
			continue
		}
		r := rows[it.Host]
		if r == nil {
			r = &HostStatus{Host: it.Host}
			rows[it.Host] = r
		}
		r.Queued++
		if it.State == spool.PlaceDeferred {
			r.Deferred++
		}
	}
	if now.Format(time.DateOnly) == x.day {
		s.Counts[spool.PlaceSent] = Count{N: x.today}
	}
	for host, h := range x.hosts {
		r := rows[host]
		if r == nil {
			r = &HostStatus{Host: host}
			rows[host] = r
		}
		r.Failures, r.LastError, r.LastErrorAt = h.failures, h.lastErr, h.lastErrAt
		if h.pausedUntil.After(now) {
			r.PausedUntil = h.pausedUntil
		}
		r.SentPerMin = h.perMinute(now)
	}
	for _, r := range rows {
		s.Hosts = append(s.Hosts, *r)
	}
	slices.SortFunc(s.Hosts, func(a, b HostStatus) int { return strings.Compare(a.Host, b.Host) })
	return s
}

// List returns the page q asks for, oldest first. It walks the index once
// and keeps only the messages up to the end of the page (a heap), so a
// page costs the same whatever the queue's size.
func (x *Index) List(q Query) Page {
	if q.PerPage <= 0 {
		q.PerPage = 50
	}
	end := min((q.Page+1)*q.PerPage, MaxPageOffset+q.PerPage)
	// Hosts are kept in lower case; the other fields are compared in lower
	// case: lower the query once.
	q.Host, q.Rcpt, q.Subject = strings.ToLower(q.Host), strings.ToLower(q.Rcpt), strings.ToLower(q.Subject)
	x.mu.Lock()
	defer x.mu.Unlock()
	h := &itemHeap{}
	total := 0
	for _, it := range x.items {
		if !q.matches(it) {
			continue
		}
		total++
		if h.Len() < end {
			heap.Push(h, it)
		} else if older(it, (*h)[0]) {
			(*h)[0] = it
			heap.Fix(h, 0)
		}
	}
	all := make([]*Item, h.Len())
	for i := len(all) - 1; i >= 0; i-- {
		all[i] = heap.Pop(h).(*Item)
	}
	p := Page{Total: total}
	start := min(q.Page*q.PerPage, len(all))
	for _, it := range all[start:] {
		p.Items = append(p.Items, *it)
	}
	p.More = total > end && end < MaxPageOffset+q.PerPage
	return p
}

// matches reports whether it is selected by q, whose strings are in lower
// case.
func (q Query) matches(it *Item) bool {
	switch {
	case q.State != "" && it.State != q.State:
		return false
	case q.Host != "" && q.Host != it.Host:
		return false
	case q.Rcpt != "" && !containsFold(it.To, q.Rcpt) && !containsFold(it.From, q.Rcpt):
		return false
	case q.Subject != "" && !containsFold(it.Subject, q.Subject):
		return false
	}
	return true
}

// containsFold reports whether s contains the lower-case sub, in any case.
func containsFold(s, sub string) bool {
	return sub == "" || len(s) >= len(sub) && strings.Contains(strings.ToLower(s), sub)
}

// older orders messages by enqueue time, then by name.
func older(a, b *Item) bool {
	if !a.Queued.Equal(b.Queued) {
		return a.Queued.Before(b.Queued)
	}
	return a.Name+a.ID < b.Name+b.ID
}

// itemHeap is a max-heap by age: its top is the newest kept.
type itemHeap []*Item

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(i, j int) bool { return older(h[j], h[i]) }
func (h itemHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(v any)        { *h = append(*h, v.(*Item)) }
func (h *itemHeap) Pop() any {
	old := *h
	v := old[len(old)-1]
	*h = old[:len(old)-1]
	return v
}

// Enrich records what was read of a message (host, envelope, subject),
// unless the index has none of it.
func (x *Index) Enrich(key string, in spool.Place, e Item) {
	x.mu.Lock()
	defer x.mu.Unlock()
	it := x.lookup(key, in)
	if it == nil {
		return
	}
	it.known = true
	if it.Host == "" {
		it.Host = e.Host
	}
	if it.From == "" {
		it.From = clip(e.From)
	}
	if it.To == "" {
		it.To, it.Rcpts = clip(e.To), e.Rcpts
	}
	if it.Subject == "" {
		it.Subject = clip(e.Subject)
	}
}

// Unread returns up to n messages whose details were not read yet, for a
// background reader. It walks the index only while such messages may be
// left: once a walk finds fewer than n, none is until more are added.
func (x *Index) Unread(n int) []Item {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.unread {
		return nil
	}
	var out []Item
	for _, it := range x.items {
		if len(out) >= n {
			break
		}
		if !it.known && it.State != spool.PlaceSent {
			out = append(out, *it)
		}
	}
	if len(out) < n {
		x.unread = false
	}
	return out
}
