package spool

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/stages"
)

// A job the server accepted is not filed, and its queue copy not removed,
// until its line in the journal is durable: when that sync fails, filing
// fails and the queue copy stays.
func TestFilingWaitsForTheJournal(t *testing.T) {
	d := testDirs(t)
	sp, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()

	job := &stages.Job{ID: NewID(time.Now()), Name: "20261127T120000.000000000Z-journal1.eml", Kind: stages.KindPickup, Msg: &file{}}
	w, _ := workName(job.ID, job.Name)
	handle(job).path = filepath.Join(sp.active, w)
	if err := os.WriteFile(handle(job).path, []byte("Subject: x\r\n\r\nbody\r\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	job.Outcome = stages.Outcome{Verdict: stages.Sent, Rcpts: []stages.RcptResult{{Addr: "a@example.org", Status: stages.RcptDelivered}}}
	if err := sp.RecordAccepted(job); err != nil {
		t.Fatal(err)
	}
	if handle(job).journaled == 0 {
		t.Fatal("RecordAccepted did not note the journal line")
	}
	line, err := os.ReadFile(sp.journal.path)
	want := `{"f":"` + w + `","all":true,"rcpts":["a@example.org"]}` + "\n"
	if err != nil || string(line) != want {
		t.Fatalf("journal holds %q (%v), want the job's line", line, err)
	}

	// The journal's file fails from now on: its sync cannot succeed.
	sp.journal.f.Close()
	if _, err := sp.FileSent(job, false); err == nil || !strings.Contains(err.Error(), "recording the server's acceptance") {
		t.Fatalf("Sent with the journal failing: %v, want an error about the record", err)
	}
	if _, err := os.Stat(handle(job).path); err != nil {
		t.Fatalf("the queue copy is gone after a failed filing: %v", err)
	}
	if n := countEntries(t, d.Sent); n != 0 {
		t.Fatalf("%d entries in stages.Sent after a failed filing, want none", n)
	}
}

// Lines are numbered in order, and a sync covers every line before it.
func TestJournalSyncCovers(t *testing.T) {
	j, err := openJournal(filepath.Join(t.TempDir(), "x.journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var last uint64
	for i := range 5 {
		n, err := j.Append("m" + string(rune('a'+i)) + " all x@example.org")
		if err != nil {
			t.Fatal(err)
		}
		if n != last+1 {
			t.Fatalf("line %d numbered %d", last+1, n)
		}
		last = n
	}
	if err := j.Sync(3); err != nil {
		t.Fatal(err)
	}
	if j.commit.done.Load() != 5 {
		t.Fatalf("after Sync(3) lines up to %d are durable, want all 5 written", j.commit.done.Load())
	}
	j.f.Close()
	if err := j.Sync(4); err != nil {
		t.Fatalf("Sync of a line already synced touched the file: %v", err)
	}
	if _, err := j.Append("late"); err == nil {
		// the write fails on the closed file
		t.Fatal("Append on a closed file succeeded")
	}
}

func countEntries(t *testing.T, dir string) int {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range es {
		if !strings.HasPrefix(e.Name(), ".") {
			n++
		}
	}
	return n
}
