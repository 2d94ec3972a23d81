package pipeline

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/console"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// webConsole is the web console of a running pipeline (console.listen):
// its listener, its backend (fed by the Archiver's filings) and its
// server. A nil *webConsole is off: its methods do nothing.
type webConsole struct {
	ln      net.Listener
	tls     *tls.Config
	backend *console.DirBackend
	server  *console.Server
	log     *zap.Logger
}

// ConsoleAddr returns the address the web console listens on while Run
// runs (useful with console.listen "127.0.0.1:0"), or nil.
func (p *Pipeline) ConsoleAddr() net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.consoleAddr
}

// openConsole listens on console.listen, if set, and builds the console
// over the directory spool. The console's Service is the pipeline itself.
func (p *Pipeline) openConsole(cfg *Config, dirs spool.Dirs, met *metrics) (*webConsole, error) {
	cc := cfg.Console
	if cc.Listen == "" {
		return nil, nil
	}
	var tc *tls.Config
	if cc.TLS.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cc.TLS.CertFile, cc.TLS.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("console.tls: %w", err)
		}
		tc = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	}
	ln, err := net.Listen("tcp", cc.Listen)
	if err != nil {
		return nil, fmt.Errorf("console.listen: %w", err)
	}
	log := p.log.Named("console")
	b := console.NewDirBackend(dirs, p.identities, p.opts.Clock.Now, log)
	b.LiftPause = p.Retry
	svc := &consoleService{p: p, sessions: sessionsGatherer(met), started: p.opts.Clock.Now()}
	srv := console.NewServer(b, svc, p.consoleUsers, tc != nil, log, p.opts.Clock.Now)
	p.mu.Lock()
	p.consoleAddr = ln.Addr()
	p.mu.Unlock()
	return &webConsole{ln: ln, tls: tc, backend: b, server: srv, log: log}, nil
}

// consoleUsers returns the console's users from the configuration in
// force (a reload changes them).
func (p *Pipeline) consoleUsers() map[string]string {
	users := map[string]string{}
	for name, u := range p.live.Load().cfg.Console.Users {
		users[name] = u.PasswordHash
	}
	return users
}

// observe feeds a filing to the console's index.
func (c *webConsole) observe(f stages.Filed) {
	if c != nil {
		c.backend.Observe(f)
	}
}

// run serves the console and keeps its index until ctx is done.
func (c *webConsole) run(ctx context.Context, p *Pipeline) {
	if c == nil {
		return
	}
	defer func() {
		p.mu.Lock()
		p.consoleAddr = nil
		p.mu.Unlock()
	}()
	var wg conc.WaitGroup
	defer wg.Wait()
	wg.Go(func() { c.backend.Run(ctx) })
	scheme := "http"
	if c.tls != nil {
		scheme = "https"
	}
	c.log.Info("serving the web console", zap.String("url", scheme+"://"+c.ln.Addr().String()+"/"))
	ln := c.ln
	if c.tls != nil {
		ln = tls.NewListener(ln, c.tls)
	}
	srv := &http.Server{Handler: c.server.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
	if err := serveUntil(ctx, srv, ln); err != nil {
		c.log.Error("web console", zap.Error(err))
	}
}

// close releases the listener of a console that never ran.
func (c *webConsole) close() {
	if c != nil {
		c.ln.Close()
	}
}

// consoleService is the running pipeline as the console sees it.
type consoleService struct {
	p        *Pipeline
	sessions prometheus.Gatherer // smtpq_smtp_sessions only
	started  time.Time
}

func (s *consoleService) Info() console.Info {
	cfg := s.p.live.Load().cfg
	return console.Info{
		Version: s.p.opts.Version, Started: s.started, ConfigFile: cfg.Path, MaxThreads: cfg.MaxThreads,
		QueueDir: cfg.QueueDir, SentDir: cfg.SentDir, UndeliverableDir: cfg.UndeliverableDir,
		DeleteAfterSend: cfg.DeleteAfterSend,
	}
}

func (s *consoleService) Limits(host string) (int, float64) {
	l := s.p.limits(host)
	return l.MaxConnections, l.Rate
}

// sessionsGatherer gathers met's smtpq_smtp_sessions gauge alone: the
// console's Sessions runs on every page and poll.
func sessionsGatherer(met *metrics) prometheus.Gatherer {
	r := prometheus.NewRegistry()
	r.MustRegister(met.sessions)
	return r
}

// Sessions reads the smtpq_smtp_sessions gauge, gathered alone (not the
// whole registry: the process and Go collectors, the spool's counts).
func (s *consoleService) Sessions() map[string]int {
	out := map[string]int{}
	mfs, err := s.sessions.Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "host" {
					out[l.GetValue()] = int(m.GetGauge().GetValue())
				}
			}
		}
	}
	return out
}

// Reload reads the configuration file again and applies it, as SIGHUP
// does (the log level, which belongs to the caller's logger, changes on
// SIGHUP only).
func (s *consoleService) Reload() error {
	path := s.p.live.Load().cfg.Path
	if path == "" {
		return fmt.Errorf("the configuration was not read from a file: nothing to reload")
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		return err
	}
	if err := s.p.Reload(cfg); err != nil {
		return err
	}
	s.p.log.Info("configuration reloaded from the web console", zap.String("config", path), zap.Int("max_threads", cfg.MaxThreads))
	return nil
}
