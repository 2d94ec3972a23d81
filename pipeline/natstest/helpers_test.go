package natstest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// within returns a context that ends after d or with the test.
func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// publishUntilAcked publishes msg with a message id, so that the stream
// keeps one copy however many tries it takes, and retries until the stream
// acknowledges it or ctx ends: while a node is lost, a try can time out or
// find no responder until the stream has a new leader.
func publishUntilAcked(ctx context.Context, js jetstream.JetStream, subject, id string, data []byte) error {
	var last error
	for {
		try, cancel := context.WithTimeout(ctx, time.Second)
		_, err := js.Publish(try, subject, data, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("publishing %s: %w (last try: %v)", id, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// drain fetches and acknowledges messages from cons until want distinct
// payloads have arrived and each has been acknowledged, or ctx ends, and
// returns how often each payload arrived. A message whose ack was lost
// while a node was down comes again after the consumer's AckWait and is
// acknowledged then.
func drain(ctx context.Context, cons jetstream.Consumer, want int) (map[string]int, error) {
	got := make(map[string]int)
	unacked := make(map[string]bool)
	for len(got) < want || len(unacked) > 0 {
		if err := ctx.Err(); err != nil {
			return got, fmt.Errorf("%d of %d messages arrived, %d not acknowledged: %w", len(got), want, len(unacked), err)
		}
		batch, err := cons.Fetch(max(want-len(got), 1), jetstream.FetchMaxWait(time.Second))
		if err != nil {
			// The consumer may have no leader for a moment; try again.
			time.Sleep(50 * time.Millisecond)
			continue
		}
		for msg := range batch.Messages() {
			data := string(msg.Data())
			got[data]++
			actx, cancel := context.WithTimeout(ctx, time.Second)
			err := msg.DoubleAck(actx)
			cancel()
			if err != nil {
				unacked[data] = true
			} else {
				delete(unacked, data)
			}
		}
	}
	return got, nil
}
