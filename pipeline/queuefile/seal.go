package queuefile

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"filippo.io/age"
	"github.com/emersion/go-message/textproto"
)

// Errors from Open. Each names one way a queue file can be wrong; callers
// match them with errors.Is, and the message of the wrapping error says more.
var (
	ErrNoSeal        = errors.New("no X-SmtpQ-Sealed header")
	ErrDuplicateSeal = errors.New("more than one X-SmtpQ-Sealed header")
	ErrMalformedSeal = errors.New("malformed X-SmtpQ-Sealed header")
	ErrVersion       = errors.New("unsupported queue-file format version")
	ErrWrongKey      = errors.New("sealed to a key this service does not hold")
	ErrTampered      = errors.New("seal tampered with or corrupted")
	ErrTruncated     = errors.New("message truncated")
	ErrDigest        = errors.New("message does not match its seal (seal moved onto another message, or message modified)")
	ErrNoSeparator   = errors.New("no empty line between header and body")
)

// foldWidth is the number of base64 characters per continuation line: with
// the leading space the line is within go-message's preferred 76
// characters, and a multiple of 4 so that each line is whole base64 groups.
const foldWidth = 72

// SealHeader encrypts p to recipients and returns the complete header field,
// folded, each line ending in eol ("\r\n" or "\n").
func SealHeader(p *Params, eol string, recipients ...age.Recipient) ([]byte, error) {
	if len(recipients) == 0 {
		return nil, errors.New("no age recipient to seal to")
	}
	plain, err := json.Marshal(p.toWire())
	if err != nil {
		return nil, err
	}
	var ct bytes.Buffer
	w, err := age.Encrypt(&ct, recipients...)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	if _, err := w.Write(plain); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	// "v1" and the base64 in words of foldWidth, which go-message folds one
	// to a line.
	b64 := base64.StdEncoding.EncodeToString(ct.Bytes())
	words := []string{"v1"}
	for len(b64) > 0 {
		n := min(foldWidth, len(b64))
		words = append(words, b64[:n])
		b64 = b64[n:]
	}
	return FormatField(SealedField, strings.Join(words, " "), eol)
}

// maxSealPlain bounds the decrypted parameters; a real seal is under 64 KiB
// even with thousands of recipients.
const maxSealPlain = 4 << 20

// OpenSeal decrypts the value of a sealed field (unfolded, as go-message's
// textproto.Header.Get returns it).
// It does not check the digest; Open does.
func OpenSeal(value string, identities ...age.Identity) (*Params, error) {
	parts := strings.Fields(value)
	if len(parts) < 2 {
		return nil, fmt.Errorf("%w: no version and data", ErrMalformedSeal)
	}
	if parts[0] != "v1" {
		return nil, fmt.Errorf("%w: %q", ErrVersion, parts[0])
	}
	ct, err := base64.StdEncoding.DecodeString(strings.Join(parts[1:], ""))
	if err != nil {
		return nil, fmt.Errorf("%w: bad base64: %v", ErrMalformedSeal, err)
	}
	plain, err := decryptSeal(ct, identities...)
	if errors.Is(err, errMultiChunk) {
		plain, err = decryptStream(ct, identities...)
	}
	if err != nil {
		var nomatch *age.NoIdentityMatchError
		if errors.As(err, &nomatch) {
			return nil, ErrWrongKey
		}
		return nil, fmt.Errorf("%w: %v", ErrTampered, err)
	}
	if len(plain) > maxSealPlain {
		return nil, fmt.Errorf("%w: parameters over %d bytes", ErrMalformedSeal, maxSealPlain)
	}
	var w wire
	dec := json.NewDecoder(bytes.NewReader(plain))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return nil, fmt.Errorf("%w: parameters: %v", ErrMalformedSeal, err)
	}
	if w.V != FormatVersion {
		return nil, fmt.Errorf("%w: %d", ErrVersion, w.V)
	}
	return w.params(), nil
}

// decryptStream decrypts an age file of any size with age.Decrypt, reading at
// most maxSealPlain+1 bytes of plaintext.
func decryptStream(ct []byte, identities ...age.Identity) ([]byte, error) {
	r, err := age.Decrypt(bytes.NewReader(ct), identities...)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(io.LimitReader(r, maxSealPlain+1))
}

// Open reads a whole queue file from r, opens its seal with identities and
// checks that the rest of the file is exactly the message that was sealed. It
// streams: memory use does not depend on the message size.
func Open(r io.Reader, identities ...age.Identity) (*Params, error) {
	return OpenTo(nil, r, identities...)
}

// OpenTo is Open that also writes the message without its sealed header
// (what Strip writes) to body, unless body is nil. What body got is the
// message only if OpenTo returns no error.
func OpenTo(body io.Writer, r io.Reader, identities ...age.Identity) (*Params, error) {
	h := sha256.New()
	cw := &CountWriter{W: h}
	if body != nil {
		cw.W = io.MultiWriter(h, body)
	}
	res, err := Strip(cw, r, IsSealedField)
	if err != nil {
		return nil, fmt.Errorf("reading message: %w", err)
	}
	seal, err := SealOf(res.Removed)
	if err != nil {
		return nil, err
	}
	p, err := OpenSeal(seal, identities...)
	if err != nil {
		return nil, err
	}
	if cw.N < p.Size {
		return nil, fmt.Errorf("%w: %d bytes of message, the seal says %d", ErrTruncated, cw.N, p.Size)
	}
	if got := hex.EncodeToString(h.Sum(nil)); cw.N != p.Size || got != p.Digest {
		return nil, ErrDigest
	}
	if !res.HeaderEnd {
		return nil, ErrNoSeparator
	}
	return p, nil
}

// SealOf returns the value of the one sealed field (SealedField) among
// the fields that Strip removed with IsSealedField, the padding (PadField)
// left aside: ErrNoSeal if there is none, ErrDuplicateSeal if there are
// more.
func SealOf(removed textproto.Header) (string, error) {
	seals := removed.FieldsByKey(SealedField)
	switch seals.Len() {
	case 0:
		return "", ErrNoSeal
	case 1:
		seals.Next()
		return seals.Value(), nil
	}
	return "", ErrDuplicateSeal
}

// CountWriter passes writes on to W and counts the bytes written.
type CountWriter struct {
	W io.Writer
	N int64
}

func (c *CountWriter) Write(b []byte) (int, error) {
	n, err := c.W.Write(b)
	c.N += int64(n)
	return n, err
}
