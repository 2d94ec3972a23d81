package stream

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"
)

// Breakers shares hosts' circuit breakers among the nodes: when a node
// pauses a host after repeated failures, or an operator's retry lifts a
// pause, it says so in the bucket <stream>_hosts, and every node, watching
// the bucket, pauses or lifts the host too. A node that starts later finds
// the pauses still running. Entries expire after an hour, past the longest
// pause.
type Breakers struct {
	kv    jetstream.KeyValue
	watch jetstream.KeyWatcher
	log   *zap.Logger
	done  chan struct{}
}

type pauseEntry struct {
	Host  string    `json:"host"`
	Until time.Time `json:"until,omitzero"` // zero: lifted
}

// OpenBreakers sets up the bucket and calls onPause with every pause (or
// zero time: lift) any node records, its own included, until Close.
func OpenBreakers(ctx context.Context, js jetstream.JetStream, stream string, replicas int, onPause func(host string, until time.Time), log *zap.Logger) (*Breakers, error) {
	if stream == "" {
		stream = DefaultStream
	}
	if log == nil {
		log = zap.NewNop()
	}
	kv, err := retry(ctx, func(ctx context.Context) (jetstream.KeyValue, error) {
		return js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: stream + "_hosts", Description: "smtpq: hosts paused after repeated failures, shared by the nodes",
			TTL: time.Hour, Storage: jetstream.FileStorage, Replicas: max(replicas, 1),
		})
	})
	if err != nil {
		return nil, fmt.Errorf("hosts bucket: %w", err)
	}
	w, err := kv.WatchAll(context.Background())
	if err != nil {
		return nil, fmt.Errorf("watching the hosts bucket: %w", err)
	}
	b := &Breakers{kv: kv, watch: w, log: log, done: make(chan struct{})}
	go func() {
		defer close(b.done)
		for e := range w.Updates() {
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue // the end of the entries at start, or a removal
			}
			var p pauseEntry
			if err := json.Unmarshal(e.Value(), &p); err != nil || p.Host == "" {
				continue
			}
			onPause(p.Host, p.Until)
		}
	}()
	return b, nil
}

// Pause records that host is paused until until, or lifted (zero time).
// It does not wait for the cluster.
func (b *Breakers) Pause(host string, until time.Time) {
	v, _ := json.Marshal(pauseEntry{Host: host, Until: until.UTC()})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := b.kv.Put(ctx, hostKey(host), v); err != nil {
		b.log.Warn("sharing a host's pause with the other nodes", zap.String("host", host), zap.Error(err))
	}
}

// Close stops watching.
func (b *Breakers) Close() {
	b.watch.Stop()
	<-b.done
}
