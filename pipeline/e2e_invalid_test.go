package pipeline_test

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// sealOutside seals msg for env's service in a queue folder of its own, so
// that the test can change the file before it reaches env's queue.
func sealOutside(t *testing.T, env *pipelinetest.Env, msg []byte, p queuefile.Params) (name string, file []byte) {
	t.Helper()
	side := &queuefile.Queue{Dir: t.TempDir(), Recipients: env.Queue.Recipients}
	name, err := side.Enqueue(bytes.NewReader(msg), p)
	if err != nil {
		t.Fatal(err)
	}
	file, err = os.ReadFile(filepath.Join(side.Dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return name, file
}

// sealLines splits a queue file (CRLF) into its sealed header field and the
// message after it.
func sealLines(t *testing.T, file []byte) (seal [][]byte, rest []byte) {
	t.Helper()
	lines := bytes.SplitAfter(file, []byte("\r\n"))
	if !bytes.HasPrefix(lines[0], []byte("X-SmtpQ-Sealed: v1")) {
		t.Fatalf("queue file does not start with the seal: %q", lines[0])
	}
	n := 1
	for n < len(lines) && bytes.HasPrefix(lines[n], []byte(" ")) {
		n++
	}
	return lines[:n], bytes.Join(lines[n:], nil)
}

func TestInvalidFilesAreFiledAndOthersLeftAlone(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "127.0.0.2")
	env := pipelinetest.New(t)
	queue := env.Config.QueueDir
	put := func(rel string, b []byte) {
		t.Helper()
		path := filepath.Join(queue, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	// A byte of the encrypted parameters changed.
	tampered, file := sealOutside(t, env, testMessage(1), srv.Params("tampered@example.org"))
	seal, rest := sealLines(t, file)
	line := seal[len(seal)-2] // ciphertext of the parameters, not the age header
	i := len(line) / 2
	if line[i] == 'A' {
		line[i] = 'B'
	} else {
		line[i] = 'A'
	}
	put(tampered, append(bytes.Join(seal, nil), rest...))

	// A valid seal moved onto another (longer) message.
	moved, fileA := sealOutside(t, env, testMessage(2), srv.Params("moved@example.org"))
	sealA, _ := sealLines(t, fileA)
	other := append(testMessage(3), "A longer message than the one sealed.\r\n"...)
	put(moved, append(bytes.Join(sealA, nil), other...))

	// Not an email at all.
	garbage, err := queuefile.NewName(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var junk []byte
	for i := range 4096 {
		junk = append(junk, byte(i*7))
	}
	put(garbage, junk)

	// Entries that are never queue files, each holding a good message.
	_, good := sealOutside(t, env, testMessage(4), srv.Params("never@example.org"))
	ignored := []string{".x.eml", "notes.txt", filepath.Join("sub.eml", "inner.eml")}
	for _, rel := range ignored {
		put(rel, good)
	}

	// And one good message, which must go through beside all that.
	valid := env.Enqueue(testMessage(5), srv.Params("valid@example.org"))
	env.Start(pipeline.Options{})

	final := env.WaitFinal(4)
	wantSent(t, final[valid])
	for name, want := range map[string]string{
		tampered: "tampered",
		moved:    "does not match its seal",
		garbage:  "",
	} {
		f, ok := final[name]
		if !ok {
			t.Errorf("%s was not filed", name)
			continue
		}
		wantFailed(t, f, stages.ClassInvalid)
		t.Logf("%s: %v", name, f.Job.Outcome.Err)
		if e := f.Job.Outcome.Err; e == nil || !strings.Contains(e.Text, want) {
			t.Errorf("%s: reason %v, want one saying %q", name, e, want)
		}
		l := readXMLLog(t, env, name)
		if l.Failure.Class != "invalid" || l.Failure.Text == "" || !strings.Contains(l.Failure.Text, want) {
			t.Errorf("%s: logged failure %+v, want class invalid saying %q", name, l.Failure, want)
		}
		if l.Attempts != 0 {
			t.Errorf("%s: %d attempts logged for a file that was never sent", name, l.Attempts)
		}
	}
	if got, err := os.ReadFile(filepath.Join(env.Config.UndeliverableDir, garbage)); err != nil || !bytes.Equal(got, junk) {
		t.Errorf("Undeliverable copy of the garbage file: %v (equal: %v)", err, bytes.Equal(got, junk))
	}

	msgs := srv.Messages()
	if len(msgs) != 1 || !slices.Equal(msgs[0].To, []string{"valid@example.org"}) {
		t.Errorf("server received %d messages, want only the valid one", len(msgs))
	}
	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, f := range env.Filed() {
		for _, rel := range ignored {
			if f.Job.Name == filepath.Base(rel) {
				t.Errorf("%s was claimed: %s", rel, f.Verdict)
			}
		}
	}
	for _, rel := range ignored {
		if got, err := os.ReadFile(filepath.Join(queue, rel)); err != nil || !bytes.Equal(got, good) {
			t.Errorf("%s was touched: %v", rel, err)
		}
	}
	left := filesUnder(t, queue)
	slices.Sort(left)
	want := slices.Sorted(slices.Values(ignored))
	if !slices.Equal(left, want) {
		t.Errorf("queue_dir holds %v, want only %v", left, want)
	}
}
