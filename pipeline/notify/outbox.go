package notify

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// EventsDir is the outbox, under queue_dir: <hook key>/<event id>.json for
// each event not yet delivered to that webhook, and .tmp for files being
// written.
const EventsDir = ".events"

// maxEventFile bounds what is read back of an outbox file.
const maxEventFile = 1 << 20

// HookKey is the outbox folder of the webhook at url: 16 hex digits of its
// SHA-256, so that reordering the webhooks in the configuration keeps each
// one's pending events.
func HookKey(url string) string {
	s := sha256.Sum256([]byte(url))
	return hex.EncodeToString(s[:8])
}

// outbox is the durable record of events not yet delivered: one file per
// event and webhook, removed once the webhook answered 2xx.
type outbox struct{ dir string }

func (o outbox) tmpDir() string            { return filepath.Join(o.dir, ".tmp") }
func (o outbox) hookDir(key string) string { return filepath.Join(o.dir, key) }

// open creates the outbox's folders for the webhooks keys and empties
// .tmp of files a crash left half-written.
func (o outbox) open(keys []string) error {
	for _, d := range append([]string{o.tmpDir()}, keys...) {
		if d != o.tmpDir() {
			d = o.hookDir(d)
		}
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
	}
	left, err := os.ReadDir(o.tmpDir())
	if err != nil {
		return err
	}
	for _, e := range left {
		os.Remove(filepath.Join(o.tmpDir(), e.Name()))
	}
	return queuefile.SyncDir(o.dir)
}

// record writes body as event id for each webhook of keys: a temporary
// file, fsynced, renamed into the webhook's folder, and the folders
// fsynced. When it returns nil the event survives a crash. An event
// already recorded for a webhook (before a crash) is kept as it is: it
// was written with what the filing knew.
func (o outbox) record(keys []string, id string, body []byte) error {
	for _, k := range keys {
		if _, err := os.Lstat(filepath.Join(o.hookDir(k), id+".json")); err == nil {
			continue
		}
		tmp := filepath.Join(o.tmpDir(), id+"."+k)
		if err := queuefile.WriteFileSync(tmp, body); err != nil {
			os.Remove(tmp)
			return err
		}
		if err := os.Rename(tmp, filepath.Join(o.hookDir(k), id+".json")); err != nil {
			os.Remove(tmp)
			return err
		}
	}
	for _, k := range keys {
		if err := queuefile.SyncDir(o.hookDir(k)); err != nil {
			return err
		}
	}
	return nil
}

// pending returns the ids of the events waiting for webhook key, oldest
// first (ids sort by time).
func (o outbox) pending(key string) ([]string, error) {
	es, err := os.ReadDir(o.hookDir(key))
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range es {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok && e.Type().IsRegular() {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// read returns event id's body for webhook key.
func (o outbox) read(key, id string) ([]byte, error) {
	b, err := readFileMax(filepath.Join(o.hookDir(key), id+".json"), maxEventFile)
	if err != nil {
		return nil, fmt.Errorf("event %s: %w", id, err)
	}
	return b, nil
}

// readFileMax reads file p, which must hold at most limit bytes (an
// outbox's event, an intent): a larger one is an error, and no more than
// limit+1 bytes of it are read.
func readFileMax(p string, limit int) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, int64(limit)+1))
	if err == nil && len(b) > limit {
		err = fmt.Errorf("over %d bytes", limit)
	}
	return b, err
}

// remove forgets event id for webhook key, once delivered. The removal is
// not fsynced: a crash that undoes it delivers the event again, which
// at-least-once allows.
func (o outbox) remove(key, id string) error {
	err := os.Remove(filepath.Join(o.hookDir(key), id+".json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// setAside renames event id of webhook key to <id>.json.bad, which is
// never delivered, for an operator to look at.
func (o outbox) setAside(key, id string) {
	p := filepath.Join(o.hookDir(key), id+".json")
	if os.Rename(p, p+".bad") != nil {
		os.Remove(p)
	}
}
