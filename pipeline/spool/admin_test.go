package spool

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// testDirs makes a spool's three folders in a temporary folder.
func testDirs(t *testing.T) Dirs {
	t.Helper()
	root := t.TempDir()
	d := Dirs{Queue: filepath.Join(root, "queue"), Sent: filepath.Join(root, "sent"), Undeliverable: filepath.Join(root, "undeliverable")}
	for _, dir := range []string{d.Queue, d.Sent, d.Undeliverable} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

var testSeq int

// testName returns a fresh queue-file name.
func testName(t *testing.T) string {
	t.Helper()
	testSeq++
	n, err := queuefile.NewName(time.Date(2026, 1, 2, 3, 4, 5, testSeq, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// placeFile writes a file at dir/name (creating dir).
func placeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o640); err != nil {
		t.Fatal(err)
	}
	return p
}

func walkAll(t *testing.T, d Dirs, places ...Place) map[string][]Entry {
	t.Helper()
	got := map[string][]Entry{}
	err := Walk(context.Background(), d, places, func(e Entry) error {
		got[e.Name] = append(got[e.Name], e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestWalkAndLocateEveryPlace(t *testing.T) {
	d := testDirs(t)
	due := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	names := map[Place]string{}
	for _, p := range Places {
		names[p] = testName(t)
	}
	placeFile(t, d.Queue, names[PlaceQueued], "q")
	placeFile(t, filepath.Join(d.Queue, ActiveDir, "inst1"), names[PlaceActive], "a")
	placeFile(t, filepath.Join(d.Queue, DeferredDir, due.Format(bucketLayout)), names[PlaceDeferred], "d")
	placeFile(t, filepath.Join(d.Queue, HoldDir), names[PlaceHeld], "h")
	placeFile(t, d.Undeliverable, names[PlaceUndeliverable], "u")
	placeFile(t, d.Undeliverable, strings.TrimSuffix(names[PlaceUndeliverable], ".eml")+".xml", "<smtpqLog/>")
	placeFile(t, d.Sent, names[PlaceSent], "s")
	placeFile(t, d.Sent, suffixed(names[PlaceSent], 1), "s again")
	// Never messages: hidden, other extensions, folders, links, the lock.
	placeFile(t, d.Queue, ".hidden.eml", "x")
	placeFile(t, d.Queue, "notes.txt", "x")
	placeFile(t, filepath.Join(d.Queue, ActiveDir), "inst1.lock", "")
	placeFile(t, filepath.Join(d.Sent, queuefile.TmpDir), testName(t), "partial")
	if err := os.Mkdir(filepath.Join(d.Queue, "dir.eml"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(d.Queue, names[PlaceQueued]), filepath.Join(d.Queue, "link.eml")); err != nil {
		t.Fatal(err)
	}
	placeFile(t, filepath.Join(d.Queue, DeferredDir, "not-a-bucket"), testName(t), "x")

	got := walkAll(t, d)
	if len(got) != 7 {
		t.Errorf("walk found %d names, want 7: %v", len(got), got)
	}
	for p, n := range names {
		es := got[n]
		if len(es) != 1 || es[0].Place != p {
			t.Errorf("%s: walk found %+v, want one in %s", p, es, p)
			continue
		}
		loc, err := LocateMessage(d, n)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		want := 1
		if p == PlaceSent {
			want = 2 // and its -1 copy
		}
		if len(loc) != want || loc[0].Place != p || loc[0].Path != es[0].Path {
			t.Errorf("%s: located %+v, want %d entries, first %+v", p, loc, want, es[0])
		}
	}
	if e := got[names[PlaceActive]][0]; e.Instance != "inst1" {
		t.Errorf("active entry %+v: instance not inst1", e)
	}
	if e := got[names[PlaceDeferred]][0]; !e.Due.Equal(due) {
		t.Errorf("deferred entry %+v: due not %v", e, due)
	}
	only := walkAll(t, d, PlaceHeld, PlaceSent)
	if len(only) != 3 {
		t.Errorf("walk of held and sent found %v", only)
	}
	if _, err := LocateMessage(d, testName(t)); !errors.Is(err, ErrMessageNotFound) {
		t.Errorf("locating a missing message: %v", err)
	}
	for _, bad := range []string{"x.txt", ".hidden.eml", "../x.eml", ""} {
		if _, err := LocateMessage(d, bad); !errors.Is(err, ErrNotQueueName) {
			t.Errorf("locating %q: %v", bad, err)
		}
	}
	// fs.SkipAll stops the walk quietly.
	n := 0
	if err := Walk(context.Background(), d, nil, func(Entry) error { n++; return fs.SkipAll }); err != nil || n != 1 {
		t.Errorf("SkipAll: %d calls, %v", n, err)
	}
	// A cancelled context stops it with the context's error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Walk(ctx, d, nil, func(Entry) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled walk: %v", err)
	}
}

// A folder with more files than one batch is walked whole.
func TestWalkManyFilesInBatches(t *testing.T) {
	d := testDirs(t)
	const n = scanBatch*3 + 7
	for range n {
		placeFile(t, d.Queue, testName(t), "x")
	}
	if got := walkAll(t, d, PlaceQueued); len(got) != n {
		t.Fatalf("walked %d files, want %d", len(got), n)
	}
}

func TestLocateDeferredWithoutState(t *testing.T) {
	d := testDirs(t)
	n := testName(t)
	due := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	placeFile(t, filepath.Join(d.Queue, DeferredDir, due.Add(time.Hour).Format(bucketLayout)), testName(t), "other")
	placeFile(t, filepath.Join(d.Queue, DeferredDir, due.Format(bucketLayout)), n, "x")
	// A state whose next attempt names another bucket: found all the same.
	if err := os.MkdirAll(filepath.Join(d.Queue, StateDir), 0o750); err != nil {
		t.Fatal(err)
	}
	placeFile(t, filepath.Join(d.Queue, StateDir), n+".json", `{"queued":"2026-01-01T00:00:00Z","attempts":2,"next_attempt":"2026-09-09T00:00:00.5Z"}`)
	loc, err := LocateMessage(d, n)
	if err != nil || len(loc) != 1 || loc[0].Place != PlaceDeferred || !loc[0].Due.Equal(due) {
		t.Fatalf("located %+v, %v", loc, err)
	}
}

func TestInspBucketTimeMatchesDefer(t *testing.T) {
	d := testDirs(t)
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, due := range []time.Time{
		time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC),
		time.Date(2026, 5, 6, 7, 8, 9, 1, time.UTC),
		time.Date(2026, 5, 6, 7, 8, 9, 999999999, time.FixedZone("x", 3600)),
	} {
		n := testName(t)
		placeFile(t, d.Queue, n, "x")
		job := claimTest(t, s, n)
		if err := s.Defer(job, due); err != nil {
			t.Fatal(err)
		}
		want := filepath.Join(d.Queue, DeferredDir, bucketTime(due).Format(bucketLayout), job.ID+"_"+n)
		if !isFile(want) {
			t.Errorf("due %v: Defer did not put it in %s", due, want)
		}
	}
}

// claimTest claims the named queued message with the spool: in queue_dir,
// or in the ready folder (released, retried) under its id.
func claimTest(t *testing.T, s *Spool, name string) *stages.Job {
	t.Helper()
	dir, file := s.dirs.Queue, name
	if found, err := LocateMessage(s.dirs, name); err == nil && found[0].Place == PlaceQueued {
		dir, file = filepath.Dir(found[0].Path), filepath.Base(found[0].Path)
	}
	job, err := s.ScanOne(dir, file)
	if err != nil || job == nil {
		t.Fatalf("claiming %s: %v, %v", name, job, err)
	}
	if job.Name != name {
		t.Fatalf("claimed %s as %q", name, job.Name)
	}
	return job
}

func TestHoldReleaseRetryOne(t *testing.T) {
	d := testDirs(t)
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// Queued -> held -> queued.
	q := testName(t)
	placeFile(t, d.Queue, q, "q")
	from, err := HoldMessage(d, q)
	if err != nil || from.Place != PlaceQueued {
		t.Fatalf("hold: %+v, %v", from, err)
	}
	wantPlace(t, d, q, PlaceHeld)
	var pe *PlaceError
	if _, err := HoldMessage(d, q); !errors.As(err, &pe) || pe.Entry.Place != PlaceHeld {
		t.Errorf("holding a held message: %v", err)
	}
	if _, err := RetryMessage(d, q); !errors.As(err, &pe) || pe.Entry.Place != PlaceHeld || !strings.Contains(err.Error(), "release") {
		t.Errorf("retrying a held message: %v", err)
	}
	if _, err := ReleaseMessage(d, q); err != nil {
		t.Fatal(err)
	}
	wantPlace(t, d, q, PlaceQueued)
	if _, err := ReleaseMessage(d, q); !errors.As(err, &pe) || pe.Entry.Place != PlaceQueued {
		t.Errorf("releasing a queued message: %v", err)
	}
	if _, err := RetryMessage(d, q); !errors.As(err, &pe) || pe.Entry.Place != PlaceQueued {
		t.Errorf("retrying a queued message: %v", err)
	}

	// Deferred (by the spool, with its state) -> held keeps the state ->
	// released to the queue; then deferred again -> retry.
	df := testName(t)
	placeFile(t, d.Queue, df, "d")
	job := claimTest(t, s, df)
	job.State.Attempts, job.State.LastError = 2, "451 try later"
	due := time.Now().Add(time.Hour)
	if err := s.Defer(job, due); err != nil {
		t.Fatal(err)
	}
	from, err = HoldMessage(d, df)
	if err != nil || from.Place != PlaceDeferred || !from.Due.Equal(bucketTime(due)) {
		t.Fatalf("hold deferred: %+v, %v", from, err)
	}
	wantPlace(t, d, df, PlaceHeld)
	if st, err := ReadState(d, job.ID); err != nil || st == nil || st.Attempts != 2 || st.LastError != "451 try later" {
		t.Errorf("held message's state: %+v, %v", st, err)
	}
	if _, err := ReleaseMessage(d, df); err != nil {
		t.Fatal(err)
	}
	wantPlace(t, d, df, PlaceQueued)
	job = claimTest(t, s, df)
	if job.State.Attempts != 2 {
		t.Errorf("claimed after release: attempts %d, want 2", job.State.Attempts)
	}
	if err := s.Defer(job, due); err != nil {
		t.Fatal(err)
	}
	from, err = RetryMessage(d, df)
	if err != nil || from.Place != PlaceDeferred {
		t.Fatalf("retry: %+v, %v", from, err)
	}
	wantPlace(t, d, df, PlaceQueued)
	if job = claimTest(t, s, df); job.State.Attempts != 2 {
		t.Errorf("claimed after retry: attempts %d, want 2", job.State.Attempts)
	}

	// Active: cannot be held, released or retried, and says who has it.
	for _, f := range []func(Dirs, string) (Entry, error){HoldMessage, ReleaseMessage, RetryMessage} {
		if _, err := f(d, df); !errors.As(err, &pe) || pe.Entry.Place != PlaceActive || pe.Entry.Instance != s.id {
			t.Errorf("moving an active message: %v", err)
		}
	}
	if _, err := HoldMessage(d, df); err == nil || !strings.Contains(err.Error(), "being sent right now") || !strings.Contains(err.Error(), s.id) {
		t.Errorf("holding an active message: %v", err)
	}
	if _, err := s.FileSent(job, false); err != nil {
		t.Fatal(err)
	}
	if _, err := HoldMessage(d, df); !errors.As(err, &pe) || pe.Entry.Place != PlaceSent {
		t.Errorf("holding a sent message: %v", err)
	}
	if _, err := HoldMessage(d, testName(t)); !errors.Is(err, ErrMessageNotFound) {
		t.Errorf("holding a missing message: %v", err)
	}
}

// wantPlace fails unless the message is in exactly one place, p.
func wantPlace(t *testing.T, d Dirs, name string, p Place) {
	t.Helper()
	loc, err := LocateMessage(d, name)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if len(loc) != 1 || loc[0].Place != p {
		t.Fatalf("%s is at %+v, want %s", name, loc, p)
	}
}

func TestMoveAllSelectsAndCounts(t *testing.T) {
	d := testDirs(t)
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var queued, deferred []string
	for range 5 {
		n := testName(t)
		placeFile(t, d.Queue, n, "q")
		queued = append(queued, n)
	}
	for range 4 {
		n := testName(t)
		placeFile(t, d.Queue, n, "d")
		if err := s.Defer(claimTest(t, s, n), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		deferred = append(deferred, n)
	}
	active := testName(t)
	placeFile(t, d.Queue, active, "a")
	claimTest(t, s, active)

	// Select one queued message out: it stays.
	skip := queued[0]
	r, err := HoldAll(context.Background(), d, func(e Entry) bool { return e.Name != skip })
	if err != nil {
		t.Fatal(err)
	}
	if r.Moved != 8 || r.Active != 1 || r.Raced != 0 {
		t.Errorf("hold all: %+v, want 8 moved, 1 active", r)
	}
	wantPlace(t, d, skip, PlaceQueued)
	for _, n := range append(queued[1:], deferred...) {
		wantPlace(t, d, n, PlaceHeld)
	}
	r, err = ReleaseAll(context.Background(), d, nil)
	if err != nil || r.Moved != 8 {
		t.Errorf("release all: %+v, %v", r, err)
	}
	if got := walkAll(t, d, PlaceQueued); len(got) != 9 {
		t.Errorf("after release: %d queued, want 9", len(got))
	}
	// Retry all takes deferred ones only.
	n := testName(t)
	placeFile(t, d.Queue, n, "d")
	if err := s.Defer(claimTest(t, s, n), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	r, err = RetryAll(context.Background(), d, nil)
	if err != nil || r.Moved != 1 {
		t.Errorf("retry all: %+v, %v", r, err)
	}
	wantPlace(t, d, n, PlaceQueued)

	// A held message with the name of a queued one is another message:
	// holding the queued one keeps both, each with its own id, and the
	// name alone no longer says which one an operator means.
	other := holdInOther(t, s, queued[1])
	r, err = HoldAll(context.Background(), d, nil)
	if err != nil || r.Clash != 0 {
		t.Errorf("hold all beside a held message of the same name: %+v, %v", r, err)
	}
	same := walkAll(t, d, PlaceHeld)[queued[1]]
	if len(same) != 2 || same[0].ID == same[1].ID {
		t.Errorf("held messages named %s: %+v, want two with their own ids", queued[1], same)
	}
	if _, err := ReleaseMessage(d, queued[1]); !errors.Is(err, ErrAmbiguous) {
		t.Errorf("releasing by a name two messages share: %v, want ErrAmbiguous", err)
	}
	if _, err := ReleaseMessage(d, other); err != nil {
		t.Errorf("releasing by id: %v", err)
	}
}

// holdInOther makes a held message named name with content "other copy",
// and returns its id.
func holdInOther(t *testing.T, s *Spool, name string) string {
	t.Helper()
	dir := t.TempDir()
	placeFile(t, dir, name, "other copy")
	job, err := s.ScanOne(dir, name)
	if err != nil || job == nil {
		t.Fatalf("claiming the other %s: %v, %v", name, job, err)
	}
	if err := s.Hold(job); err != nil {
		t.Fatal(err)
	}
	return job.ID
}

// Holding races with a spool claiming the same files: every file ends in
// exactly one place, and each side counts what it got.
func TestHoldAllRacesWithScan(t *testing.T) {
	d := testDirs(t)
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 600
	names := make([]string, n)
	for i := range names {
		names[i] = testName(t)
		placeFile(t, d.Queue, names[i], "x")
	}
	ctx := context.Background()
	var claimed []string
	var held, raced, singles int
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for range 20 {
			_, err := s.Scan(ctx, time.Now(), nil, func(j *stages.Job) bool {
				claimed = append(claimed, j.Name)
				return true
			})
			if err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for range 20 {
			r, err := HoldAll(ctx, d, nil)
			if err != nil {
				t.Error(err)
				return
			}
			held += r.Moved
			raced += r.Raced
		}
	}()
	go func() {
		// Single holds of the same names, from the end.
		defer wg.Done()
		for i := n - 1; i >= 0; i -= 3 {
			if _, err := HoldMessage(d, names[i]); err == nil {
				singles++
			} else if pe := (*PlaceError)(nil); !errors.As(err, &pe) {
				t.Error(err)
				return
			}
		}
	}()
	wg.Wait()
	t.Logf("claimed %d, held %d by HoldAll (%d races lost) and %d one by one", len(claimed), held, raced, singles)
	if len(claimed)+held+singles != n {
		t.Errorf("claimed %d + held %d + %d = %d, want %d", len(claimed), held, singles, len(claimed)+held+singles, n)
	}
	inHold := walkAll(t, d, PlaceHeld)
	inActive := walkAll(t, d, PlaceActive)
	for _, name := range names {
		a, h := len(inActive[name]), len(inHold[name])
		if a+h != 1 {
			t.Errorf("%s: %d in active, %d held", name, a, h)
		}
	}
	if len(inHold) != held+singles {
		t.Errorf("%d files held, counted %d", len(inHold), held+singles)
	}
	sort.Strings(claimed)
	if len(slices.Compact(claimed)) != len(claimed) {
		t.Errorf("a file was claimed twice")
	}
}

func TestRequeue(t *testing.T) {
	d := testDirs(t)
	now := time.Date(2026, 7, 8, 9, 10, 11, 0, time.UTC)
	n := testName(t)
	base := strings.TrimSuffix(n, ".eml")
	placeFile(t, d.Undeliverable, n, "message")
	placeFile(t, d.Undeliverable, base+".xml", "<smtpqLog/>")
	placeFile(t, filepath.Join(d.Queue, StateDir), n+".json", `{"attempts":3}`)

	path, err := RequeueMessage(d, n, now)
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(d.Queue, n) {
		t.Errorf("requeued to %s", path)
	}
	wantPlace(t, d, n, PlaceQueued)
	if b, _ := os.ReadFile(path); string(b) != "message" {
		t.Errorf("queued content %q", b)
	}
	hist := filepath.Join(d.Undeliverable, base+"."+now.Format(bucketLayout)+".xml")
	if !isFile(hist) || isFile(filepath.Join(d.Undeliverable, base+".xml")) {
		t.Errorf("XML log not kept as history %s", hist)
	}
	var pe *PlaceError
	if _, err := RequeueMessage(d, n, now); !errors.As(err, &pe) || pe.Entry.Place != PlaceQueued {
		t.Errorf("requeueing a queued message: %v", err)
	}

	// It fails again (same second): a second history log, no overwrite.
	if err := os.Rename(path, filepath.Join(d.Undeliverable, n)); err != nil {
		t.Fatal(err)
	}
	placeFile(t, d.Undeliverable, base+".xml", "<smtpqLog>2</smtpqLog>")
	if _, err := RequeueMessage(d, n, now); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(d.Undeliverable, base+"."+now.Format(bucketLayout)+"-1.xml")); string(b) != "<smtpqLog>2</smtpqLog>" {
		t.Errorf("second history log: %q", b)
	}

	// A file of the same name waiting in queue_dir: refused, nothing
	// moved. (One of the same name held or deferred is another message,
	// with its own id: no clash.)
	c := testName(t)
	placeFile(t, d.Undeliverable, c, "failed copy")
	placeFile(t, d.Undeliverable, strings.TrimSuffix(c, ".eml")+".xml", "<smtpqLog/>")
	placeFile(t, d.Queue, c, "held copy")
	if _, err := RequeueMessage(d, c, now); !errors.Is(err, ErrNameClash) {
		t.Errorf("requeue over a held copy: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(d.Undeliverable, c)); string(b) != "failed copy" {
		t.Errorf("undeliverable copy: %q", b)
	}
	if !isFile(filepath.Join(d.Undeliverable, strings.TrimSuffix(c, ".eml")+".xml")) {
		t.Errorf("log renamed although nothing was requeued")
	}
	if b, _ := os.ReadFile(filepath.Join(d.Queue, c)); string(b) != "held copy" {
		t.Errorf("held copy: %q", b)
	}

	if _, err := RequeueMessage(d, testName(t), now); !errors.Is(err, ErrMessageNotFound) {
		t.Errorf("requeueing a missing message: %v", err)
	}
}

// Two requeues of the same messages at once: each message is queued once.
func TestRequeueConcurrent(t *testing.T) {
	d := testDirs(t)
	const n = 100
	for range n {
		placeFile(t, d.Undeliverable, testName(t), "x")
	}
	var wg sync.WaitGroup
	results := make([]MoveResult, 4)
	for k := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := RequeueAll(context.Background(), d, time.Now(), nil)
			if err != nil {
				t.Error(err)
			}
			results[k] = r
		}()
	}
	wg.Wait()
	moved := 0
	for _, r := range results {
		moved += r.Moved
	}
	if moved != n {
		t.Errorf("requeued %d in all (%+v), want %d", moved, results, n)
	}
	if got := walkAll(t, d, PlaceQueued); len(got) != n {
		t.Errorf("%d queued, want %d", len(got), n)
	}
	if got := walkAll(t, d, PlaceUndeliverable); len(got) != 0 {
		t.Errorf("left undeliverable: %v", got)
	}
}

// Publishing never replaces a file, and works across filesystems (a copy
// where a hard link cannot be made).
func TestPublishNeverReplaces(t *testing.T) {
	d := testDirs(t)
	tmp := filepath.Join(d.Queue, queuefile.TmpDir)
	src := placeFile(t, t.TempDir(), "src.eml", "content")
	dst := filepath.Join(d.Queue, "x.eml")
	if err := publishCopy(src, dst, tmp); err != nil {
		t.Fatal(err)
	}
	if err := publishCopy(src, dst, tmp); !errors.Is(err, ErrNameClash) {
		t.Errorf("publishing over an existing file: %v", err)
	}
	other, err := os.MkdirTemp("/dev/shm", "smtpq-inspect-")
	if err != nil {
		t.Skip("no second filesystem (/dev/shm) to copy from")
	}
	defer os.RemoveAll(other)
	src = placeFile(t, other, "src.eml", "from another filesystem")
	if err := os.Link(src, filepath.Join(d.Queue, "probe")); err == nil {
		t.Skip("/dev/shm is on the same filesystem")
	}
	dst = filepath.Join(d.Queue, "y.eml")
	if err := publishCopy(src, dst, tmp); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "from another filesystem" {
		t.Errorf("copied %q", b)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("left in %s: %v", tmp, ents)
	}
	if err := publishCopy(src, dst, tmp); !errors.Is(err, ErrNameClash) {
		t.Errorf("copying over an existing file: %v", err)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("left in %s after a clash: %v", tmp, ents)
	}
}

func TestPurge(t *testing.T) {
	d := testDirs(t)
	now := time.Now()
	old, young := now.Add(-48*time.Hour), now.Add(-time.Hour)
	at := func(p string, t0 time.Time) {
		t.Helper()
		if err := os.Chtimes(p, t0, t0); err != nil {
			t.Fatal(err)
		}
	}
	sentOld, sentYoung := testName(t), testName(t)
	at(placeFile(t, d.Sent, sentOld, "x"), old)
	at(placeFile(t, d.Sent, suffixed(sentOld, 1), "x"), old)
	at(placeFile(t, d.Sent, sentYoung, "x"), young)
	at(placeFile(t, filepath.Join(d.Sent, queuefile.TmpDir), testName(t), "x"), old)

	// Undeliverable: filed when its log was written; the .eml keeps its
	// enqueue time.
	uOld, uYoung, uNoLog := testName(t), testName(t), testName(t)
	logOf := func(n string) string { return strings.TrimSuffix(n, ".eml") + ".xml" }
	at(placeFile(t, d.Undeliverable, uOld, "x"), old)
	at(placeFile(t, d.Undeliverable, logOf(uOld), "x"), old)
	at(placeFile(t, d.Undeliverable, uYoung, "x"), old)
	at(placeFile(t, d.Undeliverable, logOf(uYoung), "x"), young)
	at(placeFile(t, d.Undeliverable, uNoLog, "x"), old)
	history := strings.TrimSuffix(uYoung, ".eml") + ".20260101T000000Z.xml"
	at(placeFile(t, d.Undeliverable, history, "x"), old)
	fresh := placeFile(t, d.Undeliverable, logOf(testName(t)), "being filed") // its .eml comes next

	before := now.Add(-24 * time.Hour)
	r, err := Purge(context.Background(), d, PlaceSent, before)
	if err != nil || r.Messages != 2 {
		t.Errorf("purge sent: %+v, %v", r, err)
	}
	if got := walkAll(t, d, PlaceSent); len(got) != 1 || got[sentYoung] == nil {
		t.Errorf("sent after purge: %v", got)
	}
	r, err = Purge(context.Background(), d, PlaceUndeliverable, before)
	if err != nil || r.Messages != 2 || r.Logs != 2 {
		t.Errorf("purge undeliverable: %+v, %v, want 2 messages, 2 logs", r, err)
	}
	got := walkAll(t, d, PlaceUndeliverable)
	if len(got) != 1 || got[uYoung] == nil {
		t.Errorf("undeliverable after purge: %v", got)
	}
	if !isFile(filepath.Join(d.Undeliverable, logOf(uYoung))) || isFile(filepath.Join(d.Undeliverable, history)) {
		t.Errorf("logs after purge: young log kept? history removed?")
	}
	// Even with a zero age, a log being filed right now stays.
	if _, err := Purge(context.Background(), d, PlaceUndeliverable, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !isFile(fresh) {
		t.Errorf("a fresh log without its message was purged")
	}
	for _, p := range []Place{PlaceQueued, PlaceActive, PlaceDeferred, PlaceHeld} {
		if _, err := Purge(context.Background(), d, p, now); err == nil {
			t.Errorf("purge %s: no error", p)
		}
	}
}

func TestControls(t *testing.T) {
	d := testDirs(t)
	if cs, err := ReadControls(d.Queue); cs != nil || err != nil {
		t.Errorf("no folder: %v, %v", cs, err)
	}
	want := []Control{{Op: stages.OpRetry, Host: "smtp.example.com"}, {Op: stages.OpRetry, All: true}, {Op: stages.OpRetry, Host: "b.example"}}
	for _, c := range want {
		if err := WriteControl(d.Queue, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteControl(d.Queue, Control{}); err == nil {
		t.Errorf("a control without op was written")
	}
	dir := filepath.Join(d.Queue, ControlDir)
	placeFile(t, dir, ".1-x.json.tmp", `{"op":"retry","all":true}`) // being written
	placeFile(t, dir, "2-bad.json", `{"op":`)
	b, err := os.ReadFile(filepath.Join(dir, firstControlFile(t, dir)))
	if err != nil || string(b) != `{"op":"retry","host":"smtp.example.com"}` {
		t.Errorf("control file: %s, %v", b, err)
	}
	got, err := ReadControls(d.Queue)
	if err == nil || !strings.Contains(err.Error(), "2-bad.json") {
		t.Errorf("bad control file: %v", err)
	}
	if !slices.Equal(got, want) {
		t.Errorf("controls %+v, want %+v in order", got, want)
	}
	got, err = ReadControls(d.Queue)
	if len(got) != 0 || err != nil {
		t.Errorf("read twice: %+v, %v", got, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != ".1-x.json.tmp" {
		t.Errorf("left in %s: %v", dir, ents)
	}
}

// firstControlFile returns the first control file's name.
func firstControlFile(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") && strings.HasSuffix(e.Name(), ".json") && e.Name() != "2-bad.json" {
			return e.Name()
		}
	}
	t.Fatal("no control file")
	return ""
}

func TestPeekParams(t *testing.T) {
	q, ids := keyedQueue(t)
	dir := t.TempDir()
	long := strings.Repeat("x", 40<<10) // a header line longer than the reader's buffer
	msg := "From: a@example.com\r\nTo: b@example.org\r\nX-Long: " + long + "\r\nSubject: hi\r\n\r\nbody\r\n"
	name, err := q.Enqueue(strings.NewReader(msg), queuefile.Params{Host: "SMTP.Example.com", Port: 587, Username: "u", Password: queuefile.NewSecret("pw-secret")})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(q.Dir, name)
	p, kind, err := PeekParams(path, ids)
	if err != nil || kind != stages.KindSealed {
		t.Fatalf("peek: %v, %v", kind, err)
	}
	if p.Host != "SMTP.Example.com" || p.Port != 587 || p.From != "a@example.com" || !slices.Equal(p.To, []string{"b@example.org"}) || p.Size != int64(len(msg)) {
		t.Errorf("params %+v", p)
	}
	// Only the header is read: a body cut short still peeks.
	b, _ := os.ReadFile(path)
	cut := placeFile(t, dir, "cut.eml", string(b[:bytes.Index(b, []byte("body"))]))
	if _, _, err := PeekParams(cut, ids); err != nil {
		t.Errorf("peek of a file with its body cut: %v", err)
	}
	if _, _, err := PeekParams(path, nil); err == nil {
		t.Errorf("peek without identities: no error")
	}
	other := filepath.Join(dir, "other.txt")
	if _, err := queuefile.GenerateKeys(other, other+".pub"); err != nil {
		t.Fatal(err)
	}
	oids, _ := queuefile.LoadIdentities(other)
	if _, _, err := PeekParams(path, oids); !errors.Is(err, queuefile.ErrWrongKey) {
		t.Errorf("peek with another key: %v", err)
	}
	pk := placeFile(t, dir, "pickup.eml", "X-Sender: s@example.com\r\nX-Receiver: r1@example.org\r\nX-Receiver: r2@example.org\r\nSubject: x\r\n\r\nbody\r\n")
	p, kind, err = PeekParams(pk, nil)
	if err != nil || kind != stages.KindPickup || p.From != "s@example.com" || len(p.To) != 2 {
		t.Errorf("peek pickup: %+v, %v, %v", p, kind, err)
	}
	plain := placeFile(t, dir, "plain.eml", "Subject: x\r\n\r\nbody\r\n")
	if _, _, err := PeekParams(plain, ids); !errors.Is(err, queuefile.ErrNoSeal) {
		t.Errorf("peek of a file without seal: %v", err)
	}
}

func TestReadXMLLogRoundTrip(t *testing.T) {
	job := &stages.Job{Name: "x.eml", Sender: "a@example.com", Params: &queuefile.Params{To: []string{"b@example.org"}},
		Route: stages.Route{Host: "smtp.example.com", Port: 25, TLS: queuefile.TLSStartTLS}}
	job.State.Attempts = 3
	job.Outcome = stages.Outcome{Verdict: stages.Failed, Class: stages.ClassPermanent, Err: &stages.Error{Code: 550, Enhanced: "5.1.1", Step: "rcpt", Text: "no such user"}, Transcript: "a\nb"}
	b, err := stages.BuildXMLLog(job, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	p := placeFile(t, t.TempDir(), "x.xml", string(b))
	l, err := ReadXMLLog(p)
	if err != nil {
		t.Fatal(err)
	}
	if l.Attempts != 3 || l.Host != "smtp.example.com" || l.Failure.Code != 550 || l.Failure.Text != "no such user" || l.From != "a@example.com" {
		t.Errorf("log %+v", l)
	}
	if XMLLogPath("/u/x.eml") != "/u/x.xml" {
		t.Errorf("XMLLogPath")
	}
	if _, err := ReadXMLLog(placeFile(t, t.TempDir(), "bad.xml", "<smtpqLog")); err == nil {
		t.Errorf("bad XML read")
	}
}
