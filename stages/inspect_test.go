package stages

import (
	"bytes"
	"context"
	"errors"
	"filippo.io/age"
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
)

// inspDirs makes a spool's three folders in a temporary folder.
func inspDirs(t *testing.T) Dirs {
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

var inspSeq int

// inspName returns a fresh queue-file name.
func inspName(t *testing.T) string {
	t.Helper()
	inspSeq++
	n, err := queuefile.NewName(time.Date(2026, 1, 2, 3, 4, 5, inspSeq, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// inspPlace writes a file at dir/name (creating dir).
func inspPlace(t *testing.T, dir, name, content string) string {
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

func inspWalkAll(t *testing.T, d Dirs, places ...Place) map[string][]SpoolEntry {
	t.Helper()
	got := map[string][]SpoolEntry{}
	err := WalkSpool(context.Background(), d, places, func(e SpoolEntry) error {
		got[e.Name] = append(got[e.Name], e)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestWalkAndLocateEveryPlace(t *testing.T) {
	d := inspDirs(t)
	due := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	names := map[Place]string{}
	for _, p := range Places {
		names[p] = inspName(t)
	}
	inspPlace(t, d.Queue, names[PlaceQueued], "q")
	inspPlace(t, filepath.Join(d.Queue, ActiveDir, "inst1"), names[PlaceActive], "a")
	inspPlace(t, filepath.Join(d.Queue, DeferredDir, due.Format(bucketLayout)), names[PlaceDeferred], "d")
	inspPlace(t, filepath.Join(d.Queue, HoldDir), names[PlaceHeld], "h")
	inspPlace(t, d.Undeliverable, names[PlaceUndeliverable], "u")
	inspPlace(t, d.Undeliverable, strings.TrimSuffix(names[PlaceUndeliverable], ".eml")+".xml", "<smtpqLog/>")
	inspPlace(t, d.Sent, names[PlaceSent], "s")
	inspPlace(t, d.Sent, suffixed(names[PlaceSent], 1), "s again")
	// Never messages: hidden, other extensions, folders, links, the lock.
	inspPlace(t, d.Queue, ".hidden.eml", "x")
	inspPlace(t, d.Queue, "notes.txt", "x")
	inspPlace(t, filepath.Join(d.Queue, ActiveDir), "inst1.lock", "")
	inspPlace(t, filepath.Join(d.Sent, queuefile.TmpDir), inspName(t), "partial")
	if err := os.Mkdir(filepath.Join(d.Queue, "dir.eml"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(d.Queue, names[PlaceQueued]), filepath.Join(d.Queue, "link.eml")); err != nil {
		t.Fatal(err)
	}
	inspPlace(t, filepath.Join(d.Queue, DeferredDir, "not-a-bucket"), inspName(t), "x")

	got := inspWalkAll(t, d)
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
	only := inspWalkAll(t, d, PlaceHeld, PlaceSent)
	if len(only) != 3 {
		t.Errorf("walk of held and sent found %v", only)
	}
	if _, err := LocateMessage(d, inspName(t)); !errors.Is(err, ErrMessageNotFound) {
		t.Errorf("locating a missing message: %v", err)
	}
	for _, bad := range []string{"x.txt", ".hidden.eml", "../x.eml", ""} {
		if _, err := LocateMessage(d, bad); !errors.Is(err, ErrNotQueueName) {
			t.Errorf("locating %q: %v", bad, err)
		}
	}
	// fs.SkipAll stops the walk quietly.
	n := 0
	if err := WalkSpool(context.Background(), d, nil, func(SpoolEntry) error { n++; return fs.SkipAll }); err != nil || n != 1 {
		t.Errorf("SkipAll: %d calls, %v", n, err)
	}
	// A cancelled context stops it with the context's error.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := WalkSpool(ctx, d, nil, func(SpoolEntry) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled walk: %v", err)
	}
}

// A folder with more files than one batch is walked whole.
func TestWalkManyFilesInBatches(t *testing.T) {
	d := inspDirs(t)
	const n = scanBatch*3 + 7
	for range n {
		inspPlace(t, d.Queue, inspName(t), "x")
	}
	if got := inspWalkAll(t, d, PlaceQueued); len(got) != n {
		t.Fatalf("walked %d files, want %d", len(got), n)
	}
}

func TestLocateDeferredWithoutState(t *testing.T) {
	d := inspDirs(t)
	n := inspName(t)
	due := time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC)
	inspPlace(t, filepath.Join(d.Queue, DeferredDir, due.Add(time.Hour).Format(bucketLayout)), inspName(t), "other")
	inspPlace(t, filepath.Join(d.Queue, DeferredDir, due.Format(bucketLayout)), n, "x")
	// A state whose next attempt names another bucket: found all the same.
	if err := os.MkdirAll(filepath.Join(d.Queue, StateDir), 0o750); err != nil {
		t.Fatal(err)
	}
	inspPlace(t, filepath.Join(d.Queue, StateDir), n+".json", `{"queued":"2026-01-01T00:00:00Z","attempts":2,"next_attempt":"2026-09-09T00:00:00.5Z"}`)
	loc, err := LocateMessage(d, n)
	if err != nil || len(loc) != 1 || loc[0].Place != PlaceDeferred || !loc[0].Due.Equal(due) {
		t.Fatalf("located %+v, %v", loc, err)
	}
}

func TestInspBucketTimeMatchesDefer(t *testing.T) {
	d := inspDirs(t)
	s, err := OpenSpool(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, due := range []time.Time{
		time.Date(2026, 5, 6, 7, 8, 9, 0, time.UTC),
		time.Date(2026, 5, 6, 7, 8, 9, 1, time.UTC),
		time.Date(2026, 5, 6, 7, 8, 9, 999999999, time.FixedZone("x", 3600)),
	} {
		n := inspName(t)
		inspPlace(t, d.Queue, n, "x")
		job := inspClaim(t, s, n)
		if err := s.Defer(job, due); err != nil {
			t.Fatal(err)
		}
		want := filepath.Join(d.Queue, DeferredDir, bucketTime(due).Format(bucketLayout), job.ID+"_"+n)
		if !inspIsFile(want) {
			t.Errorf("due %v: Defer did not put it in %s", due, want)
		}
	}
}

// inspClaim claims the named queued message with the spool: in queue_dir,
// or in the ready folder (released, retried) under its id.
func inspClaim(t *testing.T, s *Spool, name string) *Job {
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
	d := inspDirs(t)
	s, err := OpenSpool(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	// Queued -> held -> queued.
	q := inspName(t)
	inspPlace(t, d.Queue, q, "q")
	from, err := HoldMessage(d, q)
	if err != nil || from.Place != PlaceQueued {
		t.Fatalf("hold: %+v, %v", from, err)
	}
	inspWant(t, d, q, PlaceHeld)
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
	inspWant(t, d, q, PlaceQueued)
	if _, err := ReleaseMessage(d, q); !errors.As(err, &pe) || pe.Entry.Place != PlaceQueued {
		t.Errorf("releasing a queued message: %v", err)
	}
	if _, err := RetryMessage(d, q); !errors.As(err, &pe) || pe.Entry.Place != PlaceQueued {
		t.Errorf("retrying a queued message: %v", err)
	}

	// Deferred (by the spool, with its state) -> held keeps the state ->
	// released to the queue; then deferred again -> retry.
	df := inspName(t)
	inspPlace(t, d.Queue, df, "d")
	job := inspClaim(t, s, df)
	job.State.Attempts, job.State.LastError = 2, "451 try later"
	due := time.Now().Add(time.Hour)
	if err := s.Defer(job, due); err != nil {
		t.Fatal(err)
	}
	from, err = HoldMessage(d, df)
	if err != nil || from.Place != PlaceDeferred || !from.Due.Equal(bucketTime(due)) {
		t.Fatalf("hold deferred: %+v, %v", from, err)
	}
	inspWant(t, d, df, PlaceHeld)
	if st, err := ReadState(d, job.ID); err != nil || st == nil || st.Attempts != 2 || st.LastError != "451 try later" {
		t.Errorf("held message's state: %+v, %v", st, err)
	}
	if _, err := ReleaseMessage(d, df); err != nil {
		t.Fatal(err)
	}
	inspWant(t, d, df, PlaceQueued)
	job = inspClaim(t, s, df)
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
	inspWant(t, d, df, PlaceQueued)
	if job = inspClaim(t, s, df); job.State.Attempts != 2 {
		t.Errorf("claimed after retry: attempts %d, want 2", job.State.Attempts)
	}

	// Active: cannot be held, released or retried, and says who has it.
	for _, f := range []func(Dirs, string) (SpoolEntry, error){HoldMessage, ReleaseMessage, RetryMessage} {
		if _, err := f(d, df); !errors.As(err, &pe) || pe.Entry.Place != PlaceActive || pe.Entry.Instance != s.id {
			t.Errorf("moving an active message: %v", err)
		}
	}
	if _, err := HoldMessage(d, df); err == nil || !strings.Contains(err.Error(), "being sent right now") || !strings.Contains(err.Error(), s.id) {
		t.Errorf("holding an active message: %v", err)
	}
	if _, err := s.Sent(job, false); err != nil {
		t.Fatal(err)
	}
	if _, err := HoldMessage(d, df); !errors.As(err, &pe) || pe.Entry.Place != PlaceSent {
		t.Errorf("holding a sent message: %v", err)
	}
	if _, err := HoldMessage(d, inspName(t)); !errors.Is(err, ErrMessageNotFound) {
		t.Errorf("holding a missing message: %v", err)
	}
}

// inspWant fails unless the message is in exactly one place, p.
func inspWant(t *testing.T, d Dirs, name string, p Place) {
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
	d := inspDirs(t)
	s, err := OpenSpool(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var queued, deferred []string
	for range 5 {
		n := inspName(t)
		inspPlace(t, d.Queue, n, "q")
		queued = append(queued, n)
	}
	for range 4 {
		n := inspName(t)
		inspPlace(t, d.Queue, n, "d")
		if err := s.Defer(inspClaim(t, s, n), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		deferred = append(deferred, n)
	}
	active := inspName(t)
	inspPlace(t, d.Queue, active, "a")
	inspClaim(t, s, active)

	// Select one queued message out: it stays.
	skip := queued[0]
	r, err := HoldAll(context.Background(), d, func(e SpoolEntry) bool { return e.Name != skip })
	if err != nil {
		t.Fatal(err)
	}
	if r.Moved != 8 || r.Active != 1 || r.Raced != 0 {
		t.Errorf("hold all: %+v, want 8 moved, 1 active", r)
	}
	inspWant(t, d, skip, PlaceQueued)
	for _, n := range append(queued[1:], deferred...) {
		inspWant(t, d, n, PlaceHeld)
	}
	r, err = ReleaseAll(context.Background(), d, nil)
	if err != nil || r.Moved != 8 {
		t.Errorf("release all: %+v, %v", r, err)
	}
	if got := inspWalkAll(t, d, PlaceQueued); len(got) != 9 {
		t.Errorf("after release: %d queued, want 9", len(got))
	}
	// Retry all takes deferred ones only.
	n := inspName(t)
	inspPlace(t, d.Queue, n, "d")
	if err := s.Defer(inspClaim(t, s, n), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	r, err = RetryAll(context.Background(), d, nil)
	if err != nil || r.Moved != 1 {
		t.Errorf("retry all: %+v, %v", r, err)
	}
	inspWant(t, d, n, PlaceQueued)

	// A held message with the name of a queued one is another message:
	// holding the queued one keeps both, each with its own id, and the
	// name alone no longer says which one an operator means.
	other := inspHoldOther(t, s, queued[1])
	r, err = HoldAll(context.Background(), d, nil)
	if err != nil || r.Clash != 0 {
		t.Errorf("hold all beside a held message of the same name: %+v, %v", r, err)
	}
	same := inspWalkAll(t, d, PlaceHeld)[queued[1]]
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

// inspHoldOther makes a held message named name with content "other copy",
// and returns its id.
func inspHoldOther(t *testing.T, s *Spool, name string) string {
	t.Helper()
	dir := t.TempDir()
	inspPlace(t, dir, name, "other copy")
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
	d := inspDirs(t)
	s, err := OpenSpool(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 600
	names := make([]string, n)
	for i := range names {
		names[i] = inspName(t)
		inspPlace(t, d.Queue, names[i], "x")
	}
	ctx := context.Background()
	var claimed []string
	var held, raced, singles int
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		for range 20 {
			_, err := s.Scan(ctx, time.Now(), nil, func(j *Job) bool {
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
	inHold := inspWalkAll(t, d, PlaceHeld)
	inActive := inspWalkAll(t, d, PlaceActive)
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
	d := inspDirs(t)
	now := time.Date(2026, 7, 8, 9, 10, 11, 0, time.UTC)
	n := inspName(t)
	base := strings.TrimSuffix(n, ".eml")
	inspPlace(t, d.Undeliverable, n, "message")
	inspPlace(t, d.Undeliverable, base+".xml", "<smtpqLog/>")
	inspPlace(t, filepath.Join(d.Queue, StateDir), n+".json", `{"attempts":3}`)

	path, err := RequeueMessage(d, n, now)
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(d.Queue, n) {
		t.Errorf("requeued to %s", path)
	}
	inspWant(t, d, n, PlaceQueued)
	if b, _ := os.ReadFile(path); string(b) != "message" {
		t.Errorf("queued content %q", b)
	}
	hist := filepath.Join(d.Undeliverable, base+"."+now.Format(bucketLayout)+".xml")
	if !inspIsFile(hist) || inspIsFile(filepath.Join(d.Undeliverable, base+".xml")) {
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
	inspPlace(t, d.Undeliverable, base+".xml", "<smtpqLog>2</smtpqLog>")
	if _, err := RequeueMessage(d, n, now); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(d.Undeliverable, base+"."+now.Format(bucketLayout)+"-1.xml")); string(b) != "<smtpqLog>2</smtpqLog>" {
		t.Errorf("second history log: %q", b)
	}

	// A file of the same name waiting in queue_dir: refused, nothing
	// moved. (One of the same name held or deferred is another message,
	// with its own id: no clash.)
	c := inspName(t)
	inspPlace(t, d.Undeliverable, c, "failed copy")
	inspPlace(t, d.Undeliverable, strings.TrimSuffix(c, ".eml")+".xml", "<smtpqLog/>")
	inspPlace(t, d.Queue, c, "held copy")
	if _, err := RequeueMessage(d, c, now); !errors.Is(err, ErrNameClash) {
		t.Errorf("requeue over a held copy: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(d.Undeliverable, c)); string(b) != "failed copy" {
		t.Errorf("undeliverable copy: %q", b)
	}
	if !inspIsFile(filepath.Join(d.Undeliverable, strings.TrimSuffix(c, ".eml")+".xml")) {
		t.Errorf("log renamed although nothing was requeued")
	}
	if b, _ := os.ReadFile(filepath.Join(d.Queue, c)); string(b) != "held copy" {
		t.Errorf("held copy: %q", b)
	}

	if _, err := RequeueMessage(d, inspName(t), now); !errors.Is(err, ErrMessageNotFound) {
		t.Errorf("requeueing a missing message: %v", err)
	}
}

// Two requeues of the same messages at once: each message is queued once.
func TestRequeueConcurrent(t *testing.T) {
	d := inspDirs(t)
	const n = 100
	for range n {
		inspPlace(t, d.Undeliverable, inspName(t), "x")
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
	if got := inspWalkAll(t, d, PlaceQueued); len(got) != n {
		t.Errorf("%d queued, want %d", len(got), n)
	}
	if got := inspWalkAll(t, d, PlaceUndeliverable); len(got) != 0 {
		t.Errorf("left undeliverable: %v", got)
	}
}

// Publishing never replaces a file, and works across filesystems (a copy
// where a hard link cannot be made).
func TestPublishNeverReplaces(t *testing.T) {
	d := inspDirs(t)
	tmp := filepath.Join(d.Queue, queuefile.TmpDir)
	src := inspPlace(t, t.TempDir(), "src.eml", "content")
	dst := filepath.Join(d.Queue, "x.eml")
	if err := inspPublish(src, dst, tmp); err != nil {
		t.Fatal(err)
	}
	if err := inspPublish(src, dst, tmp); !errors.Is(err, ErrNameClash) {
		t.Errorf("publishing over an existing file: %v", err)
	}
	other, err := os.MkdirTemp("/dev/shm", "smtpq-inspect-")
	if err != nil {
		t.Skip("no second filesystem (/dev/shm) to copy from")
	}
	defer os.RemoveAll(other)
	src = inspPlace(t, other, "src.eml", "from another filesystem")
	if err := os.Link(src, filepath.Join(d.Queue, "probe")); err == nil {
		t.Skip("/dev/shm is on the same filesystem")
	}
	dst = filepath.Join(d.Queue, "y.eml")
	if err := inspPublish(src, dst, tmp); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(dst); string(b) != "from another filesystem" {
		t.Errorf("copied %q", b)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("left in %s: %v", tmp, ents)
	}
	if err := inspPublish(src, dst, tmp); !errors.Is(err, ErrNameClash) {
		t.Errorf("copying over an existing file: %v", err)
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 0 {
		t.Errorf("left in %s after a clash: %v", tmp, ents)
	}
}

func TestPurge(t *testing.T) {
	d := inspDirs(t)
	now := time.Now()
	old, young := now.Add(-48*time.Hour), now.Add(-time.Hour)
	at := func(p string, t0 time.Time) {
		t.Helper()
		if err := os.Chtimes(p, t0, t0); err != nil {
			t.Fatal(err)
		}
	}
	sentOld, sentYoung := inspName(t), inspName(t)
	at(inspPlace(t, d.Sent, sentOld, "x"), old)
	at(inspPlace(t, d.Sent, suffixed(sentOld, 1), "x"), old)
	at(inspPlace(t, d.Sent, sentYoung, "x"), young)
	at(inspPlace(t, filepath.Join(d.Sent, queuefile.TmpDir), inspName(t), "x"), old)

	// Undeliverable: filed when its log was written; the .eml keeps its
	// enqueue time.
	uOld, uYoung, uNoLog := inspName(t), inspName(t), inspName(t)
	logOf := func(n string) string { return strings.TrimSuffix(n, ".eml") + ".xml" }
	at(inspPlace(t, d.Undeliverable, uOld, "x"), old)
	at(inspPlace(t, d.Undeliverable, logOf(uOld), "x"), old)
	at(inspPlace(t, d.Undeliverable, uYoung, "x"), old)
	at(inspPlace(t, d.Undeliverable, logOf(uYoung), "x"), young)
	at(inspPlace(t, d.Undeliverable, uNoLog, "x"), old)
	history := strings.TrimSuffix(uYoung, ".eml") + ".20260101T000000Z.xml"
	at(inspPlace(t, d.Undeliverable, history, "x"), old)
	fresh := inspPlace(t, d.Undeliverable, logOf(inspName(t)), "being filed") // its .eml comes next

	before := now.Add(-24 * time.Hour)
	r, err := Purge(context.Background(), d, PlaceSent, before)
	if err != nil || r.Messages != 2 {
		t.Errorf("purge sent: %+v, %v", r, err)
	}
	if got := inspWalkAll(t, d, PlaceSent); len(got) != 1 || got[sentYoung] == nil {
		t.Errorf("sent after purge: %v", got)
	}
	r, err = Purge(context.Background(), d, PlaceUndeliverable, before)
	if err != nil || r.Messages != 2 || r.Logs != 2 {
		t.Errorf("purge undeliverable: %+v, %v, want 2 messages, 2 logs", r, err)
	}
	got := inspWalkAll(t, d, PlaceUndeliverable)
	if len(got) != 1 || got[uYoung] == nil {
		t.Errorf("undeliverable after purge: %v", got)
	}
	if !inspIsFile(filepath.Join(d.Undeliverable, logOf(uYoung))) || inspIsFile(filepath.Join(d.Undeliverable, history)) {
		t.Errorf("logs after purge: young log kept? history removed?")
	}
	// Even with a zero age, a log being filed right now stays.
	if _, err := Purge(context.Background(), d, PlaceUndeliverable, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if !inspIsFile(fresh) {
		t.Errorf("a fresh log without its message was purged")
	}
	for _, p := range []Place{PlaceQueued, PlaceActive, PlaceDeferred, PlaceHeld} {
		if _, err := Purge(context.Background(), d, p, now); err == nil {
			t.Errorf("purge %s: no error", p)
		}
	}
}

func TestControls(t *testing.T) {
	d := inspDirs(t)
	if cs, err := ReadControls(d.Queue); cs != nil || err != nil {
		t.Errorf("no folder: %v, %v", cs, err)
	}
	want := []Control{{Op: OpRetry, Host: "smtp.example.com"}, {Op: OpRetry, All: true}, {Op: OpRetry, Host: "b.example"}}
	for _, c := range want {
		if err := WriteControl(d.Queue, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := WriteControl(d.Queue, Control{}); err == nil {
		t.Errorf("a control without op was written")
	}
	dir := filepath.Join(d.Queue, ControlDir)
	inspPlace(t, dir, ".1-x.json.tmp", `{"op":"retry","all":true}`) // being written
	inspPlace(t, dir, "2-bad.json", `{"op":`)
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

// keyedQueue makes a key pair and a queue folder sealing to it, in a
// temporary folder; it returns the queue and the service's identities.
func keyedQueue(t *testing.T) (*queuefile.Queue, []age.Identity) {
	t.Helper()
	dir := t.TempDir()
	idPath, rcptPath := filepath.Join(dir, "id.txt"), filepath.Join(dir, "rcpt.txt")
	if _, err := queuefile.GenerateKeys(idPath, rcptPath); err != nil {
		t.Fatal(err)
	}
	rcpts, err := queuefile.LoadRecipients(rcptPath)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := queuefile.LoadIdentities(idPath)
	if err != nil {
		t.Fatal(err)
	}
	q := &queuefile.Queue{Dir: filepath.Join(dir, "queue"), Recipients: rcpts}
	if err := os.MkdirAll(q.Dir, 0o750); err != nil {
		t.Fatal(err)
	}
	return q, ids
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
	if err != nil || kind != KindSealed {
		t.Fatalf("peek: %v, %v", kind, err)
	}
	if p.Host != "SMTP.Example.com" || p.Port != 587 || p.From != "a@example.com" || !slices.Equal(p.To, []string{"b@example.org"}) || p.Size != int64(len(msg)) {
		t.Errorf("params %+v", p)
	}
	// Only the header is read: a body cut short still peeks.
	b, _ := os.ReadFile(path)
	cut := inspPlace(t, dir, "cut.eml", string(b[:bytes.Index(b, []byte("body"))]))
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
	pk := inspPlace(t, dir, "pickup.eml", "X-Sender: s@example.com\r\nX-Receiver: r1@example.org\r\nX-Receiver: r2@example.org\r\nSubject: x\r\n\r\nbody\r\n")
	p, kind, err = PeekParams(pk, nil)
	if err != nil || kind != KindPickup || p.From != "s@example.com" || len(p.To) != 2 {
		t.Errorf("peek pickup: %+v, %v, %v", p, kind, err)
	}
	plain := inspPlace(t, dir, "plain.eml", "Subject: x\r\n\r\nbody\r\n")
	if _, _, err := PeekParams(plain, ids); !errors.Is(err, queuefile.ErrNoSeal) {
		t.Errorf("peek of a file without seal: %v", err)
	}
}

func TestReadXMLLogRoundTrip(t *testing.T) {
	job := &Job{Name: "x.eml", Sender: "a@example.com", Params: &queuefile.Params{To: []string{"b@example.org"}},
		Route: Route{Host: "smtp.example.com", Port: 25, TLS: queuefile.TLSStartTLS}}
	job.State.Attempts = 3
	job.Outcome = Outcome{Verdict: Permanent, Class: ClassPermanent, Err: &Error{Code: 550, Enhanced: "5.1.1", Step: "rcpt", Text: "no such user"}, Transcript: "a\nb"}
	b, err := BuildXMLLog(job, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	p := inspPlace(t, t.TempDir(), "x.xml", string(b))
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
	if _, err := ReadXMLLog(inspPlace(t, t.TempDir(), "bad.xml", "<smtpqLog")); err == nil {
		t.Errorf("bad XML read")
	}
}
