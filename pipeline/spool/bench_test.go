package spool_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// The spool's disk work per message, measured. Run it with
//
//	go test -run '^$' -bench . -benchmem ./pipeline/spool
//
// or through "make bench", which puts it in bench/out/results.md.

// BenchmarkSpool measures the spool's disk work for one 4 KiB message, as the
// service does it: "sent" is the claim (a rename), the durable record of the
// server's acceptance (state file, fsync, rename, folder fsync) and the
// filing in Sent (stripped copy, fsync, link, folder fsyncs, removals);
// "parked" is the claim and the move of a surplus message to .deferred/
// (state file, rename, folder fsyncs). Both are bound by fsync latency.
func BenchmarkSpool(b *testing.B) {
	b.Run("sent", func(b *testing.B) {
		benchSpool(b, fileSent)
	})
	// "sent in place" is "sent" for a queue file as Enqueue writes it (the
	// sealed block padded to 4 KiB), opened by the Parser: its Sent copy is
	// the file itself, the block cut off (where the file system can).
	b.Run("sent in place", func(b *testing.B) {
		benchSpoolFiles(b, padded(benchMessage4K()), func(sp *spool.Spool, job *stages.Job) error {
			job.Kind, job.Size, job.Params = stages.KindSealed, int64(len(benchMessage4K())), &queuefile.Params{}
			return fileSent(sp, job)
		})
	})
	b.Run("parked", func(b *testing.B) {
		due := time.Now().Add(time.Hour)
		benchSpool(b, func(sp *spool.Spool, job *stages.Job) error {
			return sp.Defer(job, due)
		})
	})
}

// fileSent files job as a server's 250 does: its acceptance recorded,
// then its Sent copy.
func fileSent(sp *spool.Spool, job *stages.Job) error {
	job.Outcome = stages.Outcome{Verdict: stages.Sent, Attempted: true,
		Rcpts: []stages.RcptResult{{Addr: "user@example.org", Status: stages.RcptDelivered, Code: 250}}}
	if err := sp.RecordAccepted(job); err != nil {
		return err
	}
	_, err := sp.FileSent(job, false)
	return err
}

// padded returns msg under a sealed block as Enqueue writes it (the seal
// is not a real one: the spool does not open it).
func padded(msg []byte) []byte {
	seal := "X-SmtpQ-Sealed: v1\r\n" + strings.Repeat(" "+strings.Repeat("A", 76)+"\r\n", 9)
	return append(queuefile.PadSeal([]byte(seal), "\r\n", queuefile.SealBlock), msg...)
}

func benchSpool(b *testing.B, file func(*spool.Spool, *stages.Job) error) {
	benchSpoolFiles(b, benchMessage4K(), file)
}

// benchSpoolFiles claims b.N files of content msg and files each with file.
func benchSpoolFiles(b *testing.B, msg []byte, file func(*spool.Spool, *stages.Job) error) {
	root := b.TempDir()
	dirs := spool.Dirs{
		Queue: filepath.Join(root, "queue"), Sent: filepath.Join(root, "sent"),
		Undeliverable: filepath.Join(root, "undeliverable"),
	}
	if err := os.MkdirAll(dirs.Queue, 0o750); err != nil {
		b.Fatal(err)
	}
	base := time.Now().Add(-time.Hour).UTC()
	for i := 0; i < b.N; i++ {
		name := base.Add(time.Duration(i)).Format("20060102T150405.000000000Z") + fmt.Sprintf("-b%08d.eml", i)
		if err := os.WriteFile(filepath.Join(dirs.Queue, name), msg, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	sp, err := spool.Open(dirs, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer sp.Close()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	var ferr error
	_, err = sp.Scan(context.Background(), time.Now(), nil, func(job *stages.Job) bool {
		n++
		ferr = file(sp, job)
		return ferr == nil
	})
	b.StopTimer()
	if ferr != nil {
		b.Fatal(ferr)
	}
	if err != nil {
		b.Fatal(err)
	}
	if n != b.N {
		b.Fatalf("claimed %d files, want %d", n, b.N)
	}
}

// benchMessage4K is a plain 4 KiB message (the spool does not look inside).
func benchMessage4K() []byte {
	b := []byte("From: app@example.com\r\nTo: user@example.org\r\nSubject: benchmark\r\n\r\n")
	line := []byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n")
	for len(b) < 4096 {
		b = append(b, line[:min(len(line), 4096-len(b))]...)
	}
	return b
}
