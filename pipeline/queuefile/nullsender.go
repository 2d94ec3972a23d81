package queuefile

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// EnqueueNullSender queues msg, a message the service itself writes (a
// delivery status notice), to be sent with the null reverse path: MAIL
// FROM:<>. Enqueue cannot express that, since it takes an empty p.From to
// mean "the sender named in the header". p.From must be empty and p.To
// given; nothing is read from msg's header fields and msg is queued byte
// for byte. It is written as Enqueue writes (temporary file, fsync, rename,
// folder fsync), with a route tag, and returns the queued file's name.
// Only the Dir form of a Queue is supported (no Publish).
func (q *Queue) EnqueueNullSender(msg []byte, p Params) (string, error) {
	switch {
	case len(q.Recipients) == 0:
		return "", errors.New("enqueue: no public key (recipient_file) to seal to")
	case p.From != "":
		return "", fmt.Errorf("enqueue: sender %q given for a null-sender message", p.From)
	}
	p.Digest, p.Size = "", 0
	if err := p.Validate(); err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	if err := checkSealable(&p); err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	sum := sha256.Sum256(msg)
	p.Digest, p.Size = hex.EncodeToString(sum[:]), int64(len(msg))
	seal, err := SealHeader(&p, lineEnding(msg), q.Recipients...)
	if err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	if len(seal) > MaxFieldSize {
		return "", fmt.Errorf("enqueue: %w", sealTooLarge(&p, len(seal), false))
	}
	now := time.Now
	if q.Now != nil {
		now = q.Now
	}
	name, err := NewName(now())
	if err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	if tag := RouteTag(q.Recipients[0], &p); tag != "" {
		name = strings.TrimSuffix(name, Ext) + "+" + tag + Ext
	}
	if err := MakeTmpDir(q.Dir); err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	tmp := filepath.Join(q.Dir, TmpDir, name)
	if err := WriteFileSync(tmp, append(seal, msg...)); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("enqueue: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(q.Dir, name)); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("enqueue: %w", err)
	}
	if err := SyncDir(q.Dir); err != nil {
		return "", fmt.Errorf("enqueue: %s is queued but the directory sync failed: %w", name, err)
	}
	return name, nil
}

// WriteFileSync creates path (never replacing an existing file) holding b,
// mode 0640 as Enqueue's queue files, and fsyncs it. The caller renames it
// into place and fsyncs the folder (SyncDir).
func WriteFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	_, err = bytes.NewReader(b).WriteTo(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
