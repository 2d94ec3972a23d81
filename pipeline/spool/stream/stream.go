// Package stream is smtpq's storage on NATS JetStream, for several nodes
// that share one queue: the second backend behind the stages' Source and
// Sink (see package stages, storage.go), beside the directory spool.
//
// Producers publish a queue file's bytes, unchanged, to the stream (Publish,
// PublishAs) on the subject <stream>.q.<route tag> (a large message's, with
// its id after it: big.go); every node consumes
// them through one durable pull consumer, so each message goes to one node
// at a time. What the directory spool does with renames, the stream does
// with acknowledgements:
//
//	claim              a fetched message, kept claimed by in-progress
//	                   heartbeats while the node holds it (a long send is
//	                   not redelivered while it runs)
//	server's 250       the state in the key-value bucket <stream>_state,
//	                   written before the ack (RecordAccepted)
//	Sent, Undeliverable the node's own sent_dir / undeliverable_dir, written
//	                   durably, and then the ack
//	deferred, parked   the state written, then a nak with the delay
//	returned           a nak without delay
//	held               a copy on <stream>.held.<id>, which no consumer
//	                   reads, then the ack
//	dead node          its unacked messages are redelivered after the ack
//	                   wait; a message whose state says the server accepted
//	                   it is filed as sent, not sent again
//
// A message too large for one NATS message is kept in the object store
// <stream>_big, and the stream's message refers to it (big.go).
//
// Duplicates are possible only inside the window between the server's 250
// and its record in the bucket, as on one machine between the 250 and the
// journal line.
package stream

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// Message headers the stream's messages carry.
const (
	HeaderID   = "Smtpq-Id"   // the message's id (spool.IsID), its name in the cluster
	HeaderName = "Smtpq-Name" // the producer's file name, for the Sent and Undeliverable copies
)

// DefaultStream is the stream's name when Config.Stream is empty.
const DefaultStream = "SMTPQ"

// Config says which stream a node uses and where it files its copies.
type Config struct {
	Stream   string        // the stream's name; default DefaultStream. The state bucket is <Stream>_state
	Replicas int           // copies of the stream and the bucket kept by the NATS cluster; default 1
	AckWait  time.Duration // how long a node may hold a message without a heartbeat; default 1 minute
	Batch    int           // messages fetched at a time; default 32
	Poll     time.Duration // how long a fetch waits for messages; default 1 second
	// OrphanAge is how old an object of a large message must be before
	// the node's hourly sweep deletes it if no message refers to it;
	// default DefaultOrphanAge (a day), far beyond any publish or ack wait.
	OrphanAge time.Duration

	Node string // this node's name, in the records the queue commands read

	Sent          string // this node's Sent folder
	Undeliverable string // this node's Undeliverable folder

	// OnHold, if set, is told of each hold an operator asks for (message
	// id), so that a job queued in the node is held at once.
	OnHold func(id string)
	// OnAdmin, if set, carries out an operator's requeue or purge for this
	// node's folders (see AdminOp).
	OnAdmin func(AdminOp) error

	Log *zap.Logger
}

func (c *Config) defaults() {
	if c.Stream == "" {
		c.Stream = DefaultStream
	}
	if c.Replicas <= 0 {
		c.Replicas = 1
	}
	if c.AckWait <= 0 {
		c.AckWait = time.Minute
	}
	if c.Batch <= 0 {
		c.Batch = 32
	}
	if c.Poll <= 0 {
		c.Poll = time.Second
	}
	if c.OrphanAge <= 0 {
		c.OrphanAge = DefaultOrphanAge
	}
	if c.Log == nil {
		c.Log = zap.NewNop()
	}
}

// Spool is one node's handle on the stream. Its methods are safe for
// concurrent use by the Scanner, the Sender and the Archiver.
type Spool struct {
	cfg   Config
	js    jetstream.JetStream
	str   jetstream.Stream
	cons  jetstream.Consumer
	state jetstream.KeyValue
	big   *bigStore // the object store of messages too large for one NATS message
	sent  *spool.Copier

	mu        sync.Mutex
	inflight  map[*message]bool // claimed here and not yet given back: kept alive by heartbeats
	stop      chan struct{}
	done      chan struct{} // closed when the heartbeats have stopped
	sweepDone chan struct{} // closed when the sweeps have stopped
	closing   sync.Once

	ops      jetstream.KeyValue   // operators' holds (ops.go)
	opsWatch jetstream.KeyWatcher //
	opsDone  chan struct{}        // closed when the watch has ended
	asked    map[string]opEntry   // operations asked for (holds, retries, requeues, purges), by key
}

var (
	_ stages.Source  = (*Spool)(nil)
	_ stages.Sink    = (*Spool)(nil)
	_ stages.Message = (*message)(nil)
)

// Setup creates the stream, the state bucket and the object store of large
// messages (<stream>_big), or brings their settings up to date. Publishers
// and nodes call it; it is idempotent. Several nodes starting at once may
// ask the cluster to create the same stream together, and a clustered
// create can then time out for each of them: each step is tried again, a
// few times, and the second try finds what the first made.
func Setup(ctx context.Context, js jetstream.JetStream, name string, replicas int) (jetstream.Stream, jetstream.KeyValue, error) {
	if name == "" {
		name = DefaultStream
	}
	replicas = max(replicas, 1)
	str, err := retry(ctx, func(ctx context.Context) (jetstream.Stream, error) {
		return js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
			Name:        name,
			Description: "smtpq: sealed messages to send (q.<route tag>) and held ones (held.<id>)",
			Subjects:    []string{name + ".q.>", name + ".held.>"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
			Duplicates:  10 * time.Minute,
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("stream %s: %w", name, err)
	}
	kv, err := retry(ctx, func(ctx context.Context) (jetstream.KeyValue, error) {
		return js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      name + "_state",
			Description: "smtpq: delivery state of messages that have one, by id",
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		})
	})
	if err != nil {
		return nil, nil, fmt.Errorf("state bucket %s_state: %w", name, err)
	}
	if kv, err = leaderReads(ctx, js, kv); err != nil {
		return nil, nil, fmt.Errorf("state bucket %s_state: %w", name, err)
	}
	if _, err := setupRecords(ctx, js, name, replicas); err != nil {
		return nil, nil, fmt.Errorf("records bucket %s: %w", recordsBucket(name), err)
	}
	if err := setupBig(ctx, js, name, replicas); err != nil {
		return nil, nil, err
	}
	return str, kv, nil
}

// leaderReads turns direct gets off on kv's stream and returns a handle
// that reads through the stream's leader. A direct get may be answered by a
// follower that has not yet stored the last write: after a NATS server is
// lost, a node that claims a message again could then miss the record of
// the 250 and send it a second time (seen in TestClusterNATSNodeLostMidDrain).
// CreateOrUpdateKeyValue turns them on again each time; handles taken
// before keep reading as they were set up.
func leaderReads(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (jetstream.KeyValue, error) {
	bucket := kv.Bucket()
	return retry(ctx, func(ctx context.Context) (jetstream.KeyValue, error) {
		str, err := js.Stream(ctx, "KV_"+bucket)
		if err != nil {
			return nil, err
		}
		if cfg := str.CachedInfo().Config; cfg.AllowDirect {
			cfg.AllowDirect = false
			if _, err := js.UpdateStream(ctx, cfg); err != nil {
				return nil, err
			}
		}
		return js.KeyValue(ctx, bucket)
	})
}

// retry calls f up to eight times, each with a second more than the last
// (two to six), a random pause apart, until it succeeds, ctx is done, or
// it fails in a way no retry mends (final).
func retry[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	var v T
	var err error
	for i := range 8 {
		// Longer each time: a clustered create on a loaded machine, or
		// an election, can take more than the first try allows.
		actx, cancel := context.WithTimeout(ctx, min(time.Duration(i+2)*time.Second, 6*time.Second))
		v, err = f(actx)
		cancel()
		if err == nil || ctx.Err() != nil || final(err) {
			return v, err
		}
		pause := time.Duration(100+rand.IntN(400)) * time.Millisecond * time.Duration(i+1)
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(pause):
		}
	}
	return v, err
}

// final reports whether err says that trying again cannot help: the
// server refused the request itself (too large, not permitted, a bad
// subject), as opposed to no answer, a lost one, or a leader election.
func final(err error) bool {
	if errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrPermissionViolation) ||
		errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrBadSubject) || errors.Is(err, nats.ErrConnectionClosed) {
		return true
	}
	var api *jetstream.APIError
	if errors.As(err, &api) {
		return api.ErrorCode == errCodeMessageTooLarge
	}
	return false
}

// errCodeMessageTooLarge is JetStream's error code for a message over the
// stream's max_msg_size.
const errCodeMessageTooLarge jetstream.ErrorCode = 10054

// Open sets up the stream, its consumer and its bucket, and returns this
// node's spool. Close releases it.
func Open(ctx context.Context, js jetstream.JetStream, cfg Config) (*Spool, error) {
	cfg.defaults()
	for _, d := range []string{cfg.Sent, cfg.Undeliverable} {
		if d == "" {
			return nil, errors.New("stream: the Sent and Undeliverable folders must be set")
		}
		if err := os.MkdirAll(filepath.Join(d, queuefile.TmpDir), 0o750); err != nil {
			return nil, fmt.Errorf("stream: %w", err)
		}
	}
	str, kv, err := Setup(ctx, js, cfg.Stream, cfg.Replicas)
	if err != nil {
		return nil, fmt.Errorf("stream: %w", err)
	}
	cons, err := str.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       "smtpq",
		Description:   "smtpq nodes: each message to one node at a time",
		FilterSubject: cfg.Stream + ".q.>",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 100000,
	})
	if err != nil {
		return nil, fmt.Errorf("stream: consumer: %w", err)
	}
	big, err := openBig(ctx, js, cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("stream: %w", err)
	}
	s := &Spool{
		cfg: cfg, js: js, str: str, cons: cons, state: kv, big: big, sent: spool.NewCopier(cfg.Sent),
		inflight: map[*message]bool{}, stop: make(chan struct{}), done: make(chan struct{}), sweepDone: make(chan struct{}),
		opsDone: make(chan struct{}), asked: map[string]opEntry{},
	}
	if err := s.watchOps(ctx, cfg.OnHold); err != nil {
		return nil, fmt.Errorf("stream: %w", err)
	}
	go s.heartbeats()
	go s.sweeps()
	return s, nil
}

// Close stops the heartbeats and gives back what this node still holds
// (a nak: another node, or this one after a restart, takes it). It may be
// called more than once.
func (s *Spool) Close() error {
	s.closing.Do(func() {
		close(s.stop)
		s.opsWatch.Stop()
	})
	<-s.done
	<-s.sweepDone
	<-s.opsDone
	s.mu.Lock()
	held := s.inflight
	s.inflight = map[*message]bool{}
	s.mu.Unlock()
	var errs []error
	for m := range held {
		if err := m.m.Nak(); err != nil {
			errs = append(errs, err)
		}
	}
	// The records written without waiting: let them reach the stream.
	select {
	case <-s.js.PublishAsyncComplete():
	case <-time.After(5 * time.Second):
	}
	return errors.Join(errs...)
}

// heartbeats tells the stream every third of the ack wait that the messages
// this node holds are in progress.
func (s *Spool) heartbeats() {
	defer close(s.done)
	t := time.NewTicker(s.cfg.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
		s.mu.Lock()
		ms := make([]*message, 0, len(s.inflight))
		for m := range s.inflight {
			ms = append(ms, m)
		}
		s.mu.Unlock()
		for _, m := range ms {
			if err := m.m.InProgress(); err != nil {
				s.cfg.Log.Warn("in-progress heartbeat", zap.String("id", m.id), zap.Error(err))
			}
		}
	}
}

// message is the stream's handle on a claimed message (stages.Message).
type message struct {
	m        jetstream.Msg
	id       string
	at       time.Time // when it was published
	seq      uint64    // its stream sequence
	hasState bool      // a state entry was read or written for it
	released bool
	big      *bigObject // where its bytes are, if too large for one NATS message
}

func (m *message) Stat() (fs.FileInfo, error) {
	if m.big != nil {
		return m.big.stat()
	}
	return msgInfo{name: m.id, size: int64(len(m.m.Data())), at: m.at}, nil
}

func (m *message) Open() (io.ReadCloser, error) {
	if m.big != nil {
		return m.big.open()
	}
	return io.NopCloser(bytes.NewReader(m.m.Data())), nil
}

func (m *message) Released() bool { return m.released }

// msgInfo describes a message as a regular file.
type msgInfo struct {
	name string
	size int64
	at   time.Time
}

func (i msgInfo) Name() string       { return i.name }
func (i msgInfo) Size() int64        { return i.size }
func (i msgInfo) Mode() fs.FileMode  { return 0o640 }
func (i msgInfo) ModTime() time.Time { return i.at }
func (i msgInfo) IsDir() bool        { return false }
func (i msgInfo) Sys() any           { return nil }

func handle(job *stages.Job) *message { return job.Msg.(*message) }

// Recover has nothing to do: the stream redelivers what a dead node held.
func (s *Spool) Recover() (int, error) { return 0, nil }

// WatchDirs is empty: the stream brings new messages by itself.
func (s *Spool) WatchDirs() []string { return nil }

// ScanOne is never called: there are no folders to watch.
func (s *Spool) ScanOne(dir, name string) (*stages.Job, error) { return nil, nil }

// Scan fetches messages and calls fn with each, until fn returns false, ctx
// is done, or a fetch waits Poll without finding one; it then asks to be
// called again at once (the fetch itself is the wait). A message whose name
// skip says is held (its route tag) goes back until the hold ends.
func (s *Spool) Scan(ctx context.Context, now time.Time, skip func(name string) time.Time, fn func(*stages.Job) bool) (time.Time, error) {
	for ctx.Err() == nil {
		fctx, cancel := context.WithTimeout(ctx, s.cfg.Poll)
		batch, err := s.cons.Fetch(s.cfg.Batch, jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			if ctx.Err() != nil {
				return time.Now(), nil
			}
			return time.Now().Add(s.cfg.Poll), fmt.Errorf("stream: fetching: %w", err)
		}
		// Take the whole batch first: each is kept alive by heartbeats from
		// now on, however long the pipeline takes to accept it.
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		cancel()
		jobs := s.claimAll(ctx, msgs)
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			s.cfg.Log.Warn("fetching from the stream", zap.Error(err))
		}
		for i, job := range jobs {
			if s.superseded(job) {
				// Sent again at an operator's retry: this copy goes.
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if err := handle(job).m.DoubleAck(ctx); err == nil {
					s.release(handle(job))
					s.holdDone(job)
				} else {
					s.giveBack(job, time.Second)
				}
				cancel()
				continue
			}
			if s.holdAsked(job) {
				if err := s.Hold(job); err != nil {
					s.cfg.Log.Error("holding a message as asked", zap.String("id", job.ID), zap.Error(err))
					s.giveBack(job, time.Second)
				}
				continue
			}
			if skip != nil {
				if until := skip(job.Name); !until.IsZero() {
					// Its route is held: back until the hold ends, not
					// fetched again and again meanwhile.
					s.giveBack(job, max(time.Until(until), time.Second))
					continue
				}
			}
			if !fn(job) {
				for _, j := range jobs[i+1:] {
					s.Return(j)
				}
				return time.Now(), nil
			}
		}
		if len(jobs) == 0 {
			return time.Now(), nil
		}
	}
	return time.Now(), nil
}

// claimAll makes jobs of a fetched batch, in its order, reading their
// states at once rather than one round trip after the other.
func (s *Spool) claimAll(ctx context.Context, msgs []jetstream.Msg) []*stages.Job {
	jobs := make([]*stages.Job, len(msgs))
	var wg sync.WaitGroup
	for i, m := range msgs {
		wg.Go(func() { jobs[i] = s.claim(ctx, m) })
	}
	wg.Wait()
	return jobs
}

// claim makes a job of a fetched message, with its state if it has one.
func (s *Spool) claim(ctx context.Context, m jetstream.Msg) *stages.Job {
	h := &message{m: m, big: s.bigObject(m)}
	meta, err := m.Metadata()
	if err == nil {
		h.at, h.seq = meta.Timestamp, meta.Sequence.Stream
	} else {
		h.at = time.Now()
	}
	h.id = m.Headers().Get(HeaderID)
	if !spool.IsID(h.id) {
		// Published by something else than smtpq: its stream sequence
		// names it.
		seq := uint64(0)
		if meta != nil {
			seq = meta.Sequence.Stream
		}
		h.id = fmt.Sprintf("seq%013d", seq)
	}
	job := &stages.Job{ID: h.id, Name: fileName(m.Headers().Get(HeaderName), h.id), Msg: h}
	if st, err := s.readState(ctx, h.id); err != nil {
		job.State.AddHistory(time.Now(), "state unreadable, reset: "+err.Error())
		h.hasState = true
	} else if st != nil {
		job.State, h.hasState = *st, true
	}
	if job.State.Queued.IsZero() {
		// No state yet (a message deferred before its first attempt, by
		// its not_before, has none): the time its name carries, as the
		// directory spool does, else this copy's. A copy published again
		// (queue retry, release) is newer than the message.
		job.State.Queued = h.at
		if t, ok := queuefile.NameTime(job.Name); ok {
			job.State.Queued = t
		}
	}
	s.mu.Lock()
	s.inflight[h] = true
	s.mu.Unlock()
	s.note(job, spool.PlaceActive, "", time.Time{})
	return job
}

// fileName is the name a message is filed under: the producer's, if it is
// one file name (no folder, not hidden), else its id.
func fileName(name, id string) string {
	if name == "" || name != path.Base(name) || name != filepath.Base(name) || strings.HasPrefix(name, ".") ||
		strings.ContainsAny(name, "\x00/\\") || len(name) > 255 {
		return id + queuefile.Ext
	}
	return name
}

// release notes that the stream has the message back.
func (s *Spool) release(h *message) {
	h.released = true
	s.mu.Lock()
	delete(s.inflight, h)
	s.mu.Unlock()
}

func (s *Spool) readState(ctx context.Context, id string) (*stages.State, error) {
	e, err := s.state.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st stages.State
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// WriteState records the state of message id in the bucket.
func (s *Spool) WriteState(id string, st *stages.State) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A request in flight when its NATS server stops is lost without an
	// answer: each try has its own short timeout (putting the same value
	// again is harmless).
	if _, err := retry(ctx, func(ctx context.Context) (uint64, error) { return s.state.Put(ctx, id, b) }); err != nil {
		return fmt.Errorf("recording the state of %s: %w", id, err)
	}
	return nil
}

// RecordAccepted records in the bucket that the server accepted a job's
// data: its recipients done and, if none is left, that it counts as sent.
// A redelivery after this node dies then files it, not sends it again.
func (s *Spool) RecordAccepted(job *stages.Job) error {
	st := job.AcceptedState()
	handle(job).hasState = true
	return s.WriteState(job.ID, &st)
}

// finish acks a filed message and removes its state.
func (s *Spool) finish(job *stages.Job) error {
	h := handle(job)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// An ack lost with a stopping NATS server would otherwise fail the
	// filing after the copy is written, and the message, given back, would
	// be filed again: each try has its own short timeout, and acking again
	// a message the stream already removed is answered all the same.
	if _, err := retry(ctx, func(ctx context.Context) (struct{}, error) { return struct{}{}, h.m.DoubleAck(ctx) }); err != nil {
		return fmt.Errorf("acknowledging %s: %w", job.ID, err)
	}
	s.release(h)
	if h.hasState {
		_, err := retry(ctx, func(ctx context.Context) (struct{}, error) {
			err := s.state.Purge(ctx, job.ID)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				err = nil
			}
			return struct{}{}, err
		})
		if err != nil {
			s.cfg.Log.Warn("removing the state of a filed message", zap.String("id", job.ID), zap.Error(err))
		}
	}
	s.dropObject(ctx, h)
	return nil
}

// FileSent writes the Sent copy (none with deleteCopy) in this node's Sent
// folder, durably, then acks the message.
func (s *Spool) FileSent(job *stages.Job, deleteCopy bool) (string, error) {
	var dst string
	if !deleteCopy {
		var err error
		if dst, err = s.sent.Copy(job.Name, job.ID, job.WriteMessage); err != nil {
			return "", fmt.Errorf("filing in Sent: %w", err)
		}
	}
	if err := s.finish(job); err != nil {
		return "", err
	}
	s.note(job, spool.PlaceSent, dst, time.Time{})
	s.holdDone(job) // too late for a hold
	return dst, nil
}

// FileUndeliverable writes the XML log and the message as it was published
// in this node's Undeliverable folder, durably, then acks the message.
func (s *Spool) FileUndeliverable(job *stages.Job, xmlLog []byte) (string, error) {
	dst, err := spool.FileCopy(s.cfg.Undeliverable, job.Name, job.ID, func(w io.Writer) error {
		return copyMessage(w, job.Msg)
	}, xmlLog)
	if err != nil {
		return "", fmt.Errorf("filing in Undeliverable: %w", err)
	}
	if err := s.finish(job); err != nil {
		return "", err
	}
	s.note(job, spool.PlaceUndeliverable, dst, time.Time{})
	s.holdDone(job)
	return dst, nil
}

// Defer records the job's state and gives the message back until due.
func (s *Spool) Defer(job *stages.Job, due time.Time) error {
	if err := s.WriteState(job.ID, &job.State); err != nil {
		return err
	}
	handle(job).hasState = true
	if err := s.giveBack(job, time.Until(due)); err != nil {
		return err
	}
	s.note(job, spool.PlaceDeferred, "", due)
	return nil
}

// Park gives the message back until due, its attempts unchanged.
func (s *Spool) Park(job *stages.Job, due time.Time) error {
	if handle(job).hasState {
		if err := s.WriteState(job.ID, &job.State); err != nil {
			return err
		}
	}
	if err := s.giveBack(job, time.Until(due)); err != nil {
		return err
	}
	s.note(job, spool.PlaceDeferred, "", due)
	return nil
}

// Return gives the message back at once, unsent.
func (s *Spool) Return(job *stages.Job) error {
	if err := s.giveBack(job, 0); err != nil {
		return err
	}
	s.note(job, spool.PlaceQueued, "", time.Time{})
	return nil
}

func (s *Spool) giveBack(job *stages.Job, delay time.Duration) error {
	h := handle(job)
	var err error
	if delay > 0 {
		err = h.m.NakWithDelay(delay)
	} else {
		err = h.m.Nak()
	}
	if err != nil {
		// Not given back: the ack wait gives it back in the end.
		return fmt.Errorf("giving %s back to the stream: %w", job.ID, err)
	}
	s.release(h)
	return nil
}

// Hold keeps a copy of the message on <stream>.held.<id>, where no consumer
// reads, with its state, and acks the original.
func (s *Spool) Hold(job *stages.Job) error {
	h := handle(job)
	if err := s.WriteState(job.ID, &job.State); err != nil {
		return err
	}
	h.hasState = true
	msg := nats.NewMsg(s.cfg.Stream + ".held." + job.ID)
	msg.Data = h.m.Data()
	msg.Header.Set(HeaderID, job.ID)
	msg.Header.Set(HeaderName, h.m.Headers().Get(HeaderName))
	keepObject(msg, h.m) // the held copy refers to the same object, kept
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("holding %s: %w", job.ID, err)
	}
	if err := h.m.DoubleAck(ctx); err != nil {
		return fmt.Errorf("holding %s: %w", job.ID, err)
	}
	s.release(h)
	s.note(job, spool.PlaceHeld, "", time.Time{})
	s.holdDone(job)
	return nil
}

// queueSubject is the subject a message named name is sent on: by its
// route tag, so that a consumer could take one route's messages.
func queueSubject(stream, name string) string {
	tag := queuefile.NameRouteTag(name)
	if tag == "" {
		tag = "_"
	}
	return stream + ".q." + tag
}

// objectSubject is the subject of a message whose bytes are the object
// named object: its route's, with the object's name after it, so that the
// sweep of orphaned objects (big.go) can ask the stream whether a message
// still refers to it.
func objectSubject(stream, name, object string) string {
	if !spool.IsID(object) {
		return queueSubject(stream, name) // not one of smtpq's: not a token to put in a subject
	}
	return queueSubject(stream, name) + "." + object
}

// Publish puts a queue file's bytes (a sealed message, as queuefile writes
// it, or a pickup file) on the stream under a new id, and returns the id
// once the stream has stored it. name is the producer's file name: Sent and
// Undeliverable copies are filed under it; its route tag, if it has one,
// makes the subject.
func Publish(ctx context.Context, js jetstream.JetStream, stream, name string, data []byte) (string, error) {
	id := spool.NewID(time.Now())
	return id, PublishAs(ctx, js, stream, id, name, data)
}

// PublishAs is Publish under a given id: publishing again under the same id
// within the stream's duplicate window (10 minutes) stores nothing more, so
// a publish retried after a crash or a lost ack sends the message once.
// A message too large for one NATS message goes to the object store (see
// PublishReaderAs, which does not need it in memory).
func PublishAs(ctx context.Context, js jetstream.JetStream, stream, id, name string, data []byte) error {
	if int64(len(data)) > InlineLimit(js) {
		return publishObject(ctx, js, stream, id, name, bytes.NewReader(data), int64(len(data)))
	}
	return publishMsg(ctx, js, stream, id, name, data, "", int64(len(data)))
}

// publishMsg publishes a message on the stream, its bytes in data or in the
// object named object (size bytes), then writes its "queued" record.
//
// A publish whose ack is lost (a NATS leader election, a timeout) may have
// stored the message all the same: it is tried again under the same
// Nats-Msg-Id, which the stream drops as a duplicate within its window, so
// that the message is stored once and the enqueue does not fail for a lost
// answer. The record is written only after the ack, so a publish that
// failed leaves none behind, and only if the message has none yet (the
// node that claims it may have written "active" first).
func publishMsg(ctx context.Context, js jetstream.JetStream, stream, id, name string, data []byte, object string, size int64) error {
	if stream == "" {
		stream = DefaultStream
	}
	_, err := retry(ctx, func(ctx context.Context) (*jetstream.PubAck, error) {
		msg := nats.NewMsg(queueSubject(stream, name))
		msg.Data = data
		msg.Header.Set(HeaderID, id)
		msg.Header.Set(HeaderName, name)
		if object != "" {
			msg.Subject = objectSubject(stream, name, object)
			msg.Header.Set(HeaderObject, object)
		}
		return js.PublishMsg(ctx, msg, jetstream.WithMsgID(id))
	})
	if err != nil {
		return fmt.Errorf("publishing %s: %w", name, err)
	}
	now := time.Now().UTC()
	b, _ := json.Marshal(Record{ID: id, Name: name, State: spool.PlaceQueued, Size: size, Queued: now, At: now})
	// The message is safe without its record: a record lost here is
	// written by the node that claims the message.
	js.Publish(ctx, recordSubject(stream, id), b, jetstream.WithExpectLastSequencePerSubject(0))
	return nil
}
