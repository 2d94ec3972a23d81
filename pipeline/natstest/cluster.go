package natstest

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// clusterTimeout bounds how long a cluster may take to elect a meta leader
// and to take a restarted node back in.
const clusterTimeout = 30 * time.Second

// clusterName is the name of every cluster the kit starts.
const clusterName = "natstest"

// Cluster is a JetStream cluster of servers on loopback, routed to each
// other, running in the test process.
type Cluster struct {
	t       testing.TB
	servers []*Server
}

// NewCluster starts an n-node JetStream cluster (n at least 2; 3 is
// typical, since JetStream needs 3 to keep a majority when one node is
// down), each node with its own name, store folder, client port and route
// port on 127.0.0.1. It returns once the cluster has a meta leader that sees
// every node, and shuts all nodes down when the test ends.
func NewCluster(t testing.TB, n int, opts ...Option) *Cluster {
	t.Helper()
	if n < 2 {
		// A lone node that expects routes waits for a second meta peer
		// that never comes.
		t.Fatalf("natstest: NewCluster needs at least 2 nodes, got %d; NewServer starts one", n)
	}
	set := newSettings(opts)
	// A route port is chosen before its server binds it, and another
	// process may take it in between: the cluster is then started again on
	// other ports.
	var err error
	for range 5 {
		var c *Cluster
		if c, err = startCluster(t, n, set); err == nil {
			t.Cleanup(c.shutdownAll)
			if err := c.waitReady(-1); err != nil {
				t.Fatal(err)
			}
			return c
		}
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatal(err)
	return nil
}

// startCluster starts the n nodes of a cluster on route ports that were
// free a moment before. If one does not start, it shuts down those that
// did.
func startCluster(t testing.TB, n int, set settings) (*Cluster, error) {
	// Every node lists every node's route address, itself included (the
	// server skips its own), so each knows the cluster's size from the start
	// and the meta group's quorum is right. That needs the route ports
	// before any node starts.
	ports, err := pickPorts(n)
	if err != nil {
		return nil, fmt.Errorf("natstest: %w", err)
	}
	urls := make([]string, n)
	for i, p := range ports {
		urls[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", p)
	}
	routes := strings.Join(urls, ",")

	c := &Cluster{t: t}
	for i := range n {
		s := &Server{
			t:           t,
			set:         set,
			name:        fmt.Sprintf("%s-%d", clusterName, i),
			storeDir:    t.TempDir(),
			port:        server.RANDOM_PORT,
			clusterName: clusterName,
			clusterPort: ports[i],
			routes:      routes,
		}
		c.servers = append(c.servers, s)
	}
	for _, s := range c.servers {
		if err := s.start(); err != nil {
			c.shutdownAll()
			return nil, err
		}
	}
	return c, nil
}

// pickPorts chooses the route ports (a test replaces it).
var pickPorts = freePorts

// freePorts asks the system for n free ports on 127.0.0.1. They are free
// when it returns; another process could take one before the server binds
// it (NewCluster then starts again on others).
func freePorts(n int) ([]int, error) {
	ls := make([]net.Listener, 0, n)
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (c *Cluster) shutdownAll() {
	for _, s := range c.servers {
		s.Shutdown()
	}
}

// Servers returns the nodes, in the order of their index.
func (c *Cluster) Servers() []*Server { return append([]*Server(nil), c.servers...) }

// URLs returns the client URLs of all nodes, stopped ones included, so a
// client given them all reconnects to whichever is up.
func (c *Cluster) URLs() []string {
	urls := make([]string, len(c.servers))
	for i, s := range c.servers {
		urls[i] = s.URL()
	}
	return urls
}

// URL returns the client URLs of all nodes joined by commas, the form
// nats.Connect takes.
func (c *Cluster) URL() string { return strings.Join(c.URLs(), ",") }

// Stop shuts node i down and waits until it has stopped; the other nodes
// and their clients see it as lost.
func (c *Cluster) Stop(i int) {
	c.t.Helper()
	c.node(i).Shutdown()
}

// Restart starts the stopped node i again on the same ports and store
// folder, and waits until it has rejoined: the meta leader sees every
// running node and node i is current with it.
func (c *Cluster) Restart(i int) {
	c.t.Helper()
	if err := c.node(i).start(); err != nil {
		c.t.Fatal(err)
	}
	if err := c.waitReady(i); err != nil {
		c.t.Fatal(err)
	}
}

// Leader returns the index of the node that is the JetStream meta leader,
// or -1 if there is none at this moment (as during an election).
func (c *Cluster) Leader() int {
	for i, s := range c.servers {
		ns := s.NATS()
		if ns != nil && ns.Running() && ns.JetStreamIsLeader() {
			return i
		}
	}
	return -1
}

// WaitForLeader waits until the cluster has a meta leader, as after the
// leader was stopped, and returns its index.
func (c *Cluster) WaitForLeader() int {
	c.t.Helper()
	deadline := time.Now().Add(clusterTimeout)
	for time.Now().Before(deadline) {
		if i := c.Leader(); i >= 0 {
			return i
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("natstest: cluster has no meta leader after %v", clusterTimeout)
	return -1
}

func (c *Cluster) node(i int) *Server {
	c.t.Helper()
	if i < 0 || i >= len(c.servers) {
		c.t.Fatalf("natstest: no node %d in a cluster of %d", i, len(c.servers))
	}
	return c.servers[i]
}

// waitReady waits until there is a meta leader that sees every running node
// and, if node is not -1, that node's copy of the meta state is current.
func (c *Cluster) waitReady(node int) error {
	deadline := time.Now().Add(clusterTimeout)
	var why string
	for time.Now().Before(deadline) {
		why = c.notReady(node)
		if why == "" {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("natstest: cluster not ready after %v: %s", clusterTimeout, why)
}

func (c *Cluster) notReady(node int) string {
	running := 0
	for _, s := range c.servers {
		if s.Running() {
			running++
		}
	}
	li := c.Leader()
	if li < 0 {
		return "no meta leader"
	}
	leader := c.servers[li].NATS()
	if leader == nil {
		return "meta leader stopped"
	}
	if peers := leader.JetStreamClusterPeers(); len(peers) != running {
		return fmt.Sprintf("meta leader %s sees %d of %d running nodes %v", leader.Name(), len(peers), running, peers)
	}
	if node >= 0 {
		ns := c.servers[node].NATS()
		if ns == nil || !ns.JetStreamIsCurrent() {
			return fmt.Sprintf("node %d is not current with the meta leader", node)
		}
	}
	return ""
}
