package queuefile

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"filippo.io/age"
)

// TestFastX25519IdentityMatchesAge checks the X25519 identity against
// age's own: the same public key, it opens what age seals to it, it refuses
// what age seals to another key with ErrIncorrectIdentity, and a damaged
// stanza is an error, never a wrong file key.
func TestFastX25519IdentityMatchesAge(t *testing.T) {
	for range 20 {
		id, err := age.GenerateX25519Identity()
		if err != nil {
			t.Fatal(err)
		}
		other, _ := age.GenerateX25519Identity()
		fast, err := fastIdentity(id)
		if err != nil {
			t.Fatal(err)
		}
		x := fast.(*x25519Identity)
		hrp, pub, err := bech32Decode(id.Recipient().String())
		if err != nil || hrp != "age" || !bytes.Equal(pub, x.pub) {
			t.Fatalf("public key %x (%s, %v), want the recipient's %x", x.pub, hrp, err, pub)
		}

		plain := []byte(`{"v":1,"host":"mail.example.com"}`)
		var ct bytes.Buffer
		w, err := age.Encrypt(&ct, id.Recipient())
		if err != nil {
			t.Fatal(err)
		}
		w.Write(plain)
		w.Close()
		r, err := age.Decrypt(bytes.NewReader(ct.Bytes()), fast)
		if err != nil {
			t.Fatalf("decrypt with the fast identity: %v", err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("decrypted %q, %v", got, err)
		}

		ct.Reset()
		w, _ = age.Encrypt(&ct, other.Recipient())
		w.Write(plain)
		w.Close()
		_, err = age.Decrypt(bytes.NewReader(ct.Bytes()), fast)
		var nomatch *age.NoIdentityMatchError
		if !errors.As(err, &nomatch) {
			t.Fatalf("file for another key: %v, want NoIdentityMatchError", err)
		}
	}
}

func TestFastX25519RefusesDamagedStanzas(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	fast, _ := fastIdentity(id)
	good := &age.Stanza{Type: "X25519", Args: []string{"x"}, Body: make([]byte, 32)}
	for name, s := range map[string]*age.Stanza{
		"no args":        {Type: "X25519", Body: make([]byte, 32)},
		"bad share":      good,
		"short body":     {Type: "X25519", Args: []string{"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, Body: make([]byte, 31)},
		"low-order peer": {Type: "X25519", Args: []string{"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, Body: make([]byte, 32)},
	} {
		if key, err := fast.Unwrap([]*age.Stanza{s}); err == nil || key != nil {
			t.Errorf("%s: key %x, err %v: want an error", name, key, err)
		}
	}
	if _, err := fast.Unwrap([]*age.Stanza{{Type: "scrypt", Args: []string{"a", "b"}}}); !errors.Is(err, age.ErrIncorrectIdentity) {
		t.Errorf("another stanza type: %v, want ErrIncorrectIdentity", err)
	}
}

func TestBech32Decode(t *testing.T) {
	// BIP 173 test vectors (valid), then broken ones.
	for _, s := range []string{"A12UEL5L", "a12uel5l", "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw"} {
		if _, _, err := bech32Decode(s); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	for _, s := range []string{"A12UeL5L", "a12uel5m", "pzry9x0s0muk", "1pzry9x0s0muk", "x1b4n0q5v"} {
		if _, _, err := bech32Decode(s); err == nil {
			t.Errorf("%s: decoded, want an error", s)
		}
	}
}
