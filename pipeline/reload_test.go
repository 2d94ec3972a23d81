package pipeline_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

// TestReloadAppliesLimitsAndRefusesBadConfigs reloads a running pipeline:
// a configuration that does not validate, or that moves the folders, is
// refused and the old one stays; a valid one changes the host's connection
// cap for the mail that follows.
func TestReloadAppliesLimitsAndRefusesBadConfigs(t *testing.T) {
	// Count sessions in progress at the server, from greeting to the end of
	// the message.
	var mu sync.Mutex
	inFlight, peak := 0, 0
	srv := smtptest.NewServer(t, func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			mu.Lock()
			defer mu.Unlock()
			switch p.Step {
			case smtptest.Mail:
				inFlight++
				peak = max(peak, inFlight)
			case smtptest.AfterDot:
				inFlight--
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		c.MaxThreads = 4
		def := c.Hosts["default"]
		def.MaxConnections = 4
		def.MaxMessagesPerConnection = 1 // a new session per message: the cap is what limits them
		c.Hosts["default"] = def
	})
	env.Start(pipeline.Options{})

	bad := *env.Config
	bad.MaxThreads = 0
	if err := env.Pipeline.Reload(&bad); err == nil || !strings.Contains(err.Error(), "max_threads") {
		t.Errorf("Reload with max_threads 0: %v, want an error naming max_threads", err)
	}
	moved := *env.Config
	moved.QueueDir += "-elsewhere"
	if err := env.Pipeline.Reload(&moved); err == nil || !strings.Contains(err.Error(), "queue_dir") {
		t.Errorf("Reload with another queue_dir: %v, want an error naming queue_dir", err)
	}

	good := *env.Config
	good.Hosts = map[string]pipeline.HostLimits{}
	for k, v := range env.Config.Hosts {
		good.Hosts[k] = v
	}
	lim := good.Hosts["default"]
	lim.MaxConnections = 1
	good.Hosts[srv.Host()] = lim
	if err := env.Pipeline.Reload(&good); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	const n = 12
	for i := range n {
		env.Enqueue(testMessage(i), srv.Params(fmt.Sprintf("user%d@example.org", i)))
	}
	wantAllSent(t, env, n)
	ctx, cancel := context.WithTimeout(context.Background(), pipelinetest.WaitTimeout)
	defer cancel()
	if _, err := srv.WaitMessages(ctx, n); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if peak != 1 {
		t.Errorf("up to %d sessions at once after reloading max_connections 1 for %s", peak, srv.Host())
	}
}

// TestReloadLowersAndRaisesMaxThreads: max_threads lowered by a reload
// and raised again is the raised value. (Raising used to count the workers
// ever started, stopped ones included, and start none.)
func TestReloadLowersAndRaisesMaxThreads(t *testing.T) {
	t.Parallel()
	// Sessions wait at MAIL until want of them are there at once (or the
	// test's time is up): reaching want proves want workers.
	var (
		mu       sync.Mutex
		inMail   int
		peak     int
		want     int
		together = make(chan struct{})
		ctx      = waitCtx(t)
	)
	srv := startServer(t, "127.0.0.5", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step != smtptest.Mail {
				return smtptest.Fault{}
			}
			mu.Lock()
			inMail++
			peak = max(peak, inMail)
			ch := together
			if inMail >= want {
				close(together)
				together = make(chan struct{})
			}
			mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
			}
			mu.Lock()
			inMail--
			mu.Unlock()
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		c.MaxThreads = 4
		c.Hosts["default"] = hostLimits(4)
	})
	env.Start(pipeline.Options{})
	phase := func(threads, n, first int) {
		t.Helper()
		cfg := *env.Config
		cfg.MaxThreads = threads
		if err := env.Pipeline.Reload(&cfg); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		want, peak = threads, 0
		mu.Unlock()
		var names []string
		for i := range n {
			names = append(names, env.Enqueue(testMessage(first+i), srv.Params(fmt.Sprintf("user%d@example.org", first+i))))
		}
		for _, name := range names {
			wantSent(t, env.Wait(name))
		}
		mu.Lock()
		defer mu.Unlock()
		if peak != threads {
			t.Errorf("max_threads %d: up to %d sessions at once, want %d", threads, peak, threads)
		}
	}
	phase(1, 3, 0)
	phase(4, 4, 10)
}

// TestReloadDuringShutdownStartsNoWorkers: a reload that raises max_threads
// while the pipeline shuts down, before or after the Dispatcher has
// stopped, leaves no Sender goroutine behind. (Workers used to be started
// after the Dispatcher had returned, and waited for it for ever.)
func TestReloadDuringShutdownStartsNoWorkers(t *testing.T) {
	// Not parallel: goleak looks at every goroutine of the process. It
	// looks last, once the server is closed too.
	before := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, before) })
	atMail, release := newSignal(), newReleaser()
	srv := startServer(t, "127.0.0.5", func(s *smtptest.Server) {
		s.Fault = stallAt(smtptest.Mail, atMail, release)
	})
	filing, unblock := newSignal(), newReleaser()
	var blocking atomic.Bool
	env := pipelinetest.New(t, func(c *pipeline.Config) { c.MaxThreads = 2 })
	env.Start(pipeline.Options{OnFiled: func(stages.Filed) {
		if blocking.Load() {
			filing.Fire()
			unblock.Wait()
		}
	}})
	defer unblock.Open()
	defer release.Open()
	env.Enqueue(testMessage(1), srv.Params("a@example.org"))
	atMail.await(t, "a session at MAIL")

	blocking.Store(true)
	stopped := make(chan error, 1)
	go func() { stopped <- env.Stop() }()
	raise := func(n int) {
		t.Helper()
		cfg := *env.Config
		cfg.MaxThreads = n
		if err := env.Pipeline.Reload(&cfg); err != nil {
			t.Errorf("Reload: %v", err)
		}
	}
	// The Dispatcher is shutting down, a session still in progress.
	raise(4)
	// The session ends, its message is being filed (and held there), the
	// last worker has stopped and so has the Dispatcher.
	release.Open()
	filing.await(t, "the message being filed")
	if err := srv.WaitIdle(waitCtx(t)); err != nil {
		t.Fatal(err)
	}
	raise(8)
	unblock.Open()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(pipelinetest.WaitTimeout):
		t.Fatal("Run did not return")
	}
}
