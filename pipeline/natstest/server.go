package natstest

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startTimeout bounds how long a server may take to open its listeners.
const startTimeout = 10 * time.Second

// An Option changes how the servers of a NewServer or NewCluster start.
type Option func(*settings)

type settings struct {
	maxPayload int32
	maxMemory  int64
	maxStore   int64
	logging    bool
	modify     []func(*server.Options)
}

func newSettings(opts []Option) settings {
	s := settings{
		// Small, fixed limits: the defaults are taken from the machine's
		// memory and free disk, which tests should not depend on.
		maxMemory: 256 << 20,
		maxStore:  1 << 30,
	}
	for _, o := range opts {
		o(&s)
	}
	return s
}

// WithMaxPayload sets the largest message the servers accept, in bytes (the
// server's default is 1 MiB). Clients learn it on connecting and refuse to
// publish anything larger.
func WithMaxPayload(n int32) Option {
	return func(s *settings) { s.maxPayload = n }
}

// WithJetStreamLimits sets how much memory and file storage JetStream may
// use on each server, in bytes (256 MiB and 1 GiB unless given).
func WithJetStreamLimits(memory, store int64) Option {
	return func(s *settings) { s.maxMemory, s.maxStore = memory, store }
}

// WithLogging sends the servers' notices, warnings and errors to t.Log.
func WithLogging() Option {
	return func(s *settings) { s.logging = true }
}

// WithOptions lets fn change the server options before each start of each
// server, for anything the other options do not cover. The listening
// addresses, store folder, server name and cluster settings are the kit's:
// changing them breaks Restart and the cluster.
func WithOptions(fn func(*server.Options)) Option {
	return func(s *settings) { s.modify = append(s.modify, fn) }
}

// Server is one NATS server with JetStream, running in the test process.
type Server struct {
	t        testing.TB
	set      settings
	name     string
	storeDir string

	// Set for a cluster node: the cluster's name, this node's route port
	// and the route URLs of all nodes.
	clusterName string
	clusterPort int
	routes      string

	mu   sync.Mutex
	ns   *server.Server
	log  *tbLogger
	port int // the client port, kept after the first start for Restart
}

// NewServer starts a JetStream-enabled server on 127.0.0.1 and a port the
// system picks, with its store in a folder from t.TempDir. It is shut down
// when the test and its subtests end.
func NewServer(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := &Server{
		t:        t,
		set:      newSettings(opts),
		name:     "natstest",
		storeDir: t.TempDir(),
		port:     server.RANDOM_PORT,
	}
	t.Cleanup(s.Shutdown)
	if err := s.start(); err != nil {
		t.Fatal(err)
	}
	return s
}

// options builds the options for one start of the server.
func (s *Server) options() *server.Options {
	o := &server.Options{
		ServerName:         s.name,
		Host:               "127.0.0.1",
		Port:               s.port,
		NoSigs:             true,
		JetStream:          true,
		StoreDir:           s.storeDir,
		JetStreamMaxMemory: s.set.maxMemory,
		JetStreamMaxStore:  s.set.maxStore,
		MaxPayload:         s.set.maxPayload,
	}
	if s.clusterName != "" {
		o.Cluster.Name = s.clusterName
		o.Cluster.Host = "127.0.0.1"
		o.Cluster.Port = s.clusterPort
		o.Routes = server.RoutesFromStr(s.routes)
	}
	for _, fn := range s.set.modify {
		fn(o)
	}
	return o
}

// start starts the server and waits until it accepts connections.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ns != nil {
		return fmt.Errorf("natstest: server %s is already running", s.name)
	}
	ns, err := server.NewServer(s.options())
	if err != nil {
		return fmt.Errorf("natstest: server %s: %w", s.name, err)
	}
	log := &tbLogger{t: s.t, prefix: s.name, forward: s.set.logging}
	ns.SetLoggerV2(log, false, false, false)
	ns.Start()
	if !ns.ReadyForConnections(startTimeout) {
		ns.Shutdown()
		ns.WaitForShutdown()
		log.close()
		return fmt.Errorf("natstest: server %s did not start within %v%s", s.name, startTimeout, log.errorsText())
	}
	if !ns.JetStreamEnabled() {
		ns.Shutdown()
		ns.WaitForShutdown()
		log.close()
		return fmt.Errorf("natstest: server %s started without JetStream%s", s.name, log.errorsText())
	}
	s.ns, s.log = ns, log
	s.port = ns.Addr().(*net.TCPAddr).Port
	return nil
}

// URL returns the server's client URL, nats://127.0.0.1:port. It stays the
// same across Restart.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return fmt.Sprintf("nats://127.0.0.1:%d", s.port)
}

// Name returns the server's name, unique within its cluster.
func (s *Server) Name() string { return s.name }

// StoreDir returns the folder that holds the server's JetStream files.
func (s *Server) StoreDir() string { return s.storeDir }

// NATS returns the running server, or nil while it is shut down, for what
// the kit does not wrap (monitoring calls, JetStream state).
func (s *Server) NATS() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ns
}

// Running reports whether the server is up.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ns != nil && s.ns.Running()
}

// Shutdown stops the server and waits until all its goroutines have ended;
// its clients see the connection drop. It does nothing if the server is
// already down.
func (s *Server) Shutdown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ns == nil {
		return
	}
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
	s.log.close()
	s.ns, s.log = nil, nil
}

// Restart starts a shut-down server again on the same client port (and, in
// a cluster, route port) with the same store folder, so it comes back with
// the streams and messages it had. It fails the test if the server cannot
// start; it does not wait for a cluster node to catch up (Cluster.Restart
// does).
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.start(); err != nil {
		s.t.Fatal(err)
	}
}

// tbLogger is the servers' logger. It keeps the errors for a failed start
// and passes lines to t.Log only while the server runs, since t.Log panics
// once the test has ended.
type tbLogger struct {
	t       testing.TB
	prefix  string
	forward bool

	mu     sync.Mutex
	closed bool
	errs   []string
}

func (l *tbLogger) logf(level string, keep bool, format string, v []any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	line := fmt.Sprintf(format, v...)
	if keep && len(l.errs) < 20 {
		l.errs = append(l.errs, line)
	}
	if l.forward {
		l.t.Logf("nats %s [%s] %s", l.prefix, level, line)
	}
}

func (l *tbLogger) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
}

func (l *tbLogger) errorsText() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) == 0 {
		return ""
	}
	return ": " + strings.Join(l.errs, "; ")
}

func (l *tbLogger) Noticef(format string, v ...any) { l.logf("INF", false, format, v) }
func (l *tbLogger) Warnf(format string, v ...any)   { l.logf("WRN", false, format, v) }
func (l *tbLogger) Errorf(format string, v ...any)  { l.logf("ERR", true, format, v) }
func (l *tbLogger) Fatalf(format string, v ...any)  { l.logf("FTL", true, format, v) }
func (l *tbLogger) Debugf(format string, v ...any)  {}
func (l *tbLogger) Tracef(format string, v ...any)  {}
