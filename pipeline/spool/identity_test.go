package spool

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/stages"
)

// These tests are issue 10's cases about producers' file names: each failed
// when the spool keyed a message by the name its producer chose.

// openTestSpool opens a spool in d, closed at the end of the test.
func openTestSpool(t *testing.T, d Dirs) *Spool {
	t.Helper()
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// claimQueued claims name from queue_dir.
func claimQueued(t *testing.T, s *Spool, name string) *stages.Job {
	t.Helper()
	job, err := s.ScanOne(s.dirs.Queue, name)
	if err != nil || job == nil {
		t.Fatalf("claiming %q: %v, %v", name, job, err)
	}
	if job.Name != name || !IsID(job.ID) {
		t.Fatalf("claimed %q as name %q, id %q", name, job.Name, job.ID)
	}
	return job
}

// A cron job drops report.eml every day: a new one while yesterday's is in
// an SMTP transaction is another message. Claiming it must not replace the
// one in flight, whose deferral then still finds its file.
func TestNewFileWithTheNameOfOneInFlight(t *testing.T) {
	d := testDirs(t)
	s := openTestSpool(t, d)
	placeFile(t, d.Queue, "report.eml", "A")
	a := claimQueued(t, s, "report.eml")
	placeFile(t, d.Queue, "report.eml", "B")
	b := claimQueued(t, s, "report.eml")
	if a.ID == b.ID || handle(a).path == handle(b).path {
		t.Fatalf("two messages named report.eml share id %q / path %q", a.ID, handle(a).path)
	}
	if err := s.Defer(a, time.Now().Add(time.Hour)); err != nil {
		t.Fatalf("deferring the message in flight after a namesake arrived: %v", err)
	}
	if got, _ := os.ReadFile(handle(a).path); string(got) != "A" {
		t.Errorf("deferred message holds %q, want A", got)
	}
	if got, _ := os.ReadFile(handle(b).path); string(got) != "B" {
		t.Errorf("the newer message holds %q, want B", got)
	}
	if err := s.Return(b); err != nil {
		t.Fatal(err)
	}
	if got := walkAll(t, d, QueuePlaces...)["report.eml"]; len(got) != 2 {
		t.Errorf("messages named report.eml in the queue: %+v, want 2", got)
	}
}

// A new daily.eml does not inherit the state of an older daily.eml that is
// deferred: not its attempts, not its recipients done, not its acceptance.
func TestStateIsNotInheritedByName(t *testing.T) {
	d := testDirs(t)
	s := openTestSpool(t, d)
	placeFile(t, d.Queue, "daily.eml", "old")
	old := claimQueued(t, s, "daily.eml")
	old.State.Attempts, old.State.Done, old.State.Accepted = 3, []string{"a@example.org"}, true
	if err := s.Defer(old, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	placeFile(t, d.Queue, "daily.eml", "new")
	fresh := claimQueued(t, s, "daily.eml")
	if fresh.State.Attempts != 0 || fresh.State.Accepted || len(fresh.State.Done) != 0 {
		t.Fatalf("the new daily.eml inherited state %+v", fresh.State)
	}
	st, err := ReadState(d, old.ID)
	if err != nil || st == nil || st.Attempts != 3 || !st.Accepted {
		t.Fatalf("the old one's state: %+v, %v", st, err)
	}
}

// crashSpool leaves s as a killed process would: its lock released, its
// journal and files where they are.
func crashSpool(t *testing.T, s *Spool) {
	t.Helper()
	if err := s.journal.Sync(s.journal.written); err != nil {
		t.Fatal(err)
	}
	s.journal.f.Close()
	s.lock.Unlock()
}

// Names cannot forge the journal: a name with a space is recorded, and a
// name with a newline cannot write a line for another message. After a
// crash, the accepted message is filed, the other one is sent.
func TestJournalLinesCannotBeForgedByNames(t *testing.T) {
	d := testDirs(t)
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	victim := "victim.eml"
	names := []string{"my report.eml", "evil.eml\n" + victim + " all x@example.org\nz.eml", victim}
	jobs := map[string]*stages.Job{}
	for _, n := range names {
		placeFile(t, d.Queue, n, "body of "+n)
		jobs[n] = claimQueued(t, s, n)
	}
	for _, n := range names[:2] {
		j := jobs[n]
		j.Outcome = stages.Outcome{Verdict: stages.Sent, Rcpts: []stages.RcptResult{{Addr: "a@example.org", Status: stages.RcptDelivered}}}
		if err := s.RecordAccepted(j); err != nil {
			t.Fatal(err)
		}
	}
	crashSpool(t, s)

	s2 := openTestSpool(t, d)
	if n, err := s2.Recover(); err != nil || n != 3 {
		t.Fatalf("recovered %d files (%v), want 3", n, err)
	}
	got := map[string]*stages.Job{}
	if _, err := s2.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { got[j.Name] = j; return true }); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		j := got[n]
		if j == nil {
			t.Fatalf("%q not back after the crash (got %d)", n, len(got))
		}
		want := n != victim
		if j.State.Accepted != want {
			t.Errorf("%q after the crash: accepted %v, want %v", n, j.State.Accepted, want)
		}
	}
}

// Any name a file system allows, up to 255 bytes, goes through: claimed,
// deferred, claimed again, and filed under that very name (a clash in Sent
// takes -1, cut to fit).
func TestLongAndOddNamesAreFiled(t *testing.T) {
	d := testDirs(t)
	s := openTestSpool(t, d)
	long := strings.Repeat("l", 255-len(".eml")) + ".eml"
	odd := "r\xe9sum\xc3\xa9 \t\"x\" \x01\n" + strings.Repeat("\xe2\x82\xac", 78) + ".eml" // 255 bytes with a cut euro at -1
	if len(odd) > 255 {
		odd = odd[len(odd)-255:]
	}
	for _, n := range []string{long, long, odd, odd} {
		placeFile(t, d.Queue, n, "Subject: x\r\n\r\nbody\r\n")
		j := claimQueued(t, s, n)
		if err := s.Defer(j, time.Now().Add(-time.Second)); err != nil {
			t.Fatalf("deferring %q: %v", n, err)
		}
		var again *stages.Job
		if _, err := s.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { again = j; return false }); err != nil && again == nil {
			t.Fatal(err)
		}
		if again == nil || again.ID != j.ID || again.Name != n {
			t.Fatalf("claimed again: %+v, want id %s named %q", again, j.ID, n)
		}
		again.Kind = stages.KindPickup
		path, err := s.FileSent(again, false)
		if err != nil {
			t.Fatalf("filing %q in Sent: %v", n, err)
		}
		if b := filepath.Base(path); len(b) > 255 || !strings.HasSuffix(b, ".eml") {
			t.Errorf("filed as %q", b)
		}
	}
	sent := pipelineFiles(t, d.Sent)
	if len(sent) != 4 {
		t.Fatalf("Sent holds %q, want 4 files", sent)
	}
	has := map[string]bool{}
	for _, n := range sent {
		has[n] = true
	}
	if !has[long] || !has[odd] {
		t.Errorf("Sent %q lacks the producers' names", sent)
	}
	for _, n := range []string{long, odd} {
		placeFile(t, d.Queue, n, "bad")
		j := claimQueued(t, s, n)
		if _, err := s.FileUndeliverable(j, []byte("<smtpqLog/>")); err != nil {
			t.Errorf("filing %q in Undeliverable: %v", n, err)
		}
	}
	if und := pipelineFiles(t, d.Undeliverable); len(und) != 4 {
		t.Errorf("Undeliverable holds %q, want 2 messages and their logs", und)
	}
}

// A queue entry swapped for a symbolic link after the listing is filed in
// Undeliverable as a note, never as a link (nor what it points to).
func TestSwappedSymlinkIsFiledAsANote(t *testing.T) {
	d, s, job := spoolWithClaimed(t, "X-SmtpQ-Sealed: v1 junk\r\n\r\nbody\r\n")
	target := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(target, []byte("SECRET CONTENT"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(handle(job).path); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, handle(job).path); err != nil {
		t.Fatal(err)
	}
	path, err := s.FileUndeliverable(job, []byte("<smtpqLog/>"))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("filed %s: %v, %v; want a regular file", path, fi, err)
	}
	b, _ := os.ReadFile(path)
	if strings.Contains(string(b), "SECRET") || !strings.Contains(string(b), "symbolic link") {
		t.Errorf("filed note: %q", b)
	}
	if _, err := os.Lstat(handle(job).path); !os.IsNotExist(err) {
		t.Errorf("the link is still in the active folder: %v", err)
	}
	if got := pipelineFiles(t, d.Undeliverable); len(got) != 2 {
		t.Errorf("Undeliverable holds %v, want the note and its log", got)
	}
}

// No file that carries a seal is ever in sent_dir, even while the inode
// pool holds filed queue copies.
func TestNoSealedFileInSentDir(t *testing.T) {
	d := testDirs(t)
	s := openTestSpool(t, d)
	for range 3 {
		placeFile(t, d.Queue, testName(t), "X-SmtpQ-Sealed: v1 junk\r\nSubject: x\r\n\r\nbody\r\n")
	}
	var jobs []*stages.Job
	if _, err := s.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { jobs = append(jobs, j); return true }); err != nil {
		t.Fatal(err)
	}
	for _, j := range jobs {
		if _, err := s.FileSent(j, false); err != nil {
			t.Fatal(err)
		}
	}
	for _, del := range []bool{false, true} {
		placeFile(t, d.Queue, "last.eml", "X-SmtpQ-Sealed: v1 junk\r\nSubject: x\r\n\r\nbody\r\n")
		j := claimQueued(t, s, "last.eml")
		if _, err := s.FileSent(j, del); err != nil {
			t.Fatal(err)
		}
	}
	err := filepath.Walk(d.Sent, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		if b, _ := os.ReadFile(p); strings.Contains(string(b), "X-SmtpQ-Sealed") {
			t.Errorf("a sealed file in sent_dir: %s", p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A pooled inode is rewritten only once the active folder it left has been
// synced past its removal. Filings of journaled messages do not sync the
// folder: the pool waits until poolSyncBatch files wait, then one sync
// covers them all.
func TestPoolReuseWaitsForTheActiveFolderSync(t *testing.T) {
	d := testDirs(t)
	s := openTestSpool(t, d)
	if s.pool.off {
		t.Skip("no inode pool on this system")
	}
	var syncs int
	s.actDir.sync = func(dir string) error { syncs++; return nil }
	for i := range poolSyncBatch {
		n := fmt.Sprintf("a%d.eml", i)
		placeFile(t, d.Queue, n, "X-SmtpQ-Sealed: v1 junk\r\n\r\nbody\r\n")
		a := claimQueued(t, s, n)
		a.Outcome = stages.Outcome{Verdict: stages.Sent}
		if err := s.RecordAccepted(a); err != nil { // journaled: no folder sync on filing
			t.Fatal(err)
		}
		if _, err := s.FileSent(a, false); err != nil {
			t.Fatal(err)
		}
		if len(s.pool.free) != i+1 || syncs != 0 {
			t.Fatalf("after %d journaled filings: pool %d, syncs %d; want every copy pooled, no sync", i+1, len(s.pool.free), syncs)
		}
	}
	for i := range poolSyncBatch {
		f, name := s.pool.take()
		if f == nil || syncs != 1 {
			t.Fatalf("take %d: %v %q after %d syncs; want a pooled file, after one sync of the active folder for all", i, f, name, syncs)
		}
		f.Close()
	}
}

// A spool left by a version before ids: a deferred file under its name,
// its state under its name. Claimed, it gets an id and keeps its state,
// which moves to the id.
func TestFilesFromBeforeIdsKeepTheirState(t *testing.T) {
	d := testDirs(t)
	name := testName(t)
	bucket := filepath.Join(d.Queue, DeferredDir, time.Now().Add(-time.Minute).UTC().Format(bucketLayout))
	placeFile(t, bucket, name, "old")
	placeFile(t, filepath.Join(d.Queue, StateDir), name+".json", `{"attempts":2,"last_error":"451 later"}`)
	s := openTestSpool(t, d)
	var got []*stages.Job
	if _, err := s.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { got = append(got, j); return true }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != name || !IsID(got[0].ID) || got[0].State.Attempts != 2 {
		t.Fatalf("claimed %+v; want %s with an id and its 2 attempts", got, name)
	}
	if _, err := os.Stat(filepath.Join(d.Queue, StateDir, name+".json")); !os.IsNotExist(err) {
		t.Errorf("the state under the name is still there: %v", err)
	}
	if st, err := ReadState(d, got[0].ID); err != nil || st == nil || st.Attempts != 2 {
		t.Errorf("state under the id: %+v, %v", st, err)
	}
}

// A message the server accepted whose filing, and the writing of its
// state, fail (a failing disk) has its acceptance in the journal only. A
// clean Close then keeps the journal and the file, as a crash would: the
// next start files it as sent, without sending it again.
func TestCloseKeepsTheJournalOfUnfiledAcceptedMessages(t *testing.T) {
	d := testDirs(t)
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	placeFile(t, d.Queue, "accepted.eml", "Subject: x\r\n\r\nbody\r\n")
	job := claimQueued(t, s, "accepted.eml")
	job.Kind = stages.KindPickup
	job.Outcome = stages.Outcome{Verdict: stages.Sent, Rcpts: []stages.RcptResult{{Addr: "a@example.org", Status: stages.RcptDelivered}}}
	if err := s.RecordAccepted(job); err != nil {
		t.Fatal(err)
	}
	if err := s.journal.Sync(handle(job).journaled); err != nil {
		t.Fatal(err)
	}
	s.SyncFault = func(string) error { return errors.New("injected") }
	if _, err := s.FileSent(job, false); err == nil {
		t.Fatal("Sent succeeded with every fsync failing")
	}
	// The state folder cannot be written at all.
	stateDir := filepath.Join(d.Queue, StateDir)
	if err := os.Rename(stateDir, stateDir+".away"); err != nil {
		t.Fatal(err)
	}
	placeFile(t, d.Queue, StateDir, "not a folder")
	job.State.Accepted = true
	if err := s.WriteState(job.ID, &job.State); err == nil {
		t.Fatal("WriteState succeeded with no state folder")
	}
	s.SyncFault = nil
	if err := s.Close(); err == nil || !strings.Contains(err.Error(), "could not be filed") {
		t.Fatalf("Close: %v, want an error saying a message is left unfiled", err)
	}
	if _, err := os.Stat(handle(job).path); err != nil {
		t.Fatalf("the unfiled message is gone from the active folder: %v", err)
	}
	if _, err := os.Stat(s.journal.path); err != nil {
		t.Fatalf("the journal is gone: %v", err)
	}
	os.Remove(stateDir)
	if err := os.Rename(stateDir+".away", stateDir); err != nil {
		t.Fatal(err)
	}

	s2 := openTestSpool(t, d)
	if _, err := s2.Recover(); err != nil {
		t.Fatal(err)
	}
	var got *stages.Job
	if _, err := s2.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool { got = j; return false }); err != nil && got == nil {
		t.Fatal(err)
	}
	if got == nil || got.ID != job.ID || !got.State.Accepted {
		t.Fatalf("after the next start: %+v; want %s with its acceptance", got, job.ID)
	}
}
