package stream

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/stages"
)

// Slots counts SMTP sessions per host across the nodes (stages.SessionSlots):
// a session holds a lease, one key of the bucket <stream>_slots named after
// the host and a slot number below the host's max_connections, created only
// if no one holds it. Each node renews its leases every third of the TTL;
// the bucket forgets a key not renewed within the TTL, so the slots of a
// node that dies are free again after at most the TTL.
//
// Nodes also say they are alive in <stream>_nodes, the same way: Nodes
// counts them, for each node's share of a host's rate.
type Slots struct {
	slots, nodes jetstream.KeyValue
	node         string
	ttl          time.Duration
	log          *zap.Logger

	mu    sync.Mutex
	held  map[string]uint64 // lease key -> revision
	count int               // nodes alive, as last counted

	stop, done chan struct{}
	closing    sync.Once
}

var _ stages.SessionSlots = (*Slots)(nil)

// OpenSlots sets up the buckets and starts renewing. ttl is how long a dead
// node's leases outlive it (default 15s). onNodes, if set, is called with
// the number of live nodes whenever it changes.
func OpenSlots(ctx context.Context, js jetstream.JetStream, stream string, replicas int, node string, ttl time.Duration, onNodes func(int), log *zap.Logger) (*Slots, error) {
	if stream == "" {
		stream = DefaultStream
	}
	if ttl <= 0 {
		ttl = 15 * time.Second
	}
	if log == nil {
		log = zap.NewNop()
	}
	bucket := func(name, what string) (jetstream.KeyValue, error) {
		return retry(ctx, func(ctx context.Context) (jetstream.KeyValue, error) {
			return js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket: stream + "_" + name, Description: "smtpq: " + what,
				TTL: ttl, Storage: jetstream.FileStorage, Replicas: max(replicas, 1),
			})
		})
	}
	sl, err := bucket("slots", "SMTP sessions open to each host, a key per session, across the nodes")
	if err != nil {
		return nil, fmt.Errorf("slots bucket: %w", err)
	}
	nd, err := bucket("nodes", "the nodes alive")
	if err != nil {
		return nil, fmt.Errorf("nodes bucket: %w", err)
	}
	s := &Slots{slots: sl, nodes: nd, node: node, ttl: ttl, log: log, held: map[string]uint64{},
		stop: make(chan struct{}), done: make(chan struct{})}
	s.alive(ctx, onNodes)
	go s.renew(onNodes)
	return s, nil
}

// Close stops renewing and gives back the leases still held.
func (s *Slots) Close() {
	s.closing.Do(func() { close(s.stop) })
	<-s.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.mu.Lock()
	held := s.held
	s.held = map[string]uint64{}
	s.mu.Unlock()
	for key, rev := range held {
		s.slots.Delete(ctx, key, jetstream.LastRevision(rev))
	}
	s.nodes.Delete(ctx, s.node)
}

// hostKey is a key prefix for host: its bytes in hex, as a host name may
// hold characters a key may not (an IPv6 address's colons).
func hostKey(host string) string { return "h" + hex.EncodeToString([]byte(host)) }

// Take takes a free slot of host below max (max 0 or less: no cap).
func (s *Slots) Take(host string, max int) (func(), bool) {
	if max <= 0 {
		return func() {}, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for i := range max {
		key := hostKey(host) + "." + strconv.Itoa(i)
		rev, err := s.slots.Create(ctx, key, []byte(s.node))
		if errors.Is(err, jetstream.ErrKeyExists) {
			continue
		}
		if err != nil {
			// The bucket cannot be reached: better no session than one
			// over the cap; the job comes back soon.
			s.log.Warn("taking a session slot", zap.String("host", host), zap.Error(err))
			return nil, false
		}
		s.mu.Lock()
		s.held[key] = rev
		s.mu.Unlock()
		return func() { s.give(key) }, true
	}
	return nil, false
}

// give gives a slot back.
func (s *Slots) give(key string) {
	s.mu.Lock()
	rev, ok := s.held[key]
	delete(s.held, key)
	s.mu.Unlock()
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.slots.Delete(ctx, key, jetstream.LastRevision(rev)); err != nil {
		// It expires by itself.
		s.log.Debug("giving a session slot back", zap.String("key", key), zap.Error(err))
	}
}

// renew renews the leases held and this node's presence every third of the
// TTL, and counts the nodes.
func (s *Slots) renew(onNodes func(int)) {
	defer close(s.done)
	t := time.NewTicker(s.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), s.ttl/3)
		s.mu.Lock()
		keys := make(map[string]uint64, len(s.held))
		for k, r := range s.held {
			keys[k] = r
		}
		s.mu.Unlock()
		for key, rev := range keys {
			nrev, err := s.slots.Update(ctx, key, []byte(s.node), rev)
			s.mu.Lock()
			if _, still := s.held[key]; still && err == nil {
				s.held[key] = nrev
			}
			s.mu.Unlock()
			if err != nil {
				s.log.Warn("renewing a session slot", zap.String("key", key), zap.Error(err))
			}
		}
		s.alive(ctx, onNodes)
		cancel()
	}
}

// alive records this node as alive and counts the nodes.
func (s *Slots) alive(ctx context.Context, onNodes func(int)) {
	if _, err := s.nodes.Put(ctx, s.node, []byte(time.Now().UTC().Format(time.RFC3339))); err != nil {
		s.log.Warn("recording this node as alive", zap.Error(err))
		return
	}
	keys, err := s.nodes.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		s.log.Warn("counting the nodes", zap.Error(err))
		return
	}
	n := max(len(keys), 1)
	s.mu.Lock()
	changed := n != s.count
	s.count = n
	s.mu.Unlock()
	if changed && onNodes != nil {
		onNodes(n)
	}
}

// Nodes returns the number of live nodes, as last counted (at least 1).
func (s *Slots) Nodes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return max(s.count, 1)
}
