package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline"
)

// The Archiver's per-message info lines are buffered; any other line is
// written at once, with what was buffered before it, and closing the log
// writes the rest. Lines are never sampled away.
func TestLoggerBuffersPerMessageLines(t *testing.T) {
	// No timed flush during the test, however slow the machine.
	defer func(d time.Duration) { logFlush = d }(logFlush)
	logFlush = time.Hour
	cfg := pipeline.Defaults()
	cfg.Log.Dir = t.TempDir()
	cfg.Log.Format = "json"
	log, _, closeLog, err := newLogger(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(cfg.Log.Dir, "smtpq.log")
	read := func() string {
		b, _ := os.ReadFile(file)
		return string(b)
	}
	arch := log.Named(pipeline.ArchiverLogger)
	for range 300 {
		arch.Info("sent")
	}
	if n := strings.Count(read(), `"sent"`); n != 0 {
		t.Fatalf("%d per-message lines written at once, want them buffered", n)
	}
	log.Named("scanner").Info("queue scanned")
	got := read()
	if n := strings.Count(got, `"msg":"sent"`); n != 300 || !strings.HasSuffix(strings.TrimSpace(got), `"msg":"queue scanned"}`) {
		t.Fatalf("after another line: %d per-message lines (want all 300, unsampled) and then it; last: %q", n, got[strings.LastIndex(strings.TrimSpace(got), "\n")+1:])
	}
	arch.Info("sent")
	closeLog()
	if n := strings.Count(read(), `"msg":"sent"`); n != 301 {
		t.Fatalf("after closing the log: %d per-message lines, want 301", n)
	}
}
