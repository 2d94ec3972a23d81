package pipeline_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
	"github.com/smtpq/smtpq/stages"
)

// largeMessage is a message of about n bytes in CRLF lines of 76
// characters, none the same, with subject as its Subject.
func largeMessage(n int, subject string, seed uint64) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: a@example.org\r\nTo: x@example.org\r\nSubject: %s\r\n\r\n", subject)
	r := rand.New(rand.NewPCG(seed, 7))
	const alpha = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	line := make([]byte, 76)
	for b.Len() < n {
		for i := range line {
			line[i] = alpha[r.IntN(len(alpha))]
		}
		b.Write(line)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// Messages many times over the NATS server's max_payload go through the
// object store: one dropped in queue_dir and one a producer publishes from
// its temporary file (Queue.PublishFrom) both reach the SMTP server byte for
// byte and are filed in Sent as they were; their objects are gone after.
func TestClusterLargeMessages(t *testing.T) {
	ns := natstest.NewServer(t, natstest.WithMaxPayload(64<<10))
	srv := smtptest.NewServer(t)
	a := pipelinetest.Start(t, pipelinetest.Config(func(cfg *pipeline.Config) {
		cfg.NATS = &pipeline.NATSConfig{URLs: []string{ns.URL()}, Node: "a", AckWait: pipeline.Duration(5 * time.Second)}
		// Megabytes through the race detector on a busy machine: the
		// test kit's 10 s for the data is too short.
		cfg.Timeouts.Data = pipeline.Duration(2 * time.Minute)
	}))

	_, js := natstest.Connect(t, ns.URL())
	producer := *a.Queue
	producer.PublishFrom = func(name string, r io.Reader, size int64) (string, error) {
		return stream.PublishReader(t.Context(), js, "", name, r, size)
	}

	dropped := largeMessage(3<<20, "dropped", 1)
	published := largeMessage(5<<20+333, "published", 2)
	a.Enqueue(dropped, srv.Params("x@example.org"))
	if _, err := producer.Enqueue(bytes.NewReader(published), srv.Params("x@example.org")); err != nil {
		t.Fatal(err)
	}

	a.WaitFor("both messages filed as sent", func(fs []stages.Filed) bool {
		n := 0
		for _, f := range fs {
			if f.Verdict == stages.Sent {
				n++
			}
		}
		return n == 2
	})
	got := map[string][]byte{}
	for _, m := range srv.Messages() {
		switch {
		case bytes.Contains(m.Data[:200], []byte("Subject: dropped")):
			got["dropped"] = m.Data
		case bytes.Contains(m.Data[:200], []byte("Subject: published")):
			got["published"] = m.Data
		}
	}
	if len(srv.Messages()) != 2 {
		t.Errorf("the server got %d messages, want 2", len(srv.Messages()))
	}
	for what, want := range map[string][]byte{"dropped": dropped, "published": published} {
		if !bytes.Equal(got[what], want) {
			t.Errorf("the %s message arrived as %d bytes, not the %d queued", what, len(got[what]), len(want))
		}
	}
	for _, f := range a.Filed() {
		if f.Verdict != stages.Sent {
			continue
		}
		b, err := os.ReadFile(f.Path)
		if err != nil || !(bytes.Equal(b, dropped) || bytes.Equal(b, published)) {
			t.Errorf("Sent copy %s: %d bytes, %v; not the message queued", f.Path, len(b), err)
		}
	}
	if left := pipelinetest.Files(t, a.Config.QueueDir); len(left) != 0 {
		t.Errorf("dropped files left in queue_dir after publishing: %v", left)
	}
	obs, err := js.ObjectStore(t.Context(), stream.BigBucket(""))
	if err != nil {
		t.Fatal(err)
	}
	if list, err := obs.List(t.Context()); !errors.Is(err, jetstream.ErrNoObjectsFound) {
		t.Errorf("objects left after sending: %d, %v", len(list), err)
	}
}
