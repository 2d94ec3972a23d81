package stream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// Operators' holds reach the nodes through the bucket <stream>_ops: a key
// per message to hold, which every node watches. The node that has the
// message queued holds it at once; a message a node fetches later (one
// deferred, say) is held as it is claimed, never sent. A message being sent
// when the hold comes is sent: the hold came too late, as on one machine.

type opEntry struct {
	Op     spool.Op    `json:"op"`              // hold; retry: the delivery of Seq was superseded by a copy sent now; requeue, purge (AdminOp)
	Seq    uint64      `json:"seq,omitempty"`   // for "retry"
	Node   string      `json:"node,omitempty"`  // for "requeue": the node whose folder holds the message
	Name   string      `json:"name,omitempty"`  // for "requeue": its file name
	Place  spool.Place `json:"place,omitempty"` // for "purge": sent or undeliverable
	Before time.Time   `json:"before,omitzero"` // for "purge"
	At     time.Time   `json:"at"`
}

// AdminOp is an operator's request that a node acts on its own Sent or
// Undeliverable folder, which no other node can reach: requeue a message
// it filed as undeliverable (Node, Name), or purge (every node: Place,
// Before). The nodes watch for them in <stream>_ops; Config.OnAdmin acts.
type AdminOp struct {
	Op     spool.Op // spool.OpRequeue or spool.OpPurge
	ID     string   // requeue: the message's id
	Node   string
	Name   string
	Place  spool.Place
	Before time.Time
}

// RequestRequeue asks node to requeue message id, filed there as
// undeliverable under name.
func RequestRequeue(ctx context.Context, js jetstream.JetStream, stream, id, node, name string) error {
	return putOp(ctx, js, stream, id, opEntry{Op: spool.OpRequeue, Node: node, Name: name})
}

// RequestPurge asks every node to purge its place (sent or undeliverable)
// of what was filed before before.
func RequestPurge(ctx context.Context, js jetstream.JetStream, stream string, place spool.Place, before time.Time) error {
	return putOp(ctx, js, stream, "purge-"+strconv.FormatInt(time.Now().UnixNano(), 10), opEntry{Op: spool.OpPurge, Place: place, Before: before.UTC()})
}

// purgeKeep is how long a purge request stays for nodes that were down
// when it was made.
const purgeKeep = 24 * time.Hour

func putOp(ctx context.Context, js jetstream.JetStream, stream, key string, op opEntry) error {
	if stream == "" {
		stream = DefaultStream
	}
	if !validKey(key) {
		return fmt.Errorf("%q is not a message id", key)
	}
	kv, err := js.KeyValue(ctx, opsBucket(stream))
	if err != nil {
		return err
	}
	op.At = time.Now().UTC()
	b, _ := json.Marshal(op)
	_, err = kv.Put(ctx, key, b)
	return err
}

func opsBucket(stream string) string { return stream + "_ops" }

func setupOps(ctx context.Context, js jetstream.JetStream, stream string, replicas int) (jetstream.KeyValue, error) {
	return retry(ctx, func(ctx context.Context) (jetstream.KeyValue, error) {
		return js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: opsBucket(stream), Description: "smtpq: operators' holds, for the node that has or takes each message",
			Storage: jetstream.FileStorage, Replicas: max(replicas, 1),
		})
	})
}

// RequestHold asks the nodes to hold message id.
func RequestHold(ctx context.Context, js jetstream.JetStream, stream, id string) error {
	return putOp(ctx, js, stream, id, opEntry{Op: spool.OpHold})
}

// ErrNotHeld says a message to release is not held.
var ErrNotHeld = errors.New("not held")

// Release puts a held message back on the stream, to be sent now: its copy
// on <stream>.held.<id> is published again under its id, then removed.
func Release(ctx context.Context, js jetstream.JetStream, stream, id string) error {
	if stream == "" {
		stream = DefaultStream
	}
	str, err := js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	held := stream + ".held." + id
	m, err := str.GetLastMsgForSubject(ctx, held)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return ErrNotHeld
	}
	if err != nil {
		return err
	}
	if kv, err := js.KeyValue(ctx, opsBucket(stream)); err == nil {
		kv.Delete(ctx, id) // a hold still asked for would hold it again
	}
	name := m.Header.Get(HeaderName)
	msg := nats.NewMsg(queueSubject(stream, name))
	msg.Data = m.Data
	msg.Header.Set(HeaderID, id)
	msg.Header.Set(HeaderName, name)
	if o := m.Header.Get(HeaderObject); o != "" {
		// A large message: its bytes stay in the object store, and it goes
		// back on the subject that names its object.
		msg.Subject = objectSubject(stream, name, o)
		msg.Header.Set(HeaderObject, o)
	}
	// A message id of its own: the first publish of id may be within the
	// duplicate window still. A release retried after a crash publishes
	// this same one, which the window drops.
	if _, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(id+".r"+strconv.FormatUint(m.Sequence, 10))); err != nil {
		return fmt.Errorf("publishing %s again: %w", id, err)
	}
	if err := str.Purge(ctx, jetstream.WithPurgeSubject(held)); err != nil {
		return fmt.Errorf("removing the held copy of %s (it is queued again too): %w", id, err)
	}
	b, _ := json.Marshal(Record{ID: id, Name: name, State: spool.PlaceQueued, Size: int64(len(m.Data)), At: time.Now().UTC()})
	js.Publish(ctx, recordSubject(stream, id), b)
	return nil
}

// watchOps keeps the set of holds asked for, and tells onHold of each new
// one, until Close.
func (s *Spool) watchOps(ctx context.Context, onHold func(id string)) error {
	kv, err := setupOps(ctx, s.js, s.cfg.Stream, s.cfg.Replicas)
	if err != nil {
		return fmt.Errorf("ops bucket: %w", err)
	}
	w, err := kv.WatchAll(context.Background())
	if err != nil {
		return fmt.Errorf("watching the ops bucket: %w", err)
	}
	s.ops, s.opsWatch = kv, w
	go func() {
		defer close(s.opsDone)
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			id := e.Key()
			var op opEntry
			put := e.Operation() == jetstream.KeyValuePut && json.Unmarshal(e.Value(), &op) == nil
			s.mu.Lock()
			if put {
				s.asked[id] = op
			} else {
				delete(s.asked, id)
			}
			s.mu.Unlock()
			if put && op.Op == spool.OpHold && onHold != nil {
				onHold(id)
			}
			if put && (op.Op == spool.OpRequeue && op.Node == s.cfg.Node || op.Op == spool.OpPurge) {
				s.admin(id, op)
			}
		}
	}()
	return nil
}

// holdAsked reports whether an operator asked to hold the job.
func (s *Spool) holdAsked(job *stages.Job) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.asked[job.ID].Op == spool.OpHold
}

// superseded reports whether the job's delivery is of a deferred copy that
// an operator's retry replaced with one sent at once (RetryDeferred).
func (s *Spool) superseded(job *stages.Job) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	op := s.asked[job.ID]
	return op.Op == spool.OpRetry && op.Seq != 0 && op.Seq == handle(job).seq
}

// holdDone forgets the operation asked for job, once it is done (held, or
// the superseded copy dropped) or too late (filed).
func (s *Spool) holdDone(job *stages.Job) {
	s.mu.Lock()
	op, asked := s.asked[job.ID]
	s.mu.Unlock()
	if !asked || s.ops == nil {
		return
	}
	if op.Op == spool.OpRetry && op.Seq != handle(job).seq {
		return // the copy: the mark waits for the superseded one
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.ops.Delete(ctx, job.ID); err != nil {
		s.cfg.Log.Warn("forgetting a hold done", zap.String("id", job.ID), zap.Error(err))
	}
}

// RetryDeferred sends a deferred message of the cluster now rather than at
// its next attempt: a copy is published under its id and the deferred one,
// which the stream gives back only when its delay is over, is marked as
// superseded, so that the node that gets it then drops it unsent. A
// message due within minDelay is left alone (it is tried then anyway, and
// its delivery could cross the copy).
func RetryDeferred(ctx context.Context, js jetstream.JetStream, stream, id string) error {
	if stream == "" {
		stream = DefaultStream
	}
	rs, err := Records(ctx, js, stream, id)
	if err != nil {
		return err
	}
	if len(rs) != 1 || rs[0].ID != id {
		return fmt.Errorf("%s: no such message in the cluster", id)
	}
	r := rs[0]
	if r.State != spool.PlaceDeferred || r.Seq == 0 {
		return fmt.Errorf("%s is %s, not deferred", id, r.State)
	}
	if time.Until(r.NextAttempt) < minDelay {
		return fmt.Errorf("%s is due at %s, within %v: it is tried then", id, r.NextAttempt.UTC().Format(time.RFC3339), minDelay)
	}
	str, err := js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	m, err := str.GetMsg(ctx, r.Seq)
	if err != nil {
		return fmt.Errorf("%s: its deferred copy: %w", id, err)
	}
	ops, err := js.KeyValue(ctx, opsBucket(stream))
	if err != nil {
		return err
	}
	msg := nats.NewMsg(m.Subject)
	msg.Data, msg.Header = m.Data, m.Header
	ack, err := js.PublishMsg(ctx, msg, jetstream.WithMsgID(id+".t"+strconv.FormatUint(r.Seq, 10)))
	if err != nil {
		return fmt.Errorf("publishing %s again: %w", id, err)
	}
	b, _ := json.Marshal(opEntry{Op: spool.OpRetry, Seq: r.Seq, At: time.Now().UTC()})
	if _, err := ops.Put(ctx, id, b); err != nil {
		// Without the mark the deferred copy would be sent too: take the
		// new one back.
		if derr := str.DeleteMsg(ctx, ack.Sequence); derr != nil {
			return fmt.Errorf("%s: marking its deferred copy failed (%v) and so did taking the new one back (%v): it may be sent twice", id, err, derr)
		}
		return fmt.Errorf("%s: marking its deferred copy: %w", id, err)
	}
	r.State, r.NextAttempt, r.At = spool.PlaceQueued, time.Time{}, time.Now().UTC()
	rb, _ := json.Marshal(r)
	js.Publish(ctx, recordSubject(stream, id), rb)
	return nil
}

// minDelay is how far off a deferred message's next attempt must be for
// RetryDeferred to replace it.
const minDelay = 10 * time.Second

// admin carries out an AdminOp for this node, through Config.OnAdmin, and
// removes a requeue done (a purge stays, for nodes that are down, until
// purgeKeep has passed).
func (s *Spool) admin(key string, op opEntry) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if op.Op == spool.OpPurge && time.Since(op.At) > purgeKeep {
		s.ops.Delete(ctx, key)
		return
	}
	if s.cfg.OnAdmin == nil {
		return
	}
	a := AdminOp{Op: op.Op, Node: op.Node, Name: op.Name, Place: op.Place, Before: op.Before}
	if op.Op == spool.OpRequeue {
		a.ID = key
	}
	if err := s.cfg.OnAdmin(a); err != nil {
		s.cfg.Log.Error("an operator's "+string(op.Op)+" for this node", zap.String("key", key), zap.Error(err))
	}
	if op.Op == spool.OpRequeue {
		s.ops.Delete(ctx, key) // done, or failed with its reason logged: not again at every start
	}
}
