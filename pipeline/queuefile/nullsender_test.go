package queuefile_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

func TestEnqueueNullSender(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	q := &queuefile.Queue{Dir: dir, Recipients: []age.Recipient{id.Recipient()}}
	msg := []byte("From: MAILER-DAEMON@mx.example.net\r\nTo: app@example.com\r\nSubject: notice\r\n\r\nbody\r\n")
	p := queuefile.Params{Relay: "office", To: []string{"app@example.com"}}
	name, err := q.EnqueueNullSender(msg, p)
	if err != nil {
		t.Fatal(err)
	}
	if !queuefile.IsQueueName(name) || !strings.Contains(name, "+") {
		t.Errorf("name %q: want a queue name with a route tag", name)
	}
	f, err := os.Open(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var body bytes.Buffer
	got, err := queuefile.OpenTo(&body, f, id)
	if err != nil {
		t.Fatal(err)
	}
	if got.From != "" || got.Relay != "office" || len(got.To) != 1 || got.To[0] != "app@example.com" {
		t.Errorf("sealed %v: want the null sender, relay office, to app@", got)
	}
	if !bytes.Equal(body.Bytes(), msg) {
		t.Errorf("message %q, want it byte for byte", body.Bytes())
	}
	left, _ := os.ReadDir(filepath.Join(dir, queuefile.TmpDir))
	if len(left) != 0 {
		t.Errorf("left in .tmp: %v", left)
	}

	p.From = "someone@example.com"
	if _, err := q.EnqueueNullSender(msg, p); err == nil {
		t.Error("a sender was accepted for a null-sender message")
	}
	if _, err := q.EnqueueNullSender(msg, queuefile.Params{Relay: "office"}); err == nil {
		t.Error("no recipient accepted")
	}
}
