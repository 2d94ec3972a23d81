package stream

// Messages larger than one NATS message. The server refuses a message over
// its max_payload (1 MiB by default), headers included; a queue file has no
// such bound. A message that does not fit is put, streamed, in the object
// store <stream>_big under its id, and the stream carries a small message
// with the same headers, an empty body and Smtpq-Object naming the object,
// on <stream>.q.<route tag>.<id> (objectSubject). Everything else (claim,
// heartbeats, state, naks, the held copy) works on that small message as on
// any other; only Stat and Open look in the object store, and the object is
// deleted once the message is filed and acked. An object left behind (a
// node died between the ack and the delete, a producer before it published
// the message) is deleted by the sweep (SweepObjects) a day later: its
// subject lets the sweep ask the stream whether a message still refers to
// it.
//
// Reading does not use ObjectStore.Get: it delivers the chunks through a
// push consumer whose flow control lets up to 32 MiB wait in the client for
// a slow reader (an SMTP server that takes its time), per message being
// read. The reader below asks for one chunk at a time instead, by subject
// and sequence, so a message being read holds one chunk in memory however
// large it is. The object store's layout it relies on (the stream
// OBJ_<bucket>, a chunk subject per object, $O.<bucket>.C.<nuid>) is the
// one the NATS object store specification (ADR-20) fixes.

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// HeaderObject, on a stream message with an empty body, names the object
// in the bucket <stream>_big that holds the message's bytes.
const HeaderObject = "Smtpq-Object"

// BigBucket is the object store bucket of stream's messages that are too
// large for one NATS message.
func BigBucket(stream string) string {
	if stream == "" {
		stream = DefaultStream
	}
	return stream + "_big"
}

const (
	// headroom is kept free in a NATS message for its headers (the id,
	// the producer's file name, the deduplication id) and the subject.
	headroom = 4 << 10
	// maxChunk bounds an object's chunks, and so the memory of a read in
	// progress, whatever the server's max_payload.
	maxChunk = 1 << 20
)

// InlineLimit is the largest message published as one NATS message on the
// connection of js: the server's max_payload less room for the headers.
// Larger ones go to the object store.
func InlineLimit(js jetstream.JetStream) int64 {
	return max(js.Conn().MaxPayload()-headroom, 1)
}

func chunkSize(js jetstream.JetStream) uint32 {
	return uint32(min(InlineLimit(js), maxChunk))
}

// setupBig creates the object store bucket of large messages, or brings its
// settings up to date.
func setupBig(ctx context.Context, js jetstream.JetStream, name string, replicas int) error {
	_, err := retry(ctx, func(ctx context.Context) (jetstream.ObjectStore, error) {
		return js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket:      BigBucket(name),
			Description: "smtpq: messages too large for one NATS message, by id",
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		})
	})
	if err != nil {
		return fmt.Errorf("object store %s: %w", BigBucket(name), err)
	}
	return nil
}

// PublishReader is Publish for a message read from r, of size bytes: one
// that fits a NATS message is read into memory and published as Publish
// does; a larger one is streamed into the object store, never held whole
// in memory.
func PublishReader(ctx context.Context, js jetstream.JetStream, stream, name string, r io.Reader, size int64) (string, error) {
	id := spool.NewID(time.Now())
	return id, PublishReaderAs(ctx, js, stream, id, name, r, size)
}

// PublishReaderAs is PublishReader under a given id. Retried under the same
// id, it stores the message once: the object is put again over the first
// (the same bytes), and the stream drops the second small message as a
// duplicate. r must give exactly size bytes: a message that changed while
// it was read is refused.
func PublishReaderAs(ctx context.Context, js jetstream.JetStream, stream, id, name string, r io.Reader, size int64) error {
	if size <= InlineLimit(js) {
		data, err := io.ReadAll(io.LimitReader(r, size+1))
		if err != nil {
			return fmt.Errorf("publishing %s: %w", name, err)
		}
		if int64(len(data)) != size {
			return fmt.Errorf("publishing %s: %d bytes read, %d expected: it changed while it was read", name, len(data), size)
		}
		return PublishAs(ctx, js, stream, id, name, data)
	}
	return publishObject(ctx, js, stream, id, name, r, size)
}

// publishObject puts the message in the object store under its id, then
// publishes the small message that refers to it.
func publishObject(ctx context.Context, js jetstream.JetStream, stream, id, name string, r io.Reader, size int64) error {
	if stream == "" {
		stream = DefaultStream
	}
	obs, err := js.ObjectStore(ctx, BigBucket(stream))
	if err != nil {
		return fmt.Errorf("publishing %s: object store %s: %w", name, BigBucket(stream), err)
	}
	sr := &sizedReader{r: r, left: size}
	_, err = obs.Put(ctx, jetstream.ObjectMeta{
		Name: id, Description: name,
		Metadata: map[string]string{metaSubject: objectSubject(stream, name, id)},
		Opts:     &jetstream.ObjectMetaOptions{ChunkSize: chunkSize(js)},
	}, sr)
	if err == nil && sr.left != 0 {
		err = fmt.Errorf("%d bytes read, %d expected: it changed while it was read", size-sr.left, size)
		obs.Delete(ctx, id)
	}
	if err != nil {
		return fmt.Errorf("publishing %s to the object store: %w", name, err)
	}
	return publishMsg(ctx, js, stream, id, name, nil, id, size)
}

// sizedReader reads r, failing when it gives more than left bytes.
type sizedReader struct {
	r    io.Reader
	left int64
}

func (s *sizedReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.left -= int64(n)
	if s.left < 0 {
		return n, errors.New("more bytes than expected: it changed while it was read")
	}
	return n, err
}

// bigStore is a node's handle on the object store of large messages.
type bigStore struct {
	obs jetstream.ObjectStore
	str jetstream.Stream // the object store's own stream, read chunk by chunk
}

func openBig(ctx context.Context, js jetstream.JetStream, stream string) (*bigStore, error) {
	obs, err := js.ObjectStore(ctx, BigBucket(stream))
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", BigBucket(stream), err)
	}
	str, err := js.Stream(ctx, "OBJ_"+BigBucket(stream))
	if err != nil {
		return nil, fmt.Errorf("object store %s: %w", BigBucket(stream), err)
	}
	return &bigStore{obs: obs, str: str}, nil
}

// bigObject is a claimed message's object, if it has one.
type bigObject struct {
	store *bigStore
	name  string

	mu   sync.Mutex
	info *jetstream.ObjectInfo
}

// bigObject returns the object m refers to, or nil.
func (s *Spool) bigObject(m jetstream.Msg) *bigObject {
	name := m.Headers().Get(HeaderObject)
	if name == "" {
		return nil
	}
	return &bigObject{store: s.big, name: name}
}

// keepObject makes dst, a copy of src, refer to src's object too.
func keepObject(dst *nats.Msg, src jetstream.Msg) {
	if o := src.Headers().Get(HeaderObject); o != "" {
		dst.Header.Set(HeaderObject, o)
	}
}

// getInfo returns the object's description, read once.
func (b *bigObject) getInfo() (*jetstream.ObjectInfo, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.info != nil {
		return b.info, nil
	}
	var info *jetstream.ObjectInfo
	err := retryTransient(func(ctx context.Context) error {
		var err error
		info, err = b.store.obs.GetInfo(ctx, b.name)
		return err
	}, jetstream.ErrObjectNotFound)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("object %s: %w", b.name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("object %s: %w: %w", b.name, stages.ErrStorage, err)
	}
	if info.NUID == "" || info.Opts != nil && info.Opts.Link != nil {
		return nil, fmt.Errorf("object %s: not a message", b.name)
	}
	b.info = info
	return info, nil
}

func (b *bigObject) stat() (fs.FileInfo, error) {
	info, err := b.getInfo()
	if err != nil {
		return nil, err
	}
	return msgInfo{name: b.name, size: int64(info.Size), at: info.ModTime}, nil
}

func (b *bigObject) open() (io.ReadCloser, error) {
	info, err := b.getInfo()
	if err != nil {
		return nil, err
	}
	return &chunkReader{
		str:    b.store.str,
		name:   b.name,
		subj:   fmt.Sprintf("$O.%s.C.%s", info.Bucket, info.NUID),
		seq:    1,
		left:   info.Size,
		h:      sha256.New(),
		digest: info.Digest,
	}, nil
}

// chunkReader reads an object's chunks one at a time, each the first
// message on the object's chunk subject after the previous one, and checks
// the object's size and digest at the end.
type chunkReader struct {
	str    jetstream.Stream
	name   string
	subj   string
	seq    uint64 // where to look for the next chunk
	left   uint64 // bytes still to come
	buf    []byte // the unread part of the current chunk
	h      hash.Hash
	digest string
	err    error
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.left == 0 {
			r.err = io.EOF
			if got := jetstream.GetObjectDigestValue(r.h); got != r.digest {
				r.err = fmt.Errorf("object %s: digest %s, want %s", r.name, got, r.digest)
			}
			continue
		}
		r.next()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// next reads the next chunk. A chunk not found may be on its way to the
// replica that answered (direct gets are answered by any replica): it is
// asked for again, for a few seconds.
func (r *chunkReader) next() {
	var m *jetstream.RawStreamMsg
	err := retryTransient(func(ctx context.Context) error {
		var err error
		m, err = r.str.GetMsg(ctx, r.seq, jetstream.WithGetMsgSubject(r.subj))
		return err
	})
	switch {
	case err != nil && !errors.Is(err, jetstream.ErrMsgNotFound):
		r.err = fmt.Errorf("object %s: reading the chunk after #%d: %w: %w", r.name, r.seq-1, stages.ErrStorage, err)
	case err != nil:
		r.err = fmt.Errorf("object %s: reading the chunk after #%d: %w", r.name, r.seq-1, err)
	case m.Subject != r.subj || m.Sequence < r.seq:
		r.err = fmt.Errorf("object %s: the store answered with %s #%d", r.name, m.Subject, m.Sequence)
	case uint64(len(m.Data)) > r.left:
		r.err = fmt.Errorf("object %s: more bytes than its size", r.name)
	default:
		r.seq = m.Sequence + 1
		r.left -= uint64(len(m.Data))
		r.h.Write(m.Data)
		r.buf = m.Data
	}
}

func (r *chunkReader) Close() error {
	r.buf, r.err = nil, errors.New("read after close")
	return nil
}

// retryTransient calls f, with 30 seconds each time, until it succeeds,
// fails with one of the final errors, or has failed for about 5 seconds.
func retryTransient(f func(context.Context) error, final ...error) error {
	deadline := time.Now().Add(5 * time.Second)
	pause := 20 * time.Millisecond
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := f(ctx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		for _, e := range final {
			if errors.Is(err, e) {
				return err
			}
		}
		time.Sleep(pause)
		pause = min(2*pause, time.Second)
	}
}

// copyMessage writes the message as published to w, streamed. A message
// whose object is gone has nothing left to copy: its copy is empty, and
// the log filed with it says what happened.
func copyMessage(w io.Writer, m stages.Message) error {
	r, err := m.Open()
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = io.Copy(w, r)
	return err
}

// metaSubject, in an object's metadata, is the subject of the stream message
// that refers to it (objectSubject). An object without it was not put by
// this version of smtpq: the sweep leaves it alone.
const metaSubject = "smtpq-subject"

// DefaultOrphanAge is how old an object must be before the sweep may
// delete it when no message refers to it (Config.OrphanAge).
const DefaultOrphanAge = 24 * time.Hour

// sweepEvery is how often each node sweeps the object store.
const sweepEvery = time.Hour

// sweeps deletes orphaned objects every sweepEvery or so, the first time
// at a random moment within it (nodes started together do not all sweep at
// once), until Close.
func (s *Spool) sweeps() {
	defer close(s.sweepDone)
	wait := time.Duration(rand.Int64N(int64(sweepEvery)))
	for {
		select {
		case <-s.stop:
			return
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		n, err := s.SweepObjects(ctx, s.cfg.OrphanAge)
		cancel()
		if err != nil {
			s.cfg.Log.Warn("sweeping orphaned large messages", zap.Error(err))
		} else if n > 0 {
			s.cfg.Log.Info("orphaned large messages deleted", zap.Int("objects", n))
		}
		wait = sweepEvery/2 + time.Duration(rand.Int64N(int64(sweepEvery)))
	}
}

// SweepObjects deletes the objects of the object store older than olderThan
// that no message refers to: the object of a message filed by a node that
// died between its ack and the object's removal, or put by a producer that
// died before publishing the message. It returns how many it deleted. Any
// node may run it, at any time; it is idempotent.
//
// A message refers to its object from the subject objectSubject names, or
// from its held copy <stream>.held.<id>; both are asked of the stream's
// leader. The queue subject is asked again after the held one: a release
// publishes the queue copy before it removes the held one, and a hold
// publishes the held copy before it acks the queue one, so one of the three
// answers sees the message whichever moves in between. olderThan must be
// longer than any publish takes (a producer puts the object, then
// publishes its message): a day by default.
func (s *Spool) SweepObjects(ctx context.Context, olderThan time.Duration) (int, error) {
	list, err := s.big.obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("listing %s: %w", BigBucket(s.cfg.Stream), err)
	}
	n := 0
	for _, info := range list {
		subj := info.Metadata[metaSubject]
		if subj == "" || info.Deleted || time.Since(info.ModTime) < olderThan {
			continue
		}
		used, err := s.referred(ctx, subj, s.cfg.Stream+".held."+info.Name, subj)
		if err != nil {
			return n, fmt.Errorf("object %s: %w", info.Name, err)
		}
		if used {
			continue
		}
		if err := s.big.obs.Delete(ctx, info.Name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
			return n, fmt.Errorf("deleting object %s: %w", info.Name, err)
		}
		s.cfg.Log.Info("orphaned large message deleted", zap.String("object", info.Name), zap.String("name", info.Description), zap.Time("put", info.ModTime))
		n++
	}
	return n, nil
}

// referred reports whether the stream holds a message on one of subjects,
// asked in turn.
func (s *Spool) referred(ctx context.Context, subjects ...string) (bool, error) {
	for _, subj := range subjects {
		_, err := s.str.GetLastMsgForSubject(ctx, subj)
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, jetstream.ErrMsgNotFound) {
			return false, err
		}
	}
	return false, nil
}

// dropObject deletes a filed message's object. A failure leaves the object
// behind (the message is filed and acked): it is logged, not returned.
func (s *Spool) dropObject(ctx context.Context, h *message) {
	if h.big == nil {
		return
	}
	if err := s.big.obs.Delete(ctx, h.big.name); err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		s.cfg.Log.Warn("removing the object of a filed message", zap.String("id", h.id), zap.String("object", h.big.name), zap.Error(err))
	}
}
