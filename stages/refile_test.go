package stages

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// A filing in Undeliverable that failed after its link (at the folder's
// fsync) is finished by the next one, not repeated under name-1.
func TestUndeliverableFinishesAnEarlierFiling(t *testing.T) {
	d, s, job := spoolWithClaimed(t, "X-SmtpQ-Sealed: v1 junk\r\nSubject: x\r\n\r\nbody\r\n")
	name := job.Name
	// What the earlier filing left: its log, and the message linked.
	logName := strings.TrimSuffix(name, queuefile.Ext) + ".xml"
	inspPlace(t, d.Undeliverable, logName, "<smtpqLog/>")
	if err := os.Link(job.Path, filepath.Join(d.Undeliverable, name)); err != nil {
		t.Fatal(err)
	}

	path, err := s.Undeliverable(job, []byte("<smtpqLog>second</smtpqLog>"))
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(d.Undeliverable, name); path != want {
		t.Errorf("filed at %s, want %s", path, want)
	}
	if got := pipelineFiles(t, d.Undeliverable); !slices.Equal(got, []string{name, logName}) {
		t.Errorf("Undeliverable holds %v, want the message and its log once", got)
	}
	if _, err := os.Lstat(job.Path); !os.IsNotExist(err) {
		t.Errorf("the queue copy is still there: %v", err)
	}
}

// A message the server accepted before a crash, whose Sent copy had to take
// name-1 (name was taken), is recognised as filed: no name-2.
func TestSentRecognisesASuffixedCopy(t *testing.T) {
	body := "Subject: x\r\n\r\nbody\r\n"
	d, s, job := spoolWithClaimed(t, "X-SmtpQ-Sealed: v1 junk\r\n"+body)
	name := job.Name
	job.body = []byte(body)
	job.State.Accepted = true
	inspPlace(t, d.Sent, name, "another message of that name\r\n")
	inspPlace(t, d.Sent, suffixed(name, 1), body)

	path, err := s.Sent(job, false)
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
	if _, err := os.Lstat(job.Path); !os.IsNotExist(err) {
		t.Errorf("the queue copy is still there: %v", err)
	}
}

// spoolWithClaimed opens a spool in temporary folders (closed at the end of
// the test) and claims a queue file with content.
func spoolWithClaimed(t *testing.T, content string) (Dirs, *Spool, *Job) {
	t.Helper()
	d := inspDirs(t)
	s, err := OpenSpool(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	name := inspName(t)
	inspPlace(t, d.Queue, name, content)
	return d, s, inspClaim(t, s, name)
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
