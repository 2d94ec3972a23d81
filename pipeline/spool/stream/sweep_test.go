package stream_test

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
)

// The sweep deletes the objects no message refers to (one whose message a
// node acked before it died, one a producer put before it died unpublished)
// and keeps those of a queued and of a held message, and objects it did
// not put; it deletes nothing younger than its bound, and nothing more the
// second time. What it kept still reads back, the held one once released.
func TestSweepOrphanedObjects(t *testing.T) {
	js := connect(t, natstest.NewServer(t, natstest.WithMaxPayload(smallPayload)).URL())
	s := node(t, js, stream.Config{})
	body := bigMessage(256 << 10)
	publishBig := func(j jetstream.JetStream, ctx context.Context, name string) (string, error) {
		return stream.PublishReader(ctx, j, "", name, bytes.NewReader(body), int64(len(body)))
	}

	// A node acks a message and dies before it deletes the object.
	acked, err := publishBig(js, t.Context(), "acked.eml")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(t.Context(), stream.DefaultStream, "smtpq")
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if m.Headers().Get(stream.HeaderID) != acked {
			t.Fatalf("fetched %s, want %s", m.Headers().Get(stream.HeaderID), acked)
		}
		if err := m.DoubleAck(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	// A producer puts the object and never gets its message published.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	unpublished, err := publishBig(&lossyJS{JetStream: js, lose: 1 << 30}, ctx, "unpublished.eml")
	cancel()
	if err == nil {
		t.Fatal("a publish that never reached the stream succeeded")
	}
	queued, err := publishBig(js, t.Context(), "queued.eml")
	if err != nil {
		t.Fatal(err)
	}
	held, err := publishBig(js, t.Context(), "held.eml")
	if err != nil {
		t.Fatal(err)
	}
	for _, job := range fetch(t, s, 2) {
		if job.ID == held {
			err = s.Hold(job)
		} else {
			err = s.Return(job)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	obs, err := js.ObjectStore(t.Context(), stream.BigBucket(""))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obs.PutBytes(t.Context(), "foreign", []byte("not put by smtpq")); err != nil {
		t.Fatal(err)
	}
	if got := objects(t, js); len(got) != 5 {
		t.Fatalf("objects before the sweep: %v, want 5", got)
	}

	if n, err := s.SweepObjects(t.Context(), time.Hour); err != nil || n != 0 {
		t.Fatalf("sweep of objects older than an hour: %d deleted, %v; want none", n, err)
	}
	if n, err := s.SweepObjects(t.Context(), 0); err != nil || n != 2 {
		t.Fatalf("sweep: %d deleted, %v; want 2", n, err)
	}
	got := objects(t, js)
	slices.Sort(got)
	want := []string{queued, held, "foreign"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("objects after the sweep: %v, want %v (%s and %s are orphans)", got, want, acked, unpublished)
	}
	if err := stream.Release(t.Context(), js, "", held); err != nil {
		t.Fatal(err)
	}
	if n, err := s.SweepObjects(t.Context(), 0); err != nil || n != 0 {
		t.Fatalf("second sweep, after a release: %d deleted, %v; want none", n, err)
	}
	jobs := fetch(t, s, 2)
	if len(jobs) != 2 {
		t.Fatalf("claimed %d after the sweep, want the queued and the released messages", len(jobs))
	}
	for _, job := range jobs {
		if read(t, job) != string(body) {
			t.Errorf("%s (%s) does not read back after the sweep", job.ID, job.Name)
		}
	}
}
