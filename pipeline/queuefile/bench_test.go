package queuefile_test

// Micro-benchmarks of the queue-file format (issue 5, part 6). Run them with
//
//	go test -run '^$' -bench . -benchmem ./queuefile
//
// or through "make bench", which puts them in bench/out/results.md.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"testing"

	"filippo.io/age"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// benchMessage returns a message of exactly size bytes: a few header fields
// and a body of 76-character CRLF lines, like a plain text mail.
func benchMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: App <app@example.com>\r\nTo: user@example.org\r\nSubject: benchmark message\r\n" +
		"Date: Fri, 27 Nov 2026 15:38:26 +0000\r\nMessage-ID: <bench@example.com>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	line := []byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n")
	for b.Len() < size {
		b.Write(line[:min(len(line), size-b.Len())])
	}
	return b.Bytes()
}

// benchSealed seals a message of size bytes to a fresh key and returns the
// queue file and the identity that opens it.
func benchSealed(tb testing.TB, size int) ([]byte, age.Identity) {
	tb.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		tb.Fatal(err)
	}
	msg := benchMessage(size)
	sum := sha256.Sum256(msg)
	p := queuefile.Params{
		Host: "127.0.0.1", Port: 2525, TLS: queuefile.TLSNone,
		From: "app@example.com", To: []string{"user@example.org"},
		Digest: hex.EncodeToString(sum[:]), Size: int64(len(msg)),
	}
	seal, err := queuefile.SealHeader(&p, "\r\n", id.Recipient())
	if err != nil {
		tb.Fatal(err)
	}
	return append(seal, msg...), id
}

// BenchmarkOpen is what the Parser does for each file: decrypt the seal
// (X25519 + ChaCha20-Poly1305), decode the parameters, hash the message.
func BenchmarkOpen(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		b.Run(benchSizeName(size), func(b *testing.B) {
			file, id := benchSealed(b, size)
			b.SetBytes(int64(len(file)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := queuefile.Open(benchReader(file), id); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStripSealed is what the Sender (to the server) and the Archiver
// (to Sent) each do once per message: copy the file without the seal.
func BenchmarkStripSealed(b *testing.B) {
	for _, size := range []int{4 << 10, 1 << 20} {
		b.Run(benchSizeName(size), func(b *testing.B) {
			file, _ := benchSealed(b, size)
			var wire benchWire
			b.SetBytes(int64(len(file)))
			b.ReportAllocs()
			for b.Loop() {
				if err := queuefile.StripSealed(&wire, benchReader(file)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSealHeader is the producer's encryption cost per message (the
// rest of Enqueue is file writes and two fsyncs).
func BenchmarkSealHeader(b *testing.B) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		b.Fatal(err)
	}
	p := queuefile.Params{
		Host: "127.0.0.1", Port: 2525, TLS: queuefile.TLSNone,
		From: "app@example.com", To: []string{"user@example.org"},
		Digest: hex.EncodeToString(make([]byte, 32)), Size: 4096,
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := queuefile.SealHeader(&p, "\r\n", id.Recipient()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEnqueue is a producer's whole Enqueue of a 4 KiB message: seal,
// write under .tmp, fsync, rename, fsync the folder. It is bound by the
// disk's fsync latency.
func BenchmarkEnqueue(b *testing.B) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		b.Fatal(err)
	}
	q := &queuefile.Queue{Dir: b.TempDir(), Recipients: []age.Recipient{id.Recipient()}}
	msg := benchMessage(4 << 10)
	p := queuefile.Params{Host: "127.0.0.1", Port: 2525, TLS: queuefile.TLSNone, From: "app@example.com", To: []string{"user@example.org"}}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := q.Enqueue(bytes.NewReader(msg), p); err != nil {
			b.Fatal(err)
		}
	}
}

// benchReader reads b the way the service reads a file: through Read only,
// so that io.Copy cannot hand the whole slice over at once (bytes.Reader's
// WriteTo would make the copy free and the figures meaningless).
func benchReader(b []byte) io.Reader { return struct{ io.Reader }{bytes.NewReader(b)} }

// benchWire stands for the SMTP connection or the Sent file: it takes
// every Write (no ReadFrom shortcut) and counts the bytes.
type benchWire struct{ n int64 }

func (w *benchWire) Write(b []byte) (int, error) {
	w.n += int64(len(b))
	return len(b), nil
}

func benchSizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
