// Package pipelinetest runs a whole smtpq pipeline in temporary folders, for
// tests: of smtpq itself, and of programs that enqueue mail and want to see
// it delivered to a fake SMTP server (package smtptest), as
// net/http/httptest does for HTTP.
//
//	func TestWelcomeMail(t *testing.T) {
//		srv := smtptest.NewServer(t) // started now, closed when the test ends
//		q := pipelinetest.Start(t)   // a running pipeline in temporary folders
//		name := q.Enqueue([]byte("From: a@example.org\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n"), srv.Params())
//		if f := q.Wait(name); f.Verdict != stages.Sent {
//			t.Fatalf("%s: %v", name, f)
//		}
//		if got := len(srv.Messages()); got != 1 {
//			t.Fatalf("server got %d messages", got)
//		}
//	}
//
// Start takes settings (Config for the configuration, Options for a
// clock, fault hooks and the like); New and Env.Start split the two steps
// for a test that must do something in between.
//
// The configuration suits tests: short rescans and idle timeouts, retries
// after zero backoff, three attempts. Change it in New's configure functions.
package pipelinetest

import (
	"bytes"
	"context"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// WaitTimeout bounds every wait of Env; a test that waits longer fails.
// It is generous: it bounds a test that hangs, it is not a speed target,
// and a machine running several test binaries with -race is slow.
var WaitTimeout = 60 * time.Second

// Env is a pipeline in temporary folders.
type Env struct {
	T      testing.TB
	Dir    string           // root of the temporary folders
	Config *pipeline.Config // used by Start; change it before Start
	Queue  *queuefile.Queue // the producer's side
	// Pipeline is the running pipeline, set by Start.
	Pipeline *pipeline.Pipeline

	mu      sync.Mutex
	filed   []stages.Filed
	final   map[string]stages.Filed // by name: sent or failed
	changed chan struct{}

	cancel context.CancelFunc
	done   chan error
}

// New creates the folders, a key pair and a configuration; configure
// functions may change the configuration.
func New(t testing.TB, configure ...func(*pipeline.Config)) *Env {
	t.Helper()
	dir := t.TempDir()
	cfg := pipeline.Defaults()
	cfg.QueueDir = filepath.Join(dir, "queue")
	cfg.SentDir = filepath.Join(dir, "sent")
	cfg.UndeliverableDir = filepath.Join(dir, "undeliverable")
	cfg.IdentityFile = pipeline.StringList{filepath.Join(dir, "keys", "identity.txt")}
	cfg.RecipientFile = filepath.Join(dir, "keys", "recipient.txt")
	cfg.HELO = "pipelinetest.local"
	cfg.MaxThreads = 4
	cfg.ScanInterval = pipeline.Duration(200 * time.Millisecond)
	cfg.Retry = pipeline.RetryConfig{MaxAttempts: 3, MaxAge: pipeline.Duration(time.Hour)}
	cfg.Timeouts = pipeline.TimeoutsConfig{
		Connect: pipeline.Duration(5 * time.Second),
		Command: pipeline.Duration(5 * time.Second),
		Data:    pipeline.Duration(10 * time.Second),
	}
	def := cfg.Hosts["default"]
	def.IdleTimeout = pipeline.Duration(time.Second)
	cfg.Hosts["default"] = def
	cfg.Log.Level = "debug"
	cfg.Path = filepath.Join(dir, "smtpq.yaml")
	for _, f := range configure {
		f(&cfg)
	}
	if _, err := queuefile.GenerateKeys(cfg.IdentityFile[0], cfg.RecipientFile); err != nil {
		t.Fatalf("pipelinetest: %v", err)
	}
	rcpts, err := queuefile.LoadRecipients(cfg.RecipientFile)
	if err != nil {
		t.Fatalf("pipelinetest: %v", err)
	}
	if err := os.MkdirAll(cfg.QueueDir, 0o750); err != nil {
		t.Fatalf("pipelinetest: %v", err)
	}
	return &Env{
		T: t, Dir: dir, Config: &cfg,
		Queue:   &queuefile.Queue{Dir: cfg.QueueDir, Recipients: rcpts},
		final:   map[string]stages.Filed{},
		changed: make(chan struct{}),
	}
}

// A Setting changes what Start starts: see Config and Options.
type Setting func(*pipeline.Config, *pipeline.Options)

// Config returns a Setting that applies configure to the configuration.
func Config(configure func(*pipeline.Config)) Setting {
	return func(c *pipeline.Config, _ *pipeline.Options) { configure(c) }
}

// Options returns a Setting that runs the pipeline with opts (a clock,
// fault hooks, an OnFiled of the test's own...).
func Options(opts pipeline.Options) Setting {
	return func(_ *pipeline.Config, o *pipeline.Options) { *o = opts }
}

// Start returns a pipeline running in temporary folders (New, then
// Env.Start), changed by settings. It stops when the test ends.
func Start(t testing.TB, settings ...Setting) *Env {
	t.Helper()
	var opts pipeline.Options
	e := New(t, func(c *pipeline.Config) {
		for _, s := range settings {
			s(c, &opts)
		}
	})
	e.Start(opts)
	return e
}

// NewShared returns an Env for a second service instance on the folders and
// keys of cfg, the Config of another Env: the two pipelines then share one
// queue, as two smtpq processes may. The configuration is copied before the
// configure functions change it, so the other Env's stays as it was. Dir is
// the folder holding cfg's queue folder.
func NewShared(t testing.TB, cfg *pipeline.Config, configure ...func(*pipeline.Config)) *Env {
	t.Helper()
	c := *cfg
	c.IdentityFile = slices.Clone(cfg.IdentityFile)
	c.Relays = maps.Clone(cfg.Relays)
	c.Hosts = maps.Clone(cfg.Hosts)
	for _, f := range configure {
		f(&c)
	}
	rcpts, err := queuefile.LoadRecipients(c.RecipientFile)
	if err != nil {
		t.Fatalf("pipelinetest: %v", err)
	}
	return &Env{
		T: t, Dir: filepath.Dir(c.QueueDir), Config: &c,
		Queue:   &queuefile.Queue{Dir: c.QueueDir, Recipients: rcpts},
		final:   map[string]stages.Filed{},
		changed: make(chan struct{}),
	}
}

// Start runs the pipeline in the background with opts (a test logger and
// the Env's filing hook are added). The pipeline is stopped when the test
// ends; Stop stops it earlier.
func (e *Env) Start(opts pipeline.Options) {
	e.T.Helper()
	if opts.Logger == nil {
		opts.Logger = zaptest.NewLogger(e.T)
	}
	user := opts.OnFiled
	opts.OnFiled = func(f stages.Filed) {
		// The test's own hook first: what Wait and WaitFor see has been
		// through it (an index it feeds is up to date when they return).
		if user != nil {
			user(f)
		}
		e.record(f)
	}
	if opts.ShutdownGrace == 0 {
		opts.ShutdownGrace = 5 * time.Second
	}
	p, err := pipeline.New(e.Config, opts)
	if err != nil {
		e.T.Fatalf("pipelinetest: %v", err)
	}
	e.Pipeline = p
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.done = make(chan error, 1)
	go func() { e.done <- p.Run(ctx) }()
	e.T.Cleanup(func() {
		if err := e.Stop(); err != nil {
			e.T.Errorf("pipelinetest: stopping: %v", err)
		}
	})
}

// Stop cancels the pipeline and waits for Run to return. It is safe to call
// more than once.
func (e *Env) Stop() error {
	if e.cancel == nil {
		return nil
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.done:
		return err
	case <-time.After(WaitTimeout):
		return context.DeadlineExceeded
	}
}

func (e *Env) record(f stages.Filed) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.filed = append(e.filed, f)
	if f.Err == nil && (f.Verdict == stages.Sent || f.Verdict == stages.Failed) {
		e.final[f.Job.Name] = f
	}
	close(e.changed)
	e.changed = make(chan struct{})
}

// Enqueue queues msg with p and returns the file name.
func (e *Env) Enqueue(msg []byte, p queuefile.Params) string {
	e.T.Helper()
	name, err := e.Queue.Enqueue(bytes.NewReader(msg), p)
	if err != nil {
		e.T.Fatalf("pipelinetest: enqueue: %v", err)
	}
	return name
}

// Filed returns every filing so far, in order (deferrals included).
func (e *Env) Filed() []stages.Filed {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]stages.Filed(nil), e.filed...)
}

// WaitFor waits until cond, called with every filing so far, is true, and
// fails the test after WaitTimeout.
func (e *Env) WaitFor(what string, cond func([]stages.Filed) bool) {
	e.T.Helper()
	deadline := time.NewTimer(WaitTimeout)
	defer deadline.Stop()
	for {
		e.mu.Lock()
		ok := cond(e.filed)
		ch := e.changed
		e.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			e.T.Fatalf("pipelinetest: timed out after %v waiting for %s", WaitTimeout, what)
		}
	}
}

// Wait waits until the named message is filed for good (sent or failed:
// the Verdict says which) and returns that filing.
func (e *Env) Wait(name string) stages.Filed {
	e.T.Helper()
	var f stages.Filed
	e.WaitFor("message "+name+" to be sent or failed", func([]stages.Filed) bool {
		var ok bool
		f, ok = e.final[name]
		return ok
	})
	return f
}

// WaitFinal waits until n messages in all are filed for good and returns
// them by name.
func (e *Env) WaitFinal(n int) map[string]stages.Filed {
	e.T.Helper()
	e.WaitFor("messages to be sent or failed", func([]stages.Filed) bool { return len(e.final) >= n })
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]stages.Filed, len(e.final))
	for k, v := range e.final {
		out[k] = v
	}
	return out
}

// Files lists the regular files in a folder, by name.
func Files(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("pipelinetest: %v", err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() {
			names = append(names, e.Name())
		}
	}
	return names
}
