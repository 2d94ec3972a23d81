package queuefile

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"errors"

	"filippo.io/age"
	"golang.org/x/crypto/chacha20poly1305"
)

// The age payload format (age-encryption.org/v1): a 16-byte nonce, then the
// plaintext in chunks of 64 KiB, each sealed with ChaCha20-Poly1305 under
// HKDF-SHA-256(file key, salt nonce, "payload"), the chunk's 12-byte nonce
// being its 11-byte big-endian index and a last-chunk flag.
const (
	payloadNonceSize = 16
	payloadChunkSize = 64 << 10
)

// errMultiChunk says a payload has more than one chunk: decryptSeal leaves
// those to age.Decrypt.
var errMultiChunk = errors.New("payload of more than one chunk")

// decryptSeal decrypts an age file whose payload is a single chunk, which
// sealed parameters always are but for thousands of recipients. It is what
// age.Decrypt does for such a file (the header's MAC checked by age itself,
// through age.DecryptHeader), without the 64 KiB chunk buffers that
// age.Decrypt allocates per file: the parameters are opened once per message
// on the path every message takes. Errors are age's (NoIdentityMatchError
// for a key that does not match), errMultiChunk, or a failed authentication.
func decryptSeal(ct []byte, identities ...age.Identity) ([]byte, error) {
	// The header ends with its MAC line, "--- <base64>\n"; no other header
	// line starts with "---" ("-> " opens a stanza, the rest is base64).
	i := bytes.Index(ct, []byte("\n--- "))
	if i < 0 {
		return nil, errors.New("no header MAC line")
	}
	j := bytes.IndexByte(ct[i+1:], '\n')
	if j < 0 {
		return nil, errors.New("header MAC line not terminated")
	}
	hdrEnd := i + 1 + j + 1
	fileKey, err := age.DecryptHeader(ct[:hdrEnd], identities...)
	if err != nil {
		return nil, err
	}
	payload := ct[hdrEnd:]
	if len(payload) < payloadNonceSize+chacha20poly1305.Overhead {
		return nil, errors.New("payload too short")
	}
	if len(payload) > payloadNonceSize+payloadChunkSize+chacha20poly1305.Overhead {
		return nil, errMultiChunk
	}
	key, err := hkdf.Key(sha256.New, fileKey, payload[:payloadNonceSize], "payload", chacha20poly1305.KeySize)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.New(key)
	if err != nil {
		return nil, err
	}
	var nonce [chacha20poly1305.NonceSize]byte
	nonce[len(nonce)-1] = 1 // chunk 0, the last one
	plain, err := aead.Open(nil, nonce[:], payload[payloadNonceSize:], nil)
	if err != nil {
		return nil, errors.New("failed to decrypt and authenticate payload chunk")
	}
	return plain, nil
}
