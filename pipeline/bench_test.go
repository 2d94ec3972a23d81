package pipeline_test

// BenchmarkDrain is the in-process drain of issue 5: a backlog of b.N queued
// 4 KiB messages, queued before the pipeline starts, sent to the fake SMTP
// server of package smtptest; the clock runs from Start until the last one is
// filed in Sent. It exists to be profiled (the service has no pprof
// endpoint):
//
//	go test -run '^$' -bench Drain/cap=2 -benchtime 5000x \
//	    -cpuprofile cpu.prof -memprofile mem.prof ./pipeline
//	go tool pprof -top cpu.prof
//
// The whole-process drain of the real binary, against a bare client and
// Postfix, is "make bench" (testdata/bench).

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

func BenchmarkDrain(b *testing.B) {
	for _, conns := range []int{2, 8} {
		b.Run(fmt.Sprintf("cap=%d", conns), func(b *testing.B) { benchDrain(b, conns) })
	}
}

func benchDrain(b *testing.B, conns int) {
	srv := smtptest.NewServer(b)
	env := pipelinetest.New(b, func(c *pipeline.Config) {
		// As the service runs it (pipeline.Defaults), but with the
		// connection cap under test: max_threads = max_connections.
		c.MaxThreads = conns
		def := pipeline.Defaults().Hosts["default"]
		def.MaxConnections = conns
		c.Hosts["default"] = def
		c.ScanInterval = pipeline.Defaults().ScanInterval
		c.Log.Level = "info"
	})
	benchFillQueue(b, env, srv, b.N)

	var sent, other atomic.Int64
	done := make(chan struct{})
	onFiled := func(f stages.Filed) {
		if f.Verdict == stages.Sent && f.Err == nil {
			if sent.Add(1) == int64(b.N) {
				close(done)
			}
			return
		}
		if f.Verdict != stages.Parked && f.Verdict != stages.Returned {
			other.Add(1)
		}
	}
	timeout := time.Minute + time.Duration(b.N)*20*time.Millisecond
	b.SetBytes(4 << 10)
	b.ReportAllocs()
	b.ResetTimer()
	env.Start(pipeline.Options{Logger: benchLogger(), OnFiled: onFiled})
	select {
	case <-done:
	case <-time.After(timeout):
		b.Fatalf("after %v: %d of %d messages sent, %d otherwise filed", timeout, sent.Load(), b.N, other.Load())
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
	if n := other.Load(); n > 0 {
		b.Errorf("%d messages were not sent (deferred or failed)", n)
	}
	if err := env.Stop(); err != nil {
		b.Fatal(err)
	}
}

// benchFillQueue writes n queue files for srv straight into the queue folder:
// one 4 KiB message sealed once, copied under n names. Identical content is
// fine for a drain, and skipping Enqueue's two fsyncs per file keeps the
// setup short.
func benchFillQueue(b *testing.B, env *pipelinetest.Env, srv *smtptest.Server, n int) {
	b.Helper()
	msg := benchDrainMessage()
	sum := sha256.Sum256(msg)
	// SealHeader, unlike Enqueue, reads no sender from the message.
	p := srv.Params("user@example.org")
	p.From, p.Digest, p.Size = "app@example.com", hex.EncodeToString(sum[:]), int64(len(msg))
	seal, err := queuefile.SealHeader(&p, "\r\n", env.Queue.Recipients...)
	if err != nil {
		b.Fatal(err)
	}
	file := append(seal, msg...)
	t := time.Now().Add(-time.Hour)
	for i := range n {
		name, err := queuefile.NewName(t.Add(time.Duration(i) * time.Microsecond))
		if err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(env.Config.QueueDir, name), file, 0o600); err != nil {
			b.Fatal(err)
		}
	}
}

// benchDrainMessage is a plain 4 KiB message.
func benchDrainMessage() []byte {
	m := []byte("From: App <app@example.com>\r\nTo: user@example.org\r\nSubject: drain benchmark\r\n" +
		"Message-ID: <drain@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	line := []byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n")
	for len(m) < 4<<10 {
		m = append(m, line[:min(len(line), 4<<10-len(m))]...)
	}
	return m
}

// benchLogger logs as "smtpq run" does by default (console, info level,
// with the caller), into nothing: one line per message is part of the cost.
func benchLogger() *zap.Logger {
	ec := zap.NewDevelopmentEncoderConfig()
	ec.EncodeLevel = zapcore.CapitalLevelEncoder
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(ec), zapcore.AddSync(io.Discard), zapcore.InfoLevel)
	return zap.New(core, zap.AddCaller())
}
