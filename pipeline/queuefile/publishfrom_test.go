package queuefile_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// PublishFrom reads the sealed message, as many bytes as it is told, and
// takes precedence over Publish.
func TestEnqueuePublishFrom(t *testing.T) {
	msg := corpusMessage(t, "plain-lf.eml")
	q := newQueue(t)
	var viaBytes []byte
	q.Publish = func(name string, sealed []byte) (string, error) {
		viaBytes = sealed
		return "bytes", nil
	}
	if _, err := q.Enqueue(bytes.NewReader(msg), testParams("dave@example.com")); err != nil {
		t.Fatal(err)
	}
	var viaReader []byte
	var size int64
	q.PublishFrom = func(name string, r io.Reader, n int64) (string, error) {
		b, err := io.ReadAll(r)
		viaReader, size = b, n
		return "reader", err
	}
	name, err := q.Enqueue(bytes.NewReader(msg), testParams("dave@example.com"))
	if err != nil || name != "reader" {
		t.Fatalf("Enqueue with PublishFrom: %q, %v", name, err)
	}
	if size != int64(len(viaReader)) {
		t.Errorf("PublishFrom told %d bytes, read %d", size, len(viaReader))
	}
	var body bytes.Buffer
	if _, err := queuefile.OpenTo(&body, bytes.NewReader(viaReader), mustIdentity(t, testIdentity)); err != nil || !bytes.Equal(body.Bytes(), msg) {
		t.Errorf("the bytes PublishFrom read do not open to the message: %v", err)
	}
	if len(viaBytes) == 0 {
		t.Error("Publish was not called when PublishFrom was not set")
	}
}
