package pipeline

// Several nodes on one queue: the nats section of the configuration, the
// connection to NATS (or a server run in-process), and the forwarding of
// files dropped in queue_dir onto the stream.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
	"github.com/smtpq/smtpq/stages"
)

// ArchiverCount is how many Archiver goroutines a node runs: the most
// outcomes it can be filing at once, and so the most messages a node killed
// mid-drain can leave between a filed copy and its ack (the cluster crash
// tests bound duplicates by it).
const ArchiverCount = archiverCount

// NATSConfig is the nats section: with it, the queue is a NATS JetStream
// stream that every node consumes, and queue_dir a drop folder whose files
// each node publishes to the stream.
type NATSConfig struct {
	URLs StringList `yaml:"urls"` // the NATS servers, nats://host:port; at least one unless embedded
	// Credentials: one of a creds file, an nkey seed file, or a user with
	// a password file.
	CredsFile    string        `yaml:"creds_file"`
	NKeyFile     string        `yaml:"nkey_file"`
	User         string        `yaml:"user"`
	PasswordFile string        `yaml:"password_file"`
	TLS          NATSTLS       `yaml:"tls"`
	Stream       string        `yaml:"stream"`   // default SMTPQ; the state bucket is named after it
	Replicas     int           `yaml:"replicas"` // copies the NATS cluster keeps; default 1
	Node         string        `yaml:"node"`     // this node's name; default the host name
	AckWait      Duration      `yaml:"ack_wait"` // a node holding a message must show it is alive within this; default 1m
	Embedded     *NATSEmbedded `yaml:"embedded"` // run a NATS server in this process too
}

// NATSTLS is the TLS of the connection to NATS.
type NATSTLS struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// NATSEmbedded runs a NATS server with JetStream inside smtpq: for a single
// machine that wants the stream, for tests, and for the local demo of a
// cluster (make run-cluster). Production clusters should run nats-server.
type NATSEmbedded struct {
	Listen   string `yaml:"listen"`    // client address, e.g. 127.0.0.1:4222
	StoreDir string `yaml:"store_dir"` // JetStream's files
	// Cluster, to join other embedded servers: this server's route
	// address and the others'.
	ClusterName   string     `yaml:"cluster_name"`
	ClusterListen string     `yaml:"cluster_listen"`
	Routes        StringList `yaml:"routes"`
	// SyncAlways makes the server fsync every write to its store before it
	// acknowledges it, instead of every two minutes (NATS's default): with
	// one replica, a power loss cannot then take acknowledged mail whose
	// drop file is already gone. It costs a disk flush per message.
	SyncAlways bool `yaml:"sync_always"`
}

var natsName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func (n *NATSConfig) validate() []error {
	var errs []error
	if len(n.URLs) == 0 && n.Embedded == nil {
		errs = append(errs, errors.New("nats: give urls, or embedded to run a server in-process"))
	}
	creds := 0
	for _, set := range []bool{n.CredsFile != "", n.NKeyFile != "", n.User != "" || n.PasswordFile != ""} {
		if set {
			creds++
		}
	}
	if creds > 1 {
		errs = append(errs, errors.New("nats: give one of creds_file, nkey_file, or user with password_file"))
	}
	if (n.User == "") != (n.PasswordFile == "") {
		errs = append(errs, errors.New("nats: user and password_file go together"))
	}
	if (n.TLS.CertFile == "") != (n.TLS.KeyFile == "") {
		errs = append(errs, errors.New("nats.tls: cert_file and key_file go together"))
	}
	if n.Stream != "" && !natsName.MatchString(n.Stream) {
		errs = append(errs, fmt.Errorf("nats.stream %q: letters, digits, - and _ only", n.Stream))
	}
	if n.Replicas < 0 || n.Replicas > 5 {
		errs = append(errs, fmt.Errorf("nats.replicas %d out of range 1-5", n.Replicas))
	}
	if n.Node != "" && !natsName.MatchString(n.Node) {
		errs = append(errs, fmt.Errorf("nats.node %q: letters, digits, - and _ only", n.Node))
	}
	if e := n.Embedded; e != nil {
		if e.StoreDir == "" {
			errs = append(errs, errors.New("nats.embedded.store_dir is required"))
		}
		for key, addr := range map[string]string{"listen": e.Listen, "cluster_listen": e.ClusterListen} {
			if addr == "" && key == "cluster_listen" {
				continue
			}
			if _, _, err := splitHostPort(addr); err != nil {
				errs = append(errs, fmt.Errorf("nats.embedded.%s: %v", key, err))
			}
		}
	}
	return errs
}

func splitHostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port in %q", addr)
	}
	return h, port, nil
}

// NodeName is this node's name in the cluster: node, or the host name.
func (n *NATSConfig) NodeName() string {
	if n.Node != "" {
		return n.Node
	}
	h, err := os.Hostname()
	if err != nil || !natsName.MatchString(h) {
		return "smtpq"
	}
	return h
}

// startEmbedded starts the in-process NATS server and returns its client URL.
func startEmbedded(e *NATSEmbedded, name string, log *zap.Logger) (*server.Server, error) {
	host, port, err := splitHostPort(e.Listen)
	if err != nil {
		return nil, fmt.Errorf("nats.embedded.listen: %w", err)
	}
	opts := &server.Options{
		ServerName: name, Host: host, Port: port,
		JetStream: true, StoreDir: e.StoreDir, SyncAlways: e.SyncAlways,
		NoSigs: true,
	}
	if e.ClusterListen != "" {
		ch, cp, err := splitHostPort(e.ClusterListen)
		if err != nil {
			return nil, fmt.Errorf("nats.embedded.cluster_listen: %w", err)
		}
		opts.Cluster = server.ClusterOpts{Name: e.ClusterName, Host: ch, Port: cp}
		if opts.Cluster.Name == "" {
			opts.Cluster.Name = "smtpq"
		}
		opts.Routes = server.RoutesFromStr(strings.Join(e.Routes, ","))
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats.embedded: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		s.WaitForShutdown()
		return nil, errors.New("nats.embedded: the server did not start within 30s")
	}
	log.Info("embedded NATS server running", zap.String("url", s.ClientURL()), zap.String("store_dir", e.StoreDir))
	return s, nil
}

// ConnectNATS connects to the NATS servers of n (the embedded one, if it runs,
// among them) and returns a JetStream context on it.
//
// A client that is not the node running the embedded server (a producer,
// a queue command) and has no urls reaches that server at its listen
// address.
func ConnectNATS(n *NATSConfig, extraURL string) (*nats.Conn, jetstream.JetStream, error) {
	urls := append([]string(nil), n.URLs...)
	if extraURL != "" {
		urls = append(urls, extraURL)
	} else if len(urls) == 0 && n.Embedded != nil {
		urls = append(urls, "nats://"+n.Embedded.Listen)
	}
	opts := []nats.Option{
		nats.Name("smtpq " + n.NodeName()),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
	}
	switch {
	case n.CredsFile != "":
		opts = append(opts, nats.UserCredentials(n.CredsFile))
	case n.NKeyFile != "":
		o, err := nats.NkeyOptionFromSeed(n.NKeyFile)
		if err != nil {
			return nil, nil, fmt.Errorf("nats.nkey_file: %w", err)
		}
		opts = append(opts, o)
	case n.User != "":
		pw, err := queuefile.ReadSecretFile(n.PasswordFile)
		if err != nil {
			return nil, nil, fmt.Errorf("nats.password_file: %w", err)
		}
		opts = append(opts, nats.UserInfo(n.User, pw.Reveal()))
	}
	if n.TLS.CAFile != "" {
		opts = append(opts, nats.RootCAs(n.TLS.CAFile))
	}
	if n.TLS.CertFile != "" {
		opts = append(opts, nats.ClientCert(n.TLS.CertFile, n.TLS.KeyFile))
	}
	nc, err := nats.Connect(strings.Join(urls, ","), opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("nats: connecting to %v: %w", urls, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("nats: %w", err)
	}
	return nc, js, nil
}

// admin carries out an operator's requeue or purge, asked from another
// node, on this node's own folders: what the queue commands would do here.
func admin(cfg *Config, a stream.AdminOp, log *zap.Logger) error {
	dirs := spool.Dirs{Queue: cfg.QueueDir, Sent: cfg.SentDir, Undeliverable: cfg.UndeliverableDir}
	switch a.Op {
	case spool.OpRequeue:
		path, err := spool.RequeueMessage(dirs, a.Name, time.Now())
		if err == nil {
			log.Info("requeued as asked from another node", zap.String("id", a.ID), zap.String("path", path))
		}
		return err
	case spool.OpPurge:
		place, err := spool.ParsePlace(string(a.Place))
		if err != nil || (place != spool.PlaceSent && place != spool.PlaceUndeliverable) {
			return fmt.Errorf("purge of %q: only sent or undeliverable", a.Place)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		r, err := spool.Purge(ctx, dirs, place, a.Before)
		if r.Messages > 0 || r.Logs > 0 {
			log.Info("purged as asked from another node", zap.String("place", string(place)), zap.Time("before", a.Before),
				zap.Int("messages", r.Messages), zap.Int("logs", r.Logs))
		}
		return err
	}
	return fmt.Errorf("unknown operation %q", a.Op)
}

// cluster is a running node's link to NATS.
//
// A host's max_connections holds across the nodes: each session holds a
// lease in the cluster (stream.Slots). Its rate holds as each node's share:
// rate / the nodes alive, recomputed as nodes come and go (onNodes). A
// shared token bucket would cost a round trip to the cluster, and a race,
// for every message; a share costs nothing per message, is exact when
// every node has mail for the host, and errs on the slow side when some
// have none. A node that joins or dies shifts the total for at most one
// renewal period (a third of the slots' TTL).
type cluster struct {
	cfg   *Config
	srv   *server.Server // the embedded server, if any
	nc    *nats.Conn
	js    jetstream.JetStream
	queue *stream.Spool
	slots *stream.Slots

	breakers atomic.Pointer[stream.Breakers] // set by shareBreakers
}

// shareBreakers starts sharing hosts' pauses: onPause is told of every
// pause any node records (its own too: a pause no later than the host's
// own is no change).
func (c *cluster) shareBreakers(ctx context.Context, onPause func(host string, until time.Time), log *zap.Logger) error {
	n := c.cfg.NATS
	b, err := stream.OpenBreakers(ctx, c.js, n.Stream, n.Replicas, onPause, log)
	if err != nil {
		return err
	}
	c.breakers.Store(b)
	return nil
}

// pause records a host's pause (or its lift) for the other nodes, without
// blocking the Dispatcher that calls it.
func (c *cluster) pause(host string, until time.Time) {
	if b := c.breakers.Load(); b != nil {
		go b.Pause(host, until)
	}
}

// openCluster starts the embedded server if configured, connects, and opens
// this node's stream spool.
func openCluster(ctx context.Context, cfg *Config, onNodes func(int), onHold func(id string), log *zap.Logger) (*cluster, error) {
	n := cfg.NATS
	c := &cluster{cfg: cfg}
	extra := ""
	if n.Embedded != nil {
		s, err := startEmbedded(n.Embedded, n.NodeName(), log)
		if err != nil {
			return nil, err
		}
		c.srv, extra = s, s.ClientURL()
	}
	var err error
	if c.nc, c.js, err = ConnectNATS(n, extra); err != nil {
		c.close()
		return nil, err
	}
	c.queue, err = stream.Open(ctx, c.js, stream.Config{
		Stream: n.Stream, Replicas: n.Replicas, AckWait: n.AckWait.D(), Node: n.NodeName(), OnHold: onHold,
		OnAdmin: func(a stream.AdminOp) error { return admin(cfg, a, log) },
		Sent:    cfg.SentDir, Undeliverable: cfg.UndeliverableDir, Log: log.Named("stream"),
	})
	if err != nil {
		c.close()
		return nil, err
	}
	c.slots, err = stream.OpenSlots(ctx, c.js, n.Stream, n.Replicas, n.NodeName(), 0, onNodes, log.Named("slots"))
	if err != nil {
		c.close()
		return nil, err
	}
	return c, nil
}

func (c *cluster) close() error {
	var err error
	if b := c.breakers.Load(); b != nil {
		b.Close()
	}
	if c.slots != nil {
		c.slots.Close()
	}
	if c.queue != nil {
		err = c.queue.Close()
	}
	if c.nc != nil {
		c.nc.Drain()
		c.nc.Close()
	}
	if c.srv != nil {
		c.srv.Shutdown()
		c.srv.WaitForShutdown()
	}
	return err
}

// forward publishes the files dropped in queue_dir (and those the queue
// commands put back in .ready) to the stream, until ctx is done. Each is
// claimed from the directory spool like a file to send and read by a
// Parser first: a file still being written in place (it looks cut short, or
// it is a pickup file that changed within the settle time) waits in the
// deferred folder, as it would to be sent. Then it is published, whatever
// the Parser thought of it (the node that takes it decides, and files it),
// under the id it was given at claim, so a publish retried after a crash is
// a duplicate the stream drops; and it is removed only once the stream has
// it.
func (c *cluster) forward(ctx context.Context, dir *spool.Spool, parser *stages.Parser, streamName string, clock stages.Clock, scanEvery time.Duration, log *zap.Logger) {
	claimed, ready, decided := make(chan *stages.Job), make(chan *stages.Job), make(chan *stages.Job)
	sc := &stages.Scanner{Spool: dir, Interval: scanEvery, Clock: clock, Log: log}
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := sc.Run(ctx, claimed); err != nil {
			log.Error("scanner", zap.Error(err))
		}
	})
	wg.Go(func() {
		defer close(ready)
		parser.Run(ctx, claimed, ready, decided)
		close(decided)
	})
	wg.Go(func() {
		for job := range decided {
			switch job.Outcome.Verdict {
			case stages.Parked:
				if err := dir.Park(job, job.Outcome.Due); err != nil {
					log.Error("keeping a dropped file", zap.String("file", job.Name), zap.Error(err))
				}
			case stages.Returned:
				dir.Return(job)
			default:
				c.publishFile(ctx, dir, streamName, job, clock, log)
			}
		}
	})
	for job := range ready {
		c.publishFile(ctx, dir, streamName, job, clock, log)
	}
	wg.Wait()
}

// publishFile publishes a claimed file and removes it, or keeps it to try
// again in a few seconds.
func (c *cluster) publishFile(ctx context.Context, dir *spool.Spool, streamName string, job *stages.Job, clock stages.Clock, log *zap.Logger) {
	if err := c.publish(ctx, streamName, job); err != nil {
		log.Warn("publishing a dropped file to the stream; trying again soon", zap.String("file", job.Name), zap.Error(err))
		if err := dir.Park(job, clock.Now().Add(5*time.Second)); err != nil {
			log.Error("keeping a dropped file", zap.String("file", job.Name), zap.Error(err))
		}
		return
	}
	if _, err := dir.FileSent(job, true); err != nil {
		log.Error("removing a published file", zap.String("file", job.Name), zap.Error(err))
	}
}

// publish puts a claimed file's bytes on the stream under its id: in one
// NATS message if it fits, else streamed into the object store.
func (c *cluster) publish(ctx context.Context, streamName string, job *stages.Job) error {
	fi, err := job.Msg.Stat()
	if err != nil {
		return err
	}
	r, err := job.Msg.Open()
	if err != nil {
		return err
	}
	defer r.Close()
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout(fi.Size()))
	defer cancel()
	return stream.PublishReaderAs(pctx, c.js, streamName, job.ID, job.Name, r, fi.Size())
}

// publishTimeout is how long a publish of size bytes may take: 30 seconds,
// and one more per MiB.
func publishTimeout(size int64) time.Duration {
	return 30*time.Second + time.Duration(size>>20)*time.Second
}

// Publisher connects a producer (a Go program) to the stream of cfg's nats
// section, and returns the function to set as queuefile.Queue.Publish: each
// sealed message is published under a new id, which it returns once the
// stream has stored the message. close disconnects. PublisherFrom does the same for queuefile.Queue.PublishFrom,
// without holding a large message in memory.
func Publisher(cfg *Config) (publish func(name string, sealed []byte) (string, error), close func(), err error) {
	nc, js, err := connectPublisher(cfg)
	if err != nil {
		return nil, nil, err
	}
	publish = func(name string, sealed []byte) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout(int64(len(sealed))))
		defer cancel()
		return stream.Publish(ctx, js, cfg.NATS.Stream, name, sealed)
	}
	return publish, nc.Close, nil
}

// PublisherFrom is Publisher for queuefile.Queue.PublishFrom, which smtpq
// enqueue and smtpq sendmail use: the sealed message is read from the
// queue's temporary file as it is published, so a message too large for
// one NATS message is streamed into the object store.
func PublisherFrom(cfg *Config) (publish func(name string, r io.Reader, size int64) (string, error), close func(), err error) {
	nc, js, err := connectPublisher(cfg)
	if err != nil {
		return nil, nil, err
	}
	publish = func(name string, r io.Reader, size int64) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), publishTimeout(size))
		defer cancel()
		return stream.PublishReader(ctx, js, cfg.NATS.Stream, name, r, size)
	}
	return publish, nc.Close, nil
}

// connectPublisher connects to the stream of cfg's nats section and sets it
// up.
func connectPublisher(cfg *Config) (*nats.Conn, jetstream.JetStream, error) {
	n := cfg.NATS
	if n == nil {
		return nil, nil, errors.New("no nats section in the configuration")
	}
	nc, js, err := ConnectNATS(n, "")
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, _, err := stream.Setup(ctx, js, n.Stream, n.Replicas); err != nil {
		nc.Close()
		return nil, nil, err
	}
	return nc, js, nil
}
