package console

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

var t0 = time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)

// fill returns n messages, the i-th queued i seconds after t0, in state
// st, for host h<i%3>.
func fill(n int, st spool.Place) []Item {
	items := make([]Item, n)
	for i := range items {
		items[i] = Item{ID: fmt.Sprintf("0pgt%012d", i), Name: fmt.Sprintf("m%08d.eml", i), State: st,
			Host: fmt.Sprintf("h%d", i%3), To: fmt.Sprintf("rcpt%d@example.org", i), Subject: fmt.Sprintf("subject %d", i),
			Queued: t0.Add(time.Duration(i) * time.Second)}
	}
	return items
}

func TestIndexListPagesOldestFirst(t *testing.T) {
	x := NewIndex()
	items := fill(120, spool.PlaceDeferred)
	// Given newest first: the order must come from the queue times.
	for i, j := 0, len(items)-1; i < j; i, j = i+1, j-1 {
		items[i], items[j] = items[j], items[i]
	}
	x.Replace(scanPlaces, items, x.Seq())
	for page, want := range []struct {
		first, n int
		more     bool
	}{{0, 50, true}, {50, 50, true}, {100, 20, false}} {
		p := x.List(Query{Page: page, PerPage: 50})
		if p.Total != 120 || len(p.Items) != want.n || p.More != want.more {
			t.Fatalf("page %d: total %d, %d items, more %v; want 120, %d, %v", page, p.Total, len(p.Items), p.More, want.n, want.more)
		}
		for i, it := range p.Items {
			if w := fmt.Sprintf("m%08d.eml", want.first+i); it.Name != w {
				t.Fatalf("page %d row %d: %s, want %s", page, i, it.Name, w)
			}
		}
	}
	for _, tc := range []struct {
		q    Query
		want int
	}{
		{Query{Host: "H1"}, 40},
		{Query{Rcpt: "RCPT11@"}, 1},
		{Query{Subject: "subject 11"}, 11}, // 11, 110..119
		{Query{State: spool.PlaceHeld}, 0},
		{Query{State: spool.PlaceDeferred, Host: "h0", Subject: "subject 3"}, 5}, // 3, 30, 33, 36, 39
	} {
		if p := x.List(tc.q); p.Total != tc.want {
			t.Errorf("%+v: %d messages, want %d", tc.q, p.Total, tc.want)
		}
	}
}

func TestIndexObserve(t *testing.T) {
	x := NewIndex()
	job := &stages.Job{ID: "0pgt0aaaaaaaaaaa", Name: "a.eml", Route: stages.Route{Host: "smtp.example.com"},
		Sender: "app@example.com", Params: &queuefile.Params{To: []string{"u@example.org", "v@example.org"}},
		State: stages.State{Queued: t0, Attempts: 1, LastError: "rcpt: 451 try later", NextAttempt: t0.Add(time.Hour)}}
	job.Outcome = stages.Outcome{Verdict: stages.Deferred, Attempted: true, Err: &stages.Error{Step: "rcpt", Code: 451, Text: "try later"}}
	now := t0.Add(time.Minute)
	x.Observe(stages.Filed{Job: job, Verdict: stages.Deferred}, now)
	it, ok := x.Get(job.ID, "")
	if !ok || it.State != spool.PlaceDeferred || it.Host != "smtp.example.com" || it.Rcpts != 2 || !it.Next.Equal(t0.Add(time.Hour)) {
		t.Fatalf("after a deferral: %+v %v", it, ok)
	}
	if x.LastLog(job.ID) == nil {
		t.Error("no last-attempt log kept for the deferred message")
	}
	s := x.Summary(now)
	if len(s.Hosts) != 1 || s.Hosts[0].Failures != 1 || s.Hosts[0].Deferred != 1 || s.Counts[spool.PlaceDeferred].N != 1 {
		t.Fatalf("summary after a deferral: %+v", s)
	}
	park := &stages.Job{ID: "0pgt0bbbbbbbbbbb", Name: "b.eml", Route: stages.Route{Host: "smtp.example.com"}}
	park.Outcome = stages.Outcome{Verdict: stages.Parked, Due: now.Add(5 * time.Minute)}
	x.Observe(stages.Filed{Job: park, Verdict: stages.Parked}, now)
	if s := x.Summary(now); !s.Hosts[0].PausedUntil.Equal(now.Add(5 * time.Minute)) {
		t.Errorf("paused until %v, want %v", s.Hosts[0].PausedUntil, now.Add(5*time.Minute))
	}
	job.Outcome = stages.Outcome{Verdict: stages.Sent, Attempted: true}
	x.Observe(stages.Filed{Job: job, Verdict: stages.Sent, Path: "/sent/a.eml"}, now)
	s = x.Summary(now)
	if s.Counts[spool.PlaceSent].N != 1 || s.Hosts[0].Failures != 0 || !s.Hosts[0].PausedUntil.IsZero() || s.Hosts[0].SentPerMin != 0.2 {
		t.Errorf("summary after sending: %+v", s)
	}
	if st, ok := x.Get("a.eml", spool.PlaceSent); !ok || st.ID != job.ID {
		t.Errorf("the Sent copy by name: %+v %v", st, ok)
	}
	if s := x.Summary(now.Add(24 * time.Hour)); s.Counts[spool.PlaceSent].N != 0 || s.Hosts[0].SentPerMin != 0 {
		t.Errorf("the next day: sent today %d, rate %v", s.Counts[spool.PlaceSent].N, s.Hosts[0].SentPerMin)
	}
	if s.Series.SentSince(now, 5) != 1 {
		t.Errorf("series: %d sent in the last 5 minutes, want 1", s.Series.SentSince(now, 5))
	}
}

func TestIndexBoundsSent(t *testing.T) {
	x := NewIndex()
	for i := range MaxSentKept + 100 {
		j := &stages.Job{ID: fmt.Sprintf("0pgt%012d", i), Name: fmt.Sprintf("%d.eml", i)}
		x.Observe(stages.Filed{Job: j, Verdict: stages.Sent, Path: fmt.Sprintf("/sent/%d.eml", i)}, t0)
	}
	if p := x.List(Query{State: spool.PlaceSent}); p.Total != MaxSentKept {
		t.Errorf("%d sent messages listed, want %d", p.Total, MaxSentKept)
	}
	if len(x.alias) != MaxSentKept {
		t.Errorf("%d aliases kept, want %d", len(x.alias), MaxSentKept)
	}
	if s := x.Summary(t0); s.Counts[spool.PlaceSent].N != MaxSentKept+100 {
		t.Errorf("sent today %d, want %d", s.Counts[spool.PlaceSent].N, MaxSentKept+100)
	}
}

// TestIndexScanDoesNotUndoAFiling: a message filed while a scan ran keeps
// its new state; one the scan no longer finds is dropped.
func TestIndexScanDoesNotUndoAFiling(t *testing.T) {
	x := NewIndex()
	x.Replace(scanPlaces, fill(3, spool.PlaceDeferred), x.Seq())
	since := x.Seq()
	j := &stages.Job{ID: "0pgt000000000001", Name: "m00000001.eml"}
	x.Observe(stages.Filed{Job: j, Verdict: stages.Held}, t0)
	x.Replace(scanPlaces, fill(2, spool.PlaceDeferred), since) // the scan saw it deferred, and not the third
	if it, _ := x.Get("0pgt000000000001", ""); it.State != spool.PlaceHeld {
		t.Errorf("filed during the scan: %s, want held", it.State)
	}
	if _, ok := x.Get("0pgt000000000002", ""); ok {
		t.Error("a message gone from the spool is still listed")
	}
}

// TestIndexScanDoesNotUndoAnAction: an action taken while a scan ran (a
// retry, moving a deferred message to the queue) keeps its new state when
// the older scan is applied first; applied after the action, the scan does
// not undo it either.
func TestIndexScanDoesNotUndoAnAction(t *testing.T) {
	for _, scanFirst := range []bool{true, false} {
		x := NewIndex()
		x.Replace(scanPlaces, fill(2, spool.PlaceDeferred), x.Seq())
		listed := x.Seq() // the scan lists the folders: the message is deferred
		acted := x.Seq()  // the retry begins, and moves the file
		retried := func() { x.Update("0pgt000000000001", "", acted, func(it *Item) { it.State = spool.PlaceQueued }) }
		if scanFirst {
			x.Replace(scanPlaces, fill(2, spool.PlaceDeferred), listed)
			retried()
		} else {
			retried()
			x.Replace(scanPlaces, fill(2, spool.PlaceDeferred), listed)
		}
		if it, _ := x.Get("0pgt000000000001", ""); it.State != spool.PlaceQueued {
			t.Errorf("scan applied first %v: %s, want queued as the retry left it", scanFirst, it.State)
		}
		if it, _ := x.Get("0pgt000000000000", ""); it.State != spool.PlaceDeferred {
			t.Errorf("scan applied first %v: the untouched message is %s, want deferred", scanFirst, it.State)
		}
	}
}

func TestCheckKey(t *testing.T) {
	for _, k := range []string{"20261204T101010.000000000Z-abc+1234.eml", "report.eml", "0pgt0aaaaaaaaaaa", `a"b<c>.eml`} {
		if err := CheckKey(k); err != nil {
			t.Errorf("%q refused: %v", k, err)
		}
	}
	for _, k := range []string{"", "..", "../x.eml", "/etc/passwd", "a/b.eml", `a\b.eml`, ".hidden.eml", "x..eml/..", "passwd", "..eml"} {
		if err := CheckKey(k); err == nil {
			t.Errorf("%q accepted", k)
		}
	}
}

// BenchmarkIndexList: one page of a million-message queue, filtered by
// host, from memory.
func BenchmarkIndexList(b *testing.B) {
	x := NewIndex()
	x.Replace(scanPlaces, fill(1_000_000, spool.PlaceQueued), 0)
	b.ResetTimer()
	for b.Loop() {
		if p := x.List(Query{Host: "h2", Page: 3, PerPage: 50}); len(p.Items) != 50 {
			b.Fatal(len(p.Items))
		}
	}
}

// The last attempt's log of a deferred message is not a give-up's: a
// recipient deferred in the attempt, or not attempted, is shown deferred
// (BuildXMLLog marks both failed, for Undeliverable); one failed for good
// stays failed.
func TestLastLogOfADeferralKeepsRecipientsDeferred(t *testing.T) {
	x := NewIndex()
	job := &stages.Job{ID: "0pgt0ccccccccccc", Name: "c.eml", Route: stages.Route{Host: "smtp.example.com"},
		Params: &queuefile.Params{To: []string{"u@example.org", "v@example.org", "w@example.org"}},
		State:  stages.State{Queued: t0, Attempts: 1, Failed: []stages.RcptResult{{Addr: "v@example.org", Status: stages.RcptFailed, Code: 550}}}}
	job.Outcome = stages.Outcome{Verdict: stages.Deferred, Attempted: true,
		Rcpts: []stages.RcptResult{{Addr: "u@example.org", Status: stages.RcptDeferred, Code: 451}}}
	x.Observe(stages.Filed{Job: job, Verdict: stages.Deferred}, t0.Add(time.Minute))
	l := x.LastLog(job.ID)
	if l == nil {
		t.Fatal("no last-attempt log")
	}
	var got []string
	for _, r := range l.Recipients {
		got = append(got, r.Addr+"="+r.Status)
	}
	if want := "u@example.org=deferred v@example.org=failed w@example.org=deferred"; strings.Join(got, " ") != want {
		t.Errorf("recipients %s, want %s", strings.Join(got, " "), want)
	}
}
