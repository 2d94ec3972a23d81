package queuefile

import (
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"filippo.io/age"
	"golang.org/x/crypto/chacha20poly1305"
)

// x25519Identity opens age's X25519 recipient stanzas as the age format
// specifies (age-encryption.org/v1): the file key is wrapped with
// ChaCha20-Poly1305 under HKDF-SHA-256(X25519(identity, share), salt = share
// || our public key, info = "age-encryption.org/v1/X25519"), zero nonce.
//
// It exists for speed: age's own X25519Identity derives its public key
// anew, a second scalar multiplication, for every file it opens; this one
// keeps it. Unsealing is most of the Parser's work.
type x25519Identity struct {
	priv      *ecdh.PrivateKey
	pub       []byte
	recipient string // the public key, "age1..." (for route tags)
}

var _ age.Identity = (*x25519Identity)(nil)

const x25519Label = "age-encryption.org/v1/X25519"

// fastIdentity returns an x25519Identity for an age X25519 identity, or id
// itself for other kinds.
func fastIdentity(id age.Identity) (age.Identity, error) {
	x, ok := id.(*age.X25519Identity)
	if !ok {
		return id, nil
	}
	hrp, data, err := bech32Decode(x.String())
	if err != nil {
		return nil, err
	}
	if hrp != "age-secret-key-" || len(data) != 32 {
		return nil, errors.New("not an age X25519 identity")
	}
	priv, err := ecdh.X25519().NewPrivateKey(data)
	if err != nil {
		return nil, err
	}
	return &x25519Identity{priv: priv, pub: priv.PublicKey().Bytes(), recipient: x.Recipient().String()}, nil
}

// Unwrap implements age.Identity.
func (i *x25519Identity) Unwrap(stanzas []*age.Stanza) ([]byte, error) {
	for _, s := range stanzas {
		if s.Type != "X25519" {
			continue
		}
		if len(s.Args) != 1 {
			return nil, errors.New("invalid X25519 recipient block")
		}
		share, err := base64.RawStdEncoding.Strict().DecodeString(s.Args[0])
		if err != nil || len(share) != 32 {
			return nil, errors.New("invalid X25519 recipient block")
		}
		if len(s.Body) != 32 {
			return nil, errors.New("invalid X25519 recipient block")
		}
		peer, err := ecdh.X25519().NewPublicKey(share)
		if err != nil {
			return nil, errors.New("invalid X25519 recipient block")
		}
		shared, err := i.priv.ECDH(peer)
		if err != nil {
			return nil, errors.New("invalid X25519 recipient block") // low-order point
		}
		salt := make([]byte, 0, 64)
		salt = append(append(salt, share...), i.pub...)
		key, err := hkdf.Key(sha256.New, shared, salt, x25519Label, chacha20poly1305.KeySize)
		if err != nil {
			return nil, err
		}
		aead, err := chacha20poly1305.New(key)
		if err != nil {
			return nil, err
		}
		fileKey, err := aead.Open(nil, make([]byte, chacha20poly1305.NonceSize), s.Body, nil)
		if err != nil {
			continue // sealed to another key
		}
		return fileKey, nil
	}
	return nil, age.ErrIncorrectIdentity
}

const bech32Charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"

// bech32Decode decodes a Bech32 string (BIP 173, without its length limit,
// as age uses it) into its lower-case human-readable part and data bytes.
func bech32Decode(s string) (string, []byte, error) {
	if strings.ToLower(s) != s && strings.ToUpper(s) != s {
		return "", nil, errors.New("bech32: mixed case")
	}
	s = strings.ToLower(s)
	sep := strings.LastIndexByte(s, '1')
	if sep < 1 || sep+7 > len(s) {
		return "", nil, errors.New("bech32: no separator or checksum")
	}
	hrp := s[:sep]
	values := make([]byte, 0, len(s)-sep-1)
	for _, c := range s[sep+1:] {
		v := strings.IndexRune(bech32Charset, c)
		if v < 0 {
			return "", nil, fmt.Errorf("bech32: invalid character %q", c)
		}
		values = append(values, byte(v))
	}
	if bech32Polymod(append(bech32HRPExpand(hrp), values...)) != 1 {
		return "", nil, errors.New("bech32: bad checksum")
	}
	data, err := convertBits(values[:len(values)-6], 5, 8)
	return hrp, data, err
}

func bech32Polymod(values []byte) uint32 {
	gen := [5]uint32{0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3}
	chk := uint32(1)
	for _, v := range values {
		top := chk >> 25
		chk = (chk&0x1ffffff)<<5 ^ uint32(v)
		for i := range 5 {
			if (top>>i)&1 == 1 {
				chk ^= gen[i]
			}
		}
	}
	return chk
}

func bech32HRPExpand(hrp string) []byte {
	out := make([]byte, 0, 2*len(hrp)+1)
	for i := 0; i < len(hrp); i++ {
		out = append(out, hrp[i]>>5)
	}
	out = append(out, 0)
	for i := 0; i < len(hrp); i++ {
		out = append(out, hrp[i]&31)
	}
	return out
}

// convertBits regroups 5-bit values into bytes; leftover bits must be zero
// padding of fewer than 5 bits.
func convertBits(in []byte, from, to uint) ([]byte, error) {
	var acc, bits uint
	out := make([]byte, 0, len(in)*int(from)/int(to))
	maxv := uint(1)<<to - 1
	for _, v := range in {
		acc = acc<<from | uint(v)
		bits += from
		for bits >= to {
			bits -= to
			out = append(out, byte(acc>>bits&maxv))
		}
	}
	if bits >= from || acc<<(to-bits)&maxv != 0 {
		return nil, errors.New("bech32: bad padding")
	}
	return out, nil
}
