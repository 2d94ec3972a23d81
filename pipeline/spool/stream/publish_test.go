package stream_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
)

// lossyJS loses the answers to the first lose publishes of queue messages:
// stored says whether the stream stores them all the same (an ack lost on
// its way back) or not (a request lost on its way there).
type lossyJS struct {
	jetstream.JetStream
	mu     sync.Mutex
	lose   int
	stored bool
	tries  int
}

func (j *lossyJS) PublishMsg(ctx context.Context, msg *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if !strings.HasPrefix(msg.Subject, stream.DefaultStream+".q.") {
		return j.JetStream.PublishMsg(ctx, msg, opts...)
	}
	j.mu.Lock()
	j.tries++
	lost := j.tries <= j.lose
	j.mu.Unlock()
	if !lost {
		return j.JetStream.PublishMsg(ctx, msg, opts...)
	}
	if j.stored {
		if _, err := j.JetStream.PublishMsg(ctx, msg, opts...); err != nil {
			return nil, err
		}
	}
	return nil, errors.New("injected: no answer from the stream")
}

// queued returns how many messages the stream holds to send.
func queued(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	str, err := js.Stream(t.Context(), stream.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(t.Context(), jetstream.WithSubjectFilter(stream.DefaultStream+".q.>"))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// waitRecord waits until the record of id is in state, and returns it.
func waitRecord(t *testing.T, js jetstream.JetStream, id, state string) stream.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		rs, err := stream.Records(t.Context(), js, "", id)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) == 1 && rs[0].State == state {
			return rs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("records of %s: %+v, want one %s", id, rs, state)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A publish whose ack is lost, though the stream stored the message, is
// tried again under the same id: the enqueue succeeds, and the stream holds
// the message once.
func TestPublishLostAckRetried(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	if _, _, err := stream.Setup(t.Context(), js, "", 1); err != nil {
		t.Fatal(err)
	}
	lossy := &lossyJS{JetStream: js, lose: 1, stored: true}
	id, err := stream.Publish(t.Context(), lossy, "", "lost-ack.eml", []byte("Subject: x\r\n\r\nbody\r\n"))
	if err != nil {
		t.Fatalf("publish with its first ack lost: %v", err)
	}
	if lossy.tries != 2 {
		t.Errorf("published %d times, want 2 (one lost ack, one retry)", lossy.tries)
	}
	if n := queued(t, js); n != 1 {
		t.Fatalf("the stream holds %d messages, want 1", n)
	}
	waitRecord(t, js, id, "queued")
	s := node(t, js, stream.Config{})
	if jobs := fetch(t, s, 2); len(jobs) != 1 || jobs[0].ID != id {
		t.Fatalf("claimed %d jobs, want the one message %s", len(jobs), id)
	}
}

// A publish the stream never stored fails, and leaves no record that would
// show the message as queued.
func TestPublishFailedLeavesNoRecord(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	if _, _, err := stream.Setup(t.Context(), js, "", 1); err != nil {
		t.Fatal(err)
	}
	lossy := &lossyJS{JetStream: js, lose: 1 << 30}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	id, err := stream.Publish(ctx, lossy, "", "never.eml", []byte("Subject: x\r\n\r\nbody\r\n"))
	if err == nil {
		t.Fatal("a publish the stream never answered succeeded")
	}
	if lossy.tries < 2 {
		t.Errorf("tried %d times, want it tried again", lossy.tries)
	}
	if n := queued(t, js); n != 0 {
		t.Errorf("the stream holds %d messages, want none", n)
	}
	if rs, err := stream.Records(t.Context(), js, "", id); err != nil || len(rs) != 0 {
		t.Errorf("records of the failed publish %s: %+v, %v; want none", id, rs, err)
	}
}

// A publish run again under the same id after a node claimed the message
// stores nothing more, and does not set its record back to queued.
func TestPublishAgainKeepsTheRecord(t *testing.T) {
	js := connect(t, natstest.NewServer(t).URL())
	s := node(t, js, stream.Config{Node: "n1"})
	body := []byte("Subject: x\r\n\r\nbody\r\n")
	id := publish(t, js, "again.eml", string(body))
	if jobs := fetch(t, s, 1); len(jobs) != 1 {
		t.Fatalf("claimed %d jobs, want 1", len(jobs))
	}
	waitRecord(t, js, id, "active")
	if err := stream.PublishAs(t.Context(), js, "", id, "again.eml", body); err != nil {
		t.Fatal(err)
	}
	if n := queued(t, js); n != 1 {
		t.Errorf("the stream holds %d messages, want 1", n)
	}
	if r := waitRecord(t, js, id, "active"); r.Node != "n1" {
		t.Errorf("record after the second publish: %+v", r)
	}
}
