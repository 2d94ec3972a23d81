package spool

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// A filing in Undeliverable that failed after its link (at the folder's
// fsync) is finished by the next one, not repeated under name-1.
func TestUndeliverableFinishesAnEarlierFiling(t *testing.T) {
	d, s, job := spoolWithClaimed(t, "X-SmtpQ-Sealed: v1 junk\r\nSubject: x\r\n\r\nbody\r\n")
	name := job.Name
	// What the earlier filing left: its log, and the message linked.
	logName := strings.TrimSuffix(name, queuefile.Ext) + ".xml"
	placeFile(t, d.Undeliverable, logName, "<smtpqLog/>")
	if err := os.Link(handle(job).path, filepath.Join(d.Undeliverable, name)); err != nil {
		t.Fatal(err)
	}

	path, err := s.FileUndeliverable(job, []byte("<smtpqLog>second</smtpqLog>"))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(d.Undeliverable, name); path != want {
		t.Errorf("filed at %s, want %s", path, want)
	}
	if got := pipelineFiles(t, d.Undeliverable); !slices.Equal(got, []string{name, logName}) {
		t.Errorf("Undeliverable holds %v, want the message and its log once", got)
	}
	if _, err := os.Lstat(handle(job).path); !os.IsNotExist(err) {
		t.Errorf("the queue copy is still there: %v", err)
	}
}

// A message the server accepted before a crash, whose Sent copy had to take
// name-1 (name was taken), is recognised as filed: no name-2.
func TestSentRecognisesASuffixedCopy(t *testing.T) {
	body := "Subject: x\r\n\r\nbody\r\n"
	d, s, job := spoolWithClaimed(t, "X-SmtpQ-Sealed: v1 junk\r\n"+body)
	name := job.Name
	job.State.Accepted = true
	placeFile(t, d.Sent, name, "another message of that name\r\n")
	placeFile(t, d.Sent, suffixed(name, 1), body)

	path, err := s.FileSent(job, false)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(d.Sent, suffixed(name, 1)); path != want {
		t.Errorf("filed at %s, want %s", path, want)
	}
	want := []string{name, suffixed(name, 1)}
	slices.Sort(want)
	if got := pipelineFiles(t, d.Sent); !slices.Equal(got, want) {
		t.Errorf("Sent holds %v, want the two copies that were there", got)
	}
	if _, err := os.Lstat(handle(job).path); !os.IsNotExist(err) {
		t.Errorf("the queue copy is still there: %v", err)
	}
}

// spoolWithClaimed opens a spool in temporary folders (closed at the end of
// the test) and claims a queue file with content.
func spoolWithClaimed(t *testing.T, content string) (Dirs, *Spool, *stages.Job) {
	t.Helper()
	d := testDirs(t)
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	name := testName(t)
	placeFile(t, d.Queue, name, content)
	return d, s, claimTest(t, s, name)
}

// pipelineFiles lists the regular files directly in dir, sorted.
func pipelineFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names)
	return names
}
