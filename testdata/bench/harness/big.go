//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// bigBench: one message of o.bigMB MiB into an idle service; the growth of
// its peak RSS over the idle peak.
func bigBench(ctx context.Context, o *options, k *keys, rep *report) error {
	d, err := newSpoolDirs(o.work, "big")
	if err != nil {
		return err
	}
	defer os.RemoveAll(d.root)
	kind := "smtp-sink"
	if !haveSmtpSink() {
		kind = "smtptest" // holds the message in the harness's memory, not the service's
	}
	sk, err := startSink(ctx, kind, d.root, "127.0.0.1")
	if err != nil {
		return err
	}
	defer sk.close()
	svc, err := startService(o, d, k, svcConfig{})
	if err != nil {
		return err
	}
	defer svc.stop(time.Minute)
	if err := svc.waitReady(ctx); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(time.Second):
	}
	idle := svc.status("VmHWM")

	size := int64(o.bigMB) << 20
	name, err := queuefile.NewName(time.Now())
	if err != nil {
		return err
	}
	tmp := filepath.Join(d.queue, queuefile.TmpDir, name)
	if err := writeBig(filepath.Join(d.root, "big.body"), tmp, size, sk, k); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(d.queue, name)); err != nil {
		return err
	}
	t0 := time.Now()
	if _, err := waitFiles(ctx, svc.proc, d, nil, 1, 50*time.Millisecond, 5*time.Minute); err != nil {
		return err
	}
	dur := lastChange(d.sent, nil).Sub(t0)
	peak := svc.status("VmHWM")
	growth := peak - idle
	rep.add(row{bench: fmt.Sprintf("Big message: one of %d MiB, peak RSS growth over idle", o.bigMB), measured: mb(growth),
		baseline: "idle peak " + mb(idle), target: "< 32 MB", result: verdict(growth < 32*1024)})
	rep.detail(fmt.Sprintf("Big message (%d MiB, %s): sent and filed in %v (%.0f MB/s); peak RSS %s, idle peak %s",
		o.bigMB, kind, dur.Round(time.Millisecond), float64(size)/(1<<20)/dur.Seconds(), mb(peak), mb(idle)))
	logf("  big message: %v, peak RSS %s (idle %s)", dur.Round(time.Millisecond), mb(peak), mb(idle))
	return nil
}

// writeBig writes a sealed message of size bytes (body lines of 76
// characters) to path, through a body file to know the digest first, and
// fsyncs it. Memory use does not depend on size.
func writeBig(bodyPath, path string, size int64, sk sink, k *keys) error {
	bf, err := os.Create(bodyPath)
	if err != nil {
		return err
	}
	defer os.Remove(bodyPath)
	defer bf.Close()
	h := sha256.New()
	w := bufio.NewWriterSize(io.MultiWriter(bf, h), 1<<20)
	hdr := message(0, "")
	w.Write(hdr)
	n := int64(len(hdr))
	line := []byte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ABCDEFGHIJKL\r\n")
	for n < size {
		k := min(int64(len(line)), size-n)
		w.Write(line[:k])
		n += k
	}
	if err := w.Flush(); err != nil {
		return err
	}
	p := queuefile.Params{Host: sk.host(), Port: sk.port(), TLS: queuefile.TLSNone, From: envFrom, To: []string{envTo},
		Digest: hex.EncodeToString(h.Sum(nil)), Size: n}
	seal, err := queuefile.SealHeader(&p, "\r\n", k.recipients...)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(seal); err != nil {
		return err
	}
	if _, err := bf.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if _, err := io.Copy(f, bf); err != nil {
		return err
	}
	return f.Sync()
}
