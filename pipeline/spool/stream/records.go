package stream

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// Record is where a message is in the cluster and what happened to it, as
// the queue commands show it from any node: one key of the bucket
// <stream>_records per message id, written when it is published, claimed
// and filed. It holds no secret: no password or token, no recipient
// address. Records are kept RecordsTTL after their last change.
type Record struct {
	ID          string      `json:"id"`
	Name        string      `json:"name"`
	State       spool.Place `json:"state"` // queued, active, deferred, held, undeliverable or sent
	Node        string      `json:"node,omitempty"`
	Path        string      `json:"path,omitempty"` // the Sent or Undeliverable copy, on Node
	Host        string      `json:"host,omitempty"`
	Port        int         `json:"port,omitempty"`
	Sender      string      `json:"sender,omitempty"`
	Recipients  int         `json:"recipients,omitempty"`
	Size        int64       `json:"size,omitempty"`
	Queued      time.Time   `json:"queued,omitzero"`
	Attempts    int         `json:"attempts,omitempty"`
	NextAttempt time.Time   `json:"next_attempt,omitzero"`
	LastError   string      `json:"last_error,omitempty"`
	Seq         uint64      `json:"seq,omitempty"` // the stream sequence of the copy a node last took
	At          time.Time   `json:"at"`            // when the record was written
}

// RecordsTTL is how long a message's record outlives its last change.
const RecordsTTL = 7 * 24 * time.Hour

func recordsBucket(stream string) string { return stream + "_records" }

// recordSubject is the subject a record is written on: the bucket's key
// subject, so that a publish, asynchronous where it may be, is a Put.
func recordSubject(stream, id string) string { return "$KV." + recordsBucket(stream) + "." + id }

// setupRecords creates the records bucket, or brings it up to date.
func setupRecords(ctx context.Context, js jetstream.JetStream, stream string, replicas int) (jetstream.KeyValue, error) {
	return retry(ctx, func(ctx context.Context) (jetstream.KeyValue, error) {
		return js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      recordsBucket(stream),
			Description: "smtpq: where each message is and what happened to it, for the queue commands",
			TTL:         RecordsTTL,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		})
	})
}

// note records a claimed job's new state, without waiting for the stream:
// a record lost with a node is written again by the node that takes the
// message next. path is its filed copy, if any.
func (s *Spool) note(job *stages.Job, state spool.Place, path string, due time.Time) {
	r := Record{
		ID: job.ID, Name: job.Name, State: state, Node: s.cfg.Node, Path: path,
		Host: job.Route.Host, Port: job.Route.Port, Sender: job.Sender, Recipients: len(job.Pending),
		Size: job.Size, Queued: job.State.Queued, Attempts: job.State.Attempts, LastError: job.State.LastError,
		Seq: handle(job).seq, At: time.Now().UTC(),
	}
	if state == spool.PlaceDeferred {
		r.NextAttempt = due
	}
	if job.Params != nil && r.Sender == "" {
		r.Sender = job.Params.From
	}
	if job.Params != nil && job.Pending == nil && len(job.State.Done)+len(job.State.Failed) == 0 {
		// Deferred by its not_before before the Parser worked out who
		// is left: nobody is done yet, so everyone.
		r.Recipients = len(job.Params.To)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return
	}
	if _, err := s.js.PublishAsync(recordSubject(s.cfg.Stream, job.ID), b); err != nil {
		s.cfg.Log.Debug("recording a message's state in the cluster", zap.String("id", job.ID), zap.Error(err))
	}
}

// Records returns every message's record in the cluster, or those whose id
// or name is key if key is not empty.
func Records(ctx context.Context, js jetstream.JetStream, stream, key string) ([]Record, error) {
	if stream == "" {
		stream = DefaultStream
	}
	kv, err := js.KeyValue(ctx, recordsBucket(stream))
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil // nothing was ever published
	}
	if err != nil {
		return nil, err
	}
	get := func(k string) (*Record, error) {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var r Record
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return nil, err
		}
		return &r, nil
	}
	if key != "" && validKey(key) {
		if r, err := get(key); err != nil || r != nil {
			if r == nil {
				return nil, err
			}
			return []Record{*r}, nil
		}
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []Record
	for k := range lister.Keys() {
		r, err := get(k)
		if err != nil {
			return nil, err
		}
		if r != nil && (key == "" || r.Name == key) {
			out = append(out, *r)
		}
	}
	return out, nil
}

// validKey reports whether s can be a key of a bucket.
func validKey(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '=' || c == '.' || c == '/') {
			return false
		}
	}
	return true
}
