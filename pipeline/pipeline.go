// Package pipeline wires smtpq's five stages into the running service and is
// the API for embedding it.
//
// The flow, for every file dropped into queue_dir:
//
//		Scanner ──claimed──▶ Parser ──parsed──▶ Dispatcher ◀──requests── Sender workers
//		   │                    │                   │                       │
//		   └────────────────────┴──── fail/park ────┴──────── outcomes ─────┴──▶ Archiver
//
//	 1. The Scanner watches queue_dir (fsnotify plus a periodic rescan) and
//	    claims each .eml file by renaming it into its own .active/<instance>
//	    folder; a rename that loses a race means another instance has it. At
//	    start it returns to the queue what dead instances left claimed. Due
//	    files in .deferred/ are claimed the same way.
//	 2. The Parser opens the seal, checks the digest, resolves relay profiles
//	    and validates everything. A file that fails goes straight to the
//	    Archiver, with its reason, as "invalid"; one not yet due is parked.
//	 3. The Dispatcher keeps per-host queues and hands jobs to Sender workers
//	    while keeping max_threads (one worker per session), each host's
//	    max_connections and rate, and a circuit breaker per host. A slow host
//	    never holds up another: its surplus is parked, memory stays bounded.
//	 4. Each Sender worker owns at most one SMTP session, reuses it for the next
//	    job with the same route (RSET between messages) up to the host's
//	    max_messages_per_connection and idle_timeout, and records per-recipient
//	    results and a redacted transcript. The server's acceptance of the data
//	    is written to disk before anything else. A panic while a worker
//	    handles a message fails that message (deferred, logged with the
//	    stack, shown by /healthz) and the worker goes on.
//	 5. The Archiver files each outcome: Sent (sealed header removed),
//	    Undeliverable with <name>.xml, .deferred/ with backoff, or back to the
//	    queue. It runs until every stage upstream has stopped.
//
// Every goroutine belongs to Run, which returns only when all stages have
// stopped. Cancelling Run's context is the first phase of shutdown: the
// Scanner stops claiming, queued jobs go back to the queue, and sessions in
// progress get Options.ShutdownGrace to finish before their connections are
// closed (the second phase).
package pipeline

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"filippo.io/age"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// Options are the dependencies of a pipeline that tests and embedders may
// replace. The zero value means: the real network, the real clock, no log.
type Options struct {
	Logger *zap.Logger
	Dial   stages.DialFunc
	Clock  stages.Clock
	// ShutdownGrace is how long sessions in progress may take to finish
	// after Run's context is cancelled. Default 30s.
	ShutdownGrace time.Duration
	// OnFiled is called after each message is filed (tests, metrics).
	OnFiled func(stages.Filed)
	// Crash, if set, is called at named points of the pipeline (see
	// spool.Spool.Crash and stages.Sender.Crash), for crash tests.
	Crash func(point string)
	// SyncFault, if set, is asked before each fsync the spool makes, with
	// the path of the file or folder; an error it returns is that fsync's
	// failure (see spool.Spool.SyncFault). For fault tests.
	SyncFault func(path string) error
	// TLSConfig, if set, is the base TLS configuration for connections to
	// SMTP servers (tests use it to trust a test CA). tls.ca_file adds to it.
	TLSConfig *tls.Config
	// NoPipelining sends SMTP commands one at a time even to servers that
	// offer PIPELINING (RFC 2920), which smtpq otherwise uses. For tests,
	// and for a server that offers it but gets it wrong.
	NoPipelining bool
	// Version is the service's version, shown by the web console.
	Version string
}

// Pipeline is the mail queue service. Create it with New, start it with Run.
type Pipeline struct {
	opts       Options
	log        *zap.Logger
	identities []age.Identity
	tlsConfig  *tls.Config
	live       atomic.Pointer[settings] // replaced by Reload

	nodes atomic.Int32 // live nodes of the cluster sharing the queue; 0: no cluster

	mu          sync.Mutex // guards running, metricsAddr and consoleAddr
	running     *running   // set while Run runs
	metricsAddr net.Addr   // where metrics are served, while Run runs
	consoleAddr net.Addr   // where the web console is served, while Run runs
}

// MetricsAddr returns the address the metrics and health endpoint listens
// on while Run runs (useful with metrics.listen "127.0.0.1:0"), or nil.
func (p *Pipeline) MetricsAddr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.metricsAddr
}

// settings are what Reload may change; stages read them through p.live.
type settings struct {
	cfg       *Config
	passwords map[string]queuefile.Secret // relay name -> password
}

// running is what Reload needs to reach the stages of a running pipeline.
type running struct {
	controls  chan<- stages.HostControl
	finished  <-chan struct{}
	archiver  *stages.Archiver
	startWork func(n int) // starts n more Sender workers: only as many as the Dispatcher counted in
	nextID    int         // the id of the next Sender worker
}

// New checks the configuration, loads the keys and relay passwords and
// creates the spool folders. It starts nothing. The pipeline keeps a copy
// of cfg with every enumerated value turned into its constant (a relay's
// tls "STARTTLS" is starttls): later changes to cfg do not reach it.
func New(cfg *Config, opts Options) (*Pipeline, error) {
	cfg, err := cfg.normalized()
	if err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Clock == nil {
		opts.Clock = stages.SystemClock{}
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 30 * time.Second
	}
	p := &Pipeline{opts: opts, log: opts.Logger}
	ids, err := queuefile.LoadIdentities(cfg.IdentityFile...)
	if err != nil {
		return nil, err
	}
	p.identities = ids
	pws, err := readPasswords(cfg)
	if err != nil {
		return nil, err
	}
	p.live.Store(&settings{cfg: cfg, passwords: pws})
	p.tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	if opts.TLSConfig != nil {
		p.tlsConfig = opts.TLSConfig.Clone()
	}
	if cfg.TLS.CAFile != "" {
		pem, err := os.ReadFile(cfg.TLS.CAFile)
		if err != nil {
			return nil, fmt.Errorf("tls.ca_file: %w", err)
		}
		pool := p.tlsConfig.RootCAs
		if pool == nil {
			if pool, err = x509.SystemCertPool(); err != nil {
				pool = x509.NewCertPool()
			}
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls.ca_file %s: no PEM certificate in it", cfg.TLS.CAFile)
		}
		p.tlsConfig.RootCAs = pool
	}
	return p, nil
}

func readPasswords(cfg *Config) (map[string]queuefile.Secret, error) {
	pws := map[string]queuefile.Secret{}
	for name, r := range cfg.Relays {
		if r.PasswordFile == "" {
			continue
		}
		pw, err := queuefile.ReadSecretFile(r.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("relays.%s.password_file: %w", name, err)
		}
		pws[name] = pw
	}
	return pws, nil
}

// Reload applies a new configuration to the running pipeline without
// dropping sessions in progress: per-host limits and rates, max_threads, the
// retry policy, relay profiles and their passwords. The folders and keys
// cannot change without a restart. A configuration that does not validate,
// or that changes what cannot change, is refused and the old one stays in
// force. (The log level is the caller's: it owns the logger.) As with New,
// the pipeline keeps a normalised copy of cfg.
func (p *Pipeline) Reload(cfg *Config) error {
	cfg, err := cfg.normalized()
	if err != nil {
		return err
	}
	old := p.live.Load().cfg
	switch {
	case cfg.QueueDir != old.QueueDir, cfg.SentDir != old.SentDir, cfg.UndeliverableDir != old.UndeliverableDir:
		return errors.New("queue_dir, sent_dir and undeliverable_dir cannot change without a restart")
	case !slices.Equal(cfg.IdentityFile, old.IdentityFile):
		return errors.New("identity_file cannot change without a restart")
	case notifyChanged(cfg, old):
		return errors.New("notify cannot change without a restart")
	}
	pws, err := readPasswords(cfg)
	if err != nil {
		return err
	}
	p.live.Store(&settings{cfg: cfg, passwords: pws})
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.running
	if r == nil {
		return nil
	}
	r.archiver.SetRetry(retryPolicy(cfg))
	// The Dispatcher says how many Sender workers are missing and counts
	// them in before it answers, so that it waits for them; no answer (it
	// has returned: shutting down) means none are started, since nothing
	// would ever answer them.
	started := make(chan int, 1)
	select {
	case r.controls <- stages.HostControl{Op: stages.OpThreads, Workers: cfg.MaxThreads, Started: started}:
		r.startWork(<-started)
	case <-r.finished:
		return nil
	}
	select {
	case r.controls <- stages.HostControl{Op: stages.OpReload}:
	case <-r.finished:
	}
	return nil
}

// routeTags returns the route tags that the names of files sealed with the
// job's parameters carry: one per identity (a key being replaced has two).
func (p *Pipeline) routeTags(job *stages.Job) []string {
	if job.Params == nil || job.Kind != stages.KindSealed {
		return nil
	}
	var tags []string
	for _, id := range p.identities {
		if t := queuefile.RouteTagFor(id, job.Params); t != "" && !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	return tags
}

// ArchiverLogger is the name of the Archiver's logger, whose info lines
// are the per-message outcome lines (one per message filed): a log sink may
// buffer them (smtpq run does).
const ArchiverLogger = "archiver"

// archiverCount is how many Archiver goroutines file outcomes. A filing in
// Sent waits for three fsyncs in a row (the journal's, the copy's, the
// folder's), so on a disk with slow flushes the number of filings in flight
// bounds the drain; the journal's and the folder's fsyncs are shared by all
// of them (issue 15: 16 against 4 raised a drain at cap 2 by about half).
const archiverCount = 16

// parserCount is how many Parser goroutines run: one per CPU, at least 2.
func parserCount() int { return max(2, runtime.NumCPU()) }

// controlPoll is how often queue_dir/.control is read.
const controlPoll = 500 * time.Millisecond

// watchControls passes the queue commands' instructions to the Dispatcher
// until ctx is done.
func (p *Pipeline) watchControls(ctx context.Context, queueDir string, controls chan<- stages.HostControl, finished <-chan struct{}) {
	t := time.NewTicker(controlPoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cs, err := spool.ReadControls(queueDir)
		if err != nil {
			p.log.Warn("reading queue control files", zap.Error(err))
		}
		for _, c := range cs {
			switch c.Op {
			case stages.OpRetry, stages.OpHold:
			default:
				p.log.Warn("unknown queue control operation ignored", zap.String("op", string(c.Op)))
				continue
			}
			p.log.Info("queue control", zap.String("op", string(c.Op)), zap.String("host", c.Host), zap.Bool("all", c.All), zap.String("file", c.Name))
			select {
			case controls <- stages.HostControl{Op: c.Op, Host: c.Host, All: c.All, Name: c.Name}:
			case <-finished:
				return
			case <-ctx.Done():
				return
			}
		}
	}
}

// Retry lifts the pause of host (or of every host, with all), so that mail
// waiting for it is tried now.
func (p *Pipeline) Retry(host string, all bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r := p.running; r != nil {
		select {
		case r.controls <- stages.HostControl{Op: stages.OpRetry, Host: host, All: all}:
		case <-r.finished:
		}
	}
}

func retryPolicy(cfg *Config) stages.RetryPolicy {
	return stages.RetryPolicy{
		MinBackoff: cfg.Retry.MinBackoff.D(), MaxBackoff: cfg.Retry.MaxBackoff.D(),
		MaxAttempts: cfg.Retry.MaxAttempts, MaxAge: cfg.Retry.MaxAge.D(),
	}
}

// resolve turns sealed parameters into a route, applying relay profiles.
// A route to a server outside allowed_hosts is an error: the Parser files
// the message as invalid.
func (p *Pipeline) resolve(prm *queuefile.Params) (stages.Route, error) {
	live := p.live.Load()
	r := stages.Route{
		Host: prm.Host, Port: prm.Port, TLS: prm.TLS,
		Username: prm.Username, Password: prm.Password, OAuth2Token: prm.OAuth2Token,
		HELO: prm.HELO,
	}
	if prm.Relay != "" {
		rel, ok := live.cfg.Relays[prm.Relay]
		if !ok {
			return stages.Route{}, fmt.Errorf("unknown relay profile %q (not under relays: in %s)", prm.Relay, live.cfg.Path)
		}
		r = relayRoute(live, prm.Relay, rel)
		if prm.HELO != "" {
			r.HELO = prm.HELO
		}
	}
	r = finishRoute(r)
	if err := p.allowed(r); err != nil {
		return stages.Route{}, err
	}
	return r, nil
}

// allowed checks a route against allowed_hosts as the configuration is
// now: the Parser's resolve, and the Sender before each message (a reload
// may have taken the server out since the message was parsed).
func (p *Pipeline) allowed(r stages.Route) error {
	live := p.live.Load()
	if !live.cfg.Allows(r.Host, r.Port) {
		return fmt.Errorf("SMTP server %s is not in allowed_hosts (in %s)", r.Addr(), live.cfg.Path)
	}
	return nil
}

func relayRoute(live *settings, name string, rel Relay) stages.Route {
	return stages.Route{
		Host: rel.Host, Port: rel.Port, TLS: rel.TLS,
		Username: rel.Username, Password: live.passwords[name], HELO: rel.HELO,
	}
}

func finishRoute(r stages.Route) stages.Route {
	r.Host = stages.HostKey(r.Host)
	if r.Port == 0 {
		if r.TLS == queuefile.TLSImplicit {
			r.Port = 465
		} else {
			r.Port = queuefile.DefaultPort
		}
	}
	r.TLS = r.TLS.Resolve(r.Port)
	return r
}

func (p *Pipeline) limits(host string) stages.Limits {
	l := p.live.Load().cfg.Limits(host)
	rate, burst := l.Rate, l.Burst
	if n := int(p.nodes.Load()); n > 1 {
		// Each node of a cluster sends at its share of the host's rate
		// (see cluster.go for why a share and not a shared bucket).
		rate /= float64(n)
		if burst > 0 {
			burst = max(1, (burst+n-1)/n)
		}
	}
	return stages.Limits{
		MaxConnections:     l.MaxConnections,
		Rate:               rate,
		Burst:              burst,
		MaxMessagesPerConn: l.MaxMessagesPerConnection,
		IdleTimeout:        l.IdleTimeout.D(),
	}
}

// reloadLimits has the Dispatcher read every host's limits again, if the
// pipeline runs.
func (p *Pipeline) reloadLimits() { p.control(stages.HostControl{Op: stages.OpReload}) }

// control gives c to the Dispatcher, if the pipeline runs.
func (p *Pipeline) control(c stages.HostControl) {
	p.mu.Lock()
	r := p.running
	p.mu.Unlock()
	if r == nil {
		return
	}
	select {
	case r.controls <- c:
	case <-r.finished:
	}
}

// storage is what the stages work on: the directory spool, or the stream.
type storage interface {
	stages.Source
	stages.Sink
	// RecordAccepted durably notes that the server accepted a job's data
	// (the Sender's Accepted hook), so that a job whose filing is cut short
	// is filed as sent, not sent again. The directory spool: a line in its
	// journal, fsynced in groups. A stream: the message's key-value entry,
	// written before the ack, read back at a redelivery.
	RecordAccepted(*stages.Job) error
}

// Run runs the service until ctx is cancelled, then shuts down in two
// phases (see the package comment) and returns nil. It returns an error only
// if the spool (or, with nats, the stream) cannot be opened; a ctx cancelled
// while it still joins the cluster is a clean stop. Run may be called once.
func (p *Pipeline) Run(ctx context.Context) error {
	live := p.live.Load()
	cfg := live.cfg
	nt, err := p.newNotifier(cfg, p.opts.Clock, p.log.Named("notify"))
	if err != nil {
		return err
	}
	if nt != nil {
		defer nt.Close() // after the Archivers' last filing
	}
	sp, err := spool.Open(spool.Dirs{
		Queue: cfg.QueueDir, Sent: cfg.SentDir, Undeliverable: cfg.UndeliverableDir,
	}, p.opts.Clock.Now)
	if err != nil {
		return err
	}
	sp.Crash = p.opts.Crash
	sp.SyncFault = p.opts.SyncFault
	log := p.log
	clock := p.opts.Clock
	met := newMetrics(sp.Dirs(), clock.Now)
	var metricsLn net.Listener
	if cfg.Metrics.Listen != "" {
		metricsLn, err = net.Listen("tcp", cfg.Metrics.Listen)
		if err != nil {
			sp.Close()
			return fmt.Errorf("metrics.listen: %w", err)
		}
		p.mu.Lock()
		p.metricsAddr = metricsLn.Addr()
		p.mu.Unlock()
	}
	con, err := p.openConsole(cfg, sp.Dirs(), met)
	if err != nil {
		if metricsLn != nil {
			metricsLn.Close()
		}
		sp.Close()
		return err
	}

	var pickup *stages.Route
	if cfg.PickupCompat {
		r := finishRoute(relayRoute(live, cfg.DefaultRelay, cfg.Relays[cfg.DefaultRelay]))
		pickup = &r
	}
	// The storage the stages work on: the directory spool, or with nats
	// the stream, queue_dir then being a drop folder forwarded to it.
	var store storage = sp
	var cl *cluster
	if cfg.NATS != nil {
		onNodes := func(n int) {
			p.nodes.Store(int32(n))
			log.Info("nodes sharing the queue", zap.Int("nodes", n))
			go p.reloadLimits()
		}
		onHold := func(id string) { go p.control(stages.HostControl{Op: stages.OpHold, Name: id}) }
		if cl, err = openCluster(ctx, cfg, onNodes, onHold, log.Named("cluster")); err != nil {
			sp.Close()
			con.close()
			if metricsLn != nil {
				metricsLn.Close() // nothing serves it yet
			}
			if ctx.Err() != nil {
				// Stopped while joining the cluster (a NATS election can
				// take a while): a clean stop, nothing was taken.
				log.Info("stopped before joining the cluster", zap.Error(err))
				return nil
			}
			return err
		}
		store = cl.queue
	}
	controls := make(chan stages.HostControl)
	holds := make(chan stages.RouteHold, 64) // Dispatcher -> Scanner
	scanner := &stages.Scanner{Spool: store, Holds: holds, Interval: cfg.ScanInterval.D(), Clock: clock, Log: log.Named("scanner")}
	parser := &stages.Parser{Identities: p.identities, Resolve: p.resolve, Pickup: pickup, Settle: cfg.Settle.D(), Clock: clock, Log: log.Named("parser")}
	dispatcher := &stages.Dispatcher{
		Limits: p.limits, Workers: cfg.MaxThreads, Controls: controls, Clock: clock, Log: log.Named("dispatcher"),
		Holds: holds, Tags: p.routeTags,
	}
	if cl != nil {
		dispatcher.Paused = cl.pause
	}
	sender := &stages.Sender{
		Dial: met.dial(p.opts.Dial), TLSConfig: p.tlsConfig, HELO: cfg.HELO, Clock: clock, Log: log.Named("sender"),
		Timeouts: stages.Timeouts{
			Connect: cfg.Timeouts.Connect.D(), Command: cfg.Timeouts.Command.D(), Data: cfg.Timeouts.Data.D(),
		},
		Accepted:     store.RecordAccepted,
		Allowed:      p.allowed,
		Crash:        p.opts.Crash,
		NoPipelining: p.opts.NoPipelining,
		Panicked:     func(file, text string) { met.panicked(clock.Now(), file, text) },
	}
	if cl != nil {
		sender.Slots = cl.slots
	}
	archiver := &stages.Archiver{
		Spool: store, DeleteAfterSend: cfg.DeleteAfterSend, Clock: clock, Log: log.Named(ArchiverLogger),
		OnFiling: func(f stages.Filed) {
			if nt != nil {
				nt.Filing(f)
			}
		},
		OnFiled: func(f stages.Filed) {
			met.observe(f, clock.Now())
			if nt != nil {
				nt.Filed(f)
			}
			con.observe(f)
			if p.opts.OnFiled != nil {
				p.opts.OnFiled(f)
			}
		},
		Retry: retryPolicy(cfg),
	}

	hard, hardCancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hardCancel()
	finished := make(chan struct{}) // closed when every producer of outcomes has returned

	claimed := make(chan *stages.Job)
	parsed := make(chan *stages.Job)
	requests := make(chan *stages.Request)
	outcomes := make(chan *stages.Job)

	var all conc.WaitGroup
	var producers conc.WaitGroup // everything that writes outcomes
	all.Go(func() {
		if err := scanner.Run(ctx, claimed); err != nil {
			log.Error("scanner", zap.Error(err))
		}
	})
	// Parsers share the work: opening a seal (X25519) and hashing the
	// message take CPU, one message at a time.
	var parsers conc.WaitGroup
	for range parserCount() {
		parsers.Go(func() { parser.Run(ctx, claimed, parsed, outcomes) })
	}
	producers.Go(func() {
		defer close(parsed)
		parsers.Wait()
	})
	producers.Go(func() { dispatcher.Run(ctx, parsed, requests, outcomes) })
	run := &running{controls: controls, finished: finished, archiver: archiver}
	run.startWork = func(n int) {
		for range n {
			id := run.nextID
			run.nextID++
			producers.Go(func() { sender.Run(ctx, hard, id, requests, outcomes) })
		}
	}
	run.startWork(cfg.MaxThreads)
	p.mu.Lock()
	p.running = run
	p.mu.Unlock()
	if cl != nil {
		// Hosts paused by any node are paused here too, and the other way
		// round: the nodes share each host's circuit breaker.
		if err := cl.shareBreakers(ctx, func(host string, until time.Time) {
			select {
			case controls <- stages.HostControl{Op: stages.OpPause, Host: host, Until: until}:
			case <-finished:
			}
		}, log.Named("cluster")); err != nil {
			log.Error("sharing hosts' pauses with the other nodes: each node pauses hosts on its own", zap.Error(err))
		}
	}
	all.Go(func() {
		defer close(outcomes)
		producers.Wait()
		close(finished)
	})
	// The second phase of shutdown: after the grace period, cancel network
	// I/O still in progress.
	all.Go(func() {
		select {
		case <-finished:
			return
		case <-ctx.Done():
		}
		t := time.NewTimer(p.opts.ShutdownGrace)
		defer t.Stop()
		select {
		case <-t.C:
			log.Warn("shutdown grace period over: closing sessions still in progress")
			hardCancel()
		case <-finished:
		}
	})
	// Archivers file in parallel: their fsyncs overlap and the file system
	// commits them together.
	for range archiverCount {
		all.Go(func() { archiver.Run(outcomes) })
	}
	if cl != nil {
		all.Go(func() {
			// Nothing is kept in memory: what is published is the file's
			// own bytes, read again.
			fp := &stages.Parser{
				Identities: p.identities, Resolve: p.resolve, Pickup: pickup, Settle: cfg.Settle.D(),
				MaxInMemory: 1, InMemory: 1, Clock: clock, Log: log.Named("forward"),
			}
			cl.forward(ctx, sp, fp, cfg.NATS.Stream, clock, cfg.ScanInterval.D(), log.Named("forward"))
		})
	}
	if nt != nil {
		all.Go(func() { nt.Run(ctx) })
	}
	// Operator instructions left by the queue commands (separate processes)
	// in queue_dir/.control.
	all.Go(func() { p.watchControls(ctx, cfg.QueueDir, controls, finished) })
	if metricsLn != nil {
		all.Go(func() {
			if err := met.serve(ctx, metricsLn, clock.Now); err != nil {
				log.Error("metrics endpoint", zap.Error(err))
			}
		})
		log.Info("serving metrics and health", zap.String("addr", metricsLn.Addr().String()))
	}
	all.Go(func() { con.run(ctx, p) })
	log.Info("smtpq running", zap.String("queue_dir", cfg.QueueDir), zap.Int("max_threads", cfg.MaxThreads))
	all.Wait()
	p.mu.Lock()
	p.running, p.metricsAddr = nil, nil
	p.mu.Unlock()

	if cl != nil {
		if err := cl.close(); err != nil {
			log.Error("leaving the cluster", zap.Error(err))
		}
	}
	err = sp.Close()
	if err != nil {
		log.Error("closing the spool", zap.Error(err))
	}
	log.Info("smtpq stopped")
	return nil
}
