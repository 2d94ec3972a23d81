package queuefile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"filippo.io/age"
)

// ageFile encrypts plain to id's recipient with age itself.
func ageFile(tb testing.TB, id *age.X25519Identity, plain []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w, err := age.Encrypt(&buf, id.Recipient())
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write(plain); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

// ageDecrypt is the reference: age.Decrypt and read it all.
func ageDecrypt(ct []byte, ids ...age.Identity) ([]byte, error) {
	r, err := age.Decrypt(bytes.NewReader(ct), ids...)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// decryptSeal agrees with age.Decrypt: same plaintext for every size up to
// one chunk, errMultiChunk beyond, and it opens with the service's own
// X25519 identity as with age's.
func TestDecryptSealMatchesAge(t *testing.T) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	fast, err := fastIdentity(id)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, 100, 4096, payloadChunkSize - 1, payloadChunkSize, payloadChunkSize + 1, 3 * payloadChunkSize} {
		plain := bytes.Repeat([]byte{byte(n)}, n)
		ct := ageFile(t, id, plain)
		for _, ident := range []age.Identity{id, fast} {
			got, err := decryptSeal(ct, ident)
			if n > payloadChunkSize {
				if !errors.Is(err, errMultiChunk) {
					t.Fatalf("%d bytes: %v, want errMultiChunk", n, err)
				}
				continue
			}
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("%d bytes with %T: %d bytes back, err %v", n, ident, len(got), err)
			}
		}
	}
}

// Every one-byte change anywhere in a file, and every truncation, fails
// decryptSeal exactly when it fails age.Decrypt; a wrong key is age's
// NoIdentityMatchError.
func TestDecryptSealRejectsWhatAgeRejects(t *testing.T) {
	id, _ := age.GenerateX25519Identity()
	other, _ := age.GenerateX25519Identity()
	ct := ageFile(t, id, []byte(`{"v":1,"host":"smtp.example.org"}`))
	check := func(what string, b []byte) {
		t.Helper()
		want, werr := ageDecrypt(b, id)
		got, gerr := decryptSeal(b, id)
		if errors.Is(gerr, errMultiChunk) {
			return // a mangled length: age.Decrypt decides (OpenSeal falls back)
		}
		if (werr == nil) != (gerr == nil) || !bytes.Equal(want, got) {
			t.Fatalf("%s: age says %q, %v; decryptSeal says %q, %v", what, want, werr, got, gerr)
		}
	}
	for i := range ct {
		b := bytes.Clone(ct)
		b[i] ^= 0x01
		check(fmt.Sprintf("byte %d flipped", i), b)
	}
	for n := range len(ct) {
		check("truncated", ct[:n])
	}
	check("extra byte", append(bytes.Clone(ct), 'x'))
	var nomatch *age.NoIdentityMatchError
	if _, err := decryptSeal(ct, other); !errors.As(err, &nomatch) {
		t.Fatalf("wrong key: %v, want age.NoIdentityMatchError", err)
	}
}

func BenchmarkDecryptSeal(b *testing.B) {
	id, _ := age.GenerateX25519Identity()
	fast, _ := fastIdentity(id)
	ct := ageFile(b, id, bytes.Repeat([]byte("x"), 300))
	b.Run("decryptSeal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decryptSeal(ct, fast); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("age.Decrypt", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := decryptStream(ct, fast); err != nil {
				b.Fatal(err)
			}
		}
	})
}
