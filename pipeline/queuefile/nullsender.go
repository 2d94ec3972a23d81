package queuefile

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// EnqueueNullSender queues msg, a message the service itself writes (a
// delivery status notice), to be sent with the null reverse path: MAIL
// FROM:<>. Enqueue cannot express that, since it takes an empty p.From to
// mean "the sender named in the header". p.From must be empty and p.To
// given; nothing is read from msg's header fields and msg is queued byte
// for byte. It is written as Enqueue writes (temporary file, fsync, rename,
// folder fsync, the sealed block padded), with a route tag, and returns
// the queued file's name.
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
	if err := MakeTmpDir(q.Dir); err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	name, err := q.newName(&p)
	if err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	return name, q.commit(name, seal, lineEnding(msg), bytes.NewReader(msg))
}
