package spool

import (
	"os"
	"path/filepath"
	"testing"

	"filippo.io/age"
	"github.com/smtpq/smtpq/pipeline/queuefile"
)

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
