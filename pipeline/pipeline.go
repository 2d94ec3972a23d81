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
//	    is written to disk before anything else.
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
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/queuefile"
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
	// TLSConfig, if set, is the base TLS configuration for connections to
	// SMTP servers (tests use it to trust a test CA). tls.ca_file adds to it.
	TLSConfig *tls.Config
}

// Pipeline is the mail queue service. Create it with New, start it with Run.
type Pipeline struct {
	cfg        *Config
	opts       Options
	log        *zap.Logger
	identities []age.Identity
	passwords  map[string]queuefile.Secret // relay name -> password
	tlsConfig  *tls.Config

	mu    sync.Mutex
	spool *stages.Spool
}

// New checks the configuration, loads the keys and relay passwords and
// creates the spool folders. It starts nothing.
func New(cfg *Config, opts Options) (*Pipeline, error) {
	if err := cfg.Validate(); err != nil {
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
	p := &Pipeline{cfg: cfg, opts: opts, log: opts.Logger, passwords: map[string]queuefile.Secret{}}
	ids, err := queuefile.LoadIdentities(cfg.IdentityFile...)
	if err != nil {
		return nil, err
	}
	p.identities = ids
	for name, r := range cfg.Relays {
		if r.PasswordFile == "" {
			continue
		}
		pw, err := ReadSecretFile(r.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("relays.%s.password_file: %w", name, err)
		}
		p.passwords[name] = pw
	}
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

// ReadSecretFile reads a password or token from the first line of a file.
func ReadSecretFile(path string) (queuefile.Secret, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimRight(line, "\r")
	if line == "" {
		return "", fmt.Errorf("%s: empty", path)
	}
	return queuefile.Secret(line), nil
}

// resolve turns sealed parameters into a route, applying relay profiles.
func (p *Pipeline) resolve(prm *queuefile.Params) (stages.Route, error) {
	r := stages.Route{
		Host: prm.Host, Port: prm.Port, TLS: prm.TLS,
		Username: prm.Username, Password: prm.Password, OAuth2Token: prm.OAuth2Token,
		HELO: prm.HELO,
	}
	if prm.Relay != "" {
		rel, ok := p.cfg.Relays[prm.Relay]
		if !ok {
			return stages.Route{}, fmt.Errorf("unknown relay profile %q (not under relays: in %s)", prm.Relay, p.cfg.Path)
		}
		r = p.relayRoute(prm.Relay, rel)
		if prm.HELO != "" {
			r.HELO = prm.HELO
		}
	}
	return finishRoute(r), nil
}

func (p *Pipeline) relayRoute(name string, rel Relay) stages.Route {
	return stages.Route{
		Host: rel.Host, Port: rel.Port, TLS: queuefile.TLSMode(rel.TLS),
		Username: rel.Username, Password: p.passwords[name], HELO: rel.HELO,
	}
}

func finishRoute(r stages.Route) stages.Route {
	r.Host = strings.ToLower(strings.TrimSuffix(strings.Trim(r.Host, "[]"), "."))
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
	l := p.cfg.Limits(host)
	return stages.Limits{
		MaxConnections:     l.MaxConnections,
		Rate:               l.Rate,
		Burst:              l.Burst,
		MaxMessagesPerConn: l.MaxMessagesPerConnection,
		IdleTimeout:        l.IdleTimeout.D(),
	}
}

// Run runs the service until ctx is cancelled, then shuts down in two
// phases (see the package comment) and returns nil. It returns an error only
// if the spool cannot be opened. Run may be called once.
func (p *Pipeline) Run(ctx context.Context) error {
	spool, err := stages.OpenSpool(stages.Dirs{
		Queue: p.cfg.QueueDir, Sent: p.cfg.SentDir, Undeliverable: p.cfg.UndeliverableDir,
	}, p.opts.Clock.Now)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.spool = spool
	p.mu.Unlock()
	log := p.log
	clock := p.opts.Clock

	var pickup *stages.Route
	if p.cfg.PickupCompat {
		r := finishRoute(p.relayRoute(p.cfg.DefaultRelay, p.cfg.Relays[p.cfg.DefaultRelay]))
		pickup = &r
	}
	scanner := &stages.Scanner{Spool: spool, Interval: p.cfg.ScanInterval.D(), Clock: clock, Log: log.Named("scanner")}
	parser := &stages.Parser{Identities: p.identities, Resolve: p.resolve, Pickup: pickup, Clock: clock, Log: log.Named("parser")}
	dispatcher := &stages.Dispatcher{Limits: p.limits, Workers: p.cfg.MaxThreads, Clock: clock, Log: log.Named("dispatcher")}
	sender := &stages.Sender{
		Dial: p.opts.Dial, TLSConfig: p.tlsConfig, HELO: p.cfg.HELO, Clock: clock, Log: log.Named("sender"),
		Timeouts: stages.Timeouts{
			Connect: p.cfg.Timeouts.Connect.D(), Command: p.cfg.Timeouts.Command.D(), Data: p.cfg.Timeouts.Data.D(),
		},
		Accepted: spool.RecordAccepted,
	}
	archiver := &stages.Archiver{
		Spool: spool, DeleteAfterSend: p.cfg.DeleteAfterSend, Clock: clock, Log: log.Named("archiver"),
		OnFiled: p.opts.OnFiled,
		Retry: stages.RetryPolicy{
			MinBackoff: p.cfg.Retry.MinBackoff.D(), MaxBackoff: p.cfg.Retry.MaxBackoff.D(),
			MaxAttempts: p.cfg.Retry.MaxAttempts, MaxAge: p.cfg.Retry.MaxAge.D(),
		},
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
	producers.Go(func() {
		defer close(parsed)
		parser.Run(ctx, claimed, parsed, outcomes)
	})
	producers.Go(func() { dispatcher.Run(ctx, parsed, requests, outcomes) })
	for i := 0; i < p.cfg.MaxThreads; i++ {
		producers.Go(func() { sender.Run(ctx, hard, i, requests, outcomes) })
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
	all.Go(func() { archiver.Run(outcomes) })
	log.Info("smtpq running", zap.String("queue_dir", p.cfg.QueueDir), zap.Int("max_threads", p.cfg.MaxThreads))
	all.Wait()

	err = spool.Close()
	if err != nil {
		log.Error("closing the spool", zap.Error(err))
	}
	log.Info("smtpq stopped")
	return nil
}
