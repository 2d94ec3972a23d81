//go:build crash

// Crash tests of several nodes on one stream: real smtpq processes on a
// 3-server NATS JetStream cluster run in the test process; one node is
// killed with SIGKILL while they drain, and the others must finish its work
// without losing or doubling anything. Run them with "make test-crash".

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
)

// clusterNode is one smtpq process of a cluster test, with its own folders
// and log.
type clusterNode struct {
	t    *testing.T
	name string
	dir  string
	cfg  string
	cmd  *exec.Cmd
	mu   sync.Mutex
	logs bytes.Buffer
}

func (n *clusterNode) Write(b []byte) (int, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.logs.Write(b)
}

func (n *clusterNode) log() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.logs.String()
}

// newClusterNode writes a node's configuration: the shared keys (copied
// from keys), its own folders, and the cluster's NATS servers.
func newClusterNode(t *testing.T, root, name, keys string, urls []string, threads int) *clusterNode {
	t.Helper()
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"identity.txt", "recipient.txt"} {
		b, err := os.ReadFile(filepath.Join(keys, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "keys", f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "queue"), 0o750); err != nil {
		t.Fatal(err)
	}
	text := fmt.Sprintf(`queue_dir: queue
sent_dir: sent
undeliverable_dir: undeliverable
identity_file: keys/identity.txt
recipient_file: keys/recipient.txt
helo: %s.test
max_threads: %d
hosts:
  default:
    max_connections: %d
    idle_timeout: 1s
retry:
  min_backoff: 0s
  max_backoff: 1s
  max_attempts: 10
scan_interval: 200ms
timeouts:
  connect: 5s
  command: 5s
  data: 10s
log:
  level: debug
nats:
  urls: [%s]
  replicas: 3
  node: %s
  ack_wait: 2s
`, name, threads, threads, strings.Join(urls, ", "), name)
	cfg := filepath.Join(dir, "smtpq.yaml")
	if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return &clusterNode{t: t, name: name, dir: dir, cfg: cfg}
}

// start runs the node, with SMTPQ_CRASH_AT=crashAt if not empty. A node
// still running when the test ends is killed.
func (n *clusterNode) start(crashAt string) {
	n.t.Helper()
	n.cmd = exec.Command(binary(n.t), "run", "--config", n.cfg)
	n.cmd.Env = append(os.Environ(), crashEnv+"="+crashAt)
	n.cmd.Stdout, n.cmd.Stderr = n, n
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	cmd := n.cmd
	n.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
}

// waitUp waits until the node has joined the stream and runs.
func (n *clusterNode) waitUp() {
	n.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(n.log(), "smtpq running") {
		if time.Now().After(deadline) {
			n.t.Fatalf("node %s did not start within 30s\n%s", n.name, n.log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stop ends the node with SIGTERM and waits for a clean exit.
func (n *clusterNode) stop() {
	n.t.Helper()
	n.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- n.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			n.t.Errorf("node %s: exit after SIGTERM: %v\n%s", n.name, err, n.log())
		}
	case <-time.After(30 * time.Second):
		n.cmd.Process.Kill()
		<-done
		n.t.Errorf("node %s did not stop within 30s of SIGTERM", n.name)
	}
}

// filed returns the Message-IDs of the node's Sent copies, and the names
// of its Undeliverable copies (sealed, as published).
func (n *clusterNode) filed() (sent []string, undeliverable []string) {
	for _, sub := range []string{"sent", "undeliverable"} {
		ents, _ := os.ReadDir(filepath.Join(n.dir, sub))
		for _, d := range ents {
			if !d.Type().IsRegular() || !strings.HasSuffix(d.Name(), queuefile.Ext) {
				continue // the .tmp folder holds unfinished copies, not filed messages
			}
			if sub == "undeliverable" {
				undeliverable = append(undeliverable, d.Name())
				continue
			}
			b, _ := os.ReadFile(filepath.Join(n.dir, sub, d.Name()))
			m := msgID.FindSubmatch(b)
			if m == nil {
				sent = append(sent, "(no Message-ID) "+d.Name())
				continue
			}
			sent = append(sent, string(m[1]))
		}
	}
	return sent, undeliverable
}

// strictClusterFiling, when true, requires every message to be filed exactly
// once across the nodes even when a node is killed. It is false because of
// a known window: a node writes its Sent (or Undeliverable) copy, then acks
// the message; killed in between (the ack takes from a few to over a hundred
// milliseconds on an R3 cluster), its copy stays and the stream gives the
// message to another node, which files it again (as sent, without sending
// it again: the state bucket says the server accepted it). Closing it needs
// the copy to be made final only once the ack is known, with a recovery of
// unfinished copies when the node starts again. Until then the test accepts
// a second copy only for a message the killed node filed, at most one per
// archiver of the killed node.
const strictClusterFiling = false

// archivers is the service's count of Archiver goroutines: the messages a
// node can be filing at once.
const archivers = pipeline.ArchiverCount

// TestCrashClusterNodeKilled runs three smtpq nodes on one R3 stream,
// publishes a few hundred messages, and kills one node with SIGKILL while
// they drain: at a random moment, and at the crash points on either side
// of the record of the server's 250. The other nodes take the killed
// node's messages after the ack wait. Every message must reach the server,
// be filed exactly once across the nodes (a copy the killed node filed
// before dying counts), be sent twice only if the killed node was between
// a 250 and its record (at most one per session of that node), and the
// stream must end empty.
func TestCrashClusterNodeKilled(t *testing.T) {
	for _, tc := range []struct{ name, crashAt string }{
		{"random", ""},
		{"after-dot", "after-dot"},
		{"after-record", "after-record"},
	} {
		t.Run(tc.name, func(t *testing.T) { clusterNodeKilled(t, tc.crashAt) })
	}
}

func clusterNodeKilled(t *testing.T, crashAt string) {
	const n, threads = 200, 4
	noLeaks(t)
	c := natstest.NewCluster(t, 3)
	// A short pause before each 250 keeps every session busy, so the
	// killed node has messages in flight when it dies.
	srv := smtptest.NewServer(t, func(s *smtptest.Server) {
		s.Fault = smtptest.FaultAt(smtptest.AfterDot, smtptest.Fault{Stall: 5 * time.Millisecond})
	})

	root := t.TempDir()
	keys := filepath.Join(root, "keys")
	if _, err := queuefile.GenerateKeys(filepath.Join(keys, "identity.txt"), filepath.Join(keys, "recipient.txt")); err != nil {
		t.Fatal(err)
	}
	var nodes []*clusterNode
	for i := range 3 {
		nodes = append(nodes, newClusterNode(t, root, fmt.Sprintf("n%d", i+1), keys, c.URLs(), threads))
	}
	victim := nodes[0]
	// The crash point is reached after a random number of deliveries of
	// the victim's, so it dies mid-drain, with others in flight. The
	// number stays small: on a loaded machine the other two nodes may take
	// most of the 200 messages, and a victim that never gets that far
	// would never die.
	if crashAt != "" {
		crashAt = fmt.Sprintf("%s:%d", crashAt, 1+rand.IntN(4))
	}
	// The victim starts first and has the messages to itself while the
	// others start: on a loaded machine they could otherwise take them
	// all before it reaches its crash point.
	victim.start(crashAt)
	victim.waitUp()

	publish, closePub, err := pipeline.Publisher(&pipeline.Config{NATS: &pipeline.NATSConfig{URLs: c.URLs(), Replicas: 3}})
	if err != nil {
		t.Fatal(err)
	}
	defer closePub()
	rcpts, err := queuefile.LoadRecipients(filepath.Join(keys, "recipient.txt"))
	if err != nil {
		t.Fatal(err)
	}
	// Dir holds the temporary copy of the message being sealed.
	q := &queuefile.Queue{Dir: filepath.Join(root, "producer"), Recipients: rcpts, Publish: publish}
	for i := range n {
		to := fmt.Sprintf("user%d@example.org", i)
		msg := fmt.Sprintf("From: app@example.com\r\nTo: %s\r\nSubject: cluster %d\r\nMessage-ID: <cluster-%d@example.com>\r\n\r\nbody %d\r\n", to, i, i, i)
		if _, err := q.Enqueue(strings.NewReader(msg), srv.Params(to)); err != nil {
			t.Fatal(err)
		}
	}

	for _, nd := range nodes[1:] {
		nd.start("")
	}
	for _, nd := range nodes[1:] {
		nd.waitUp()
	}

	total := func() int {
		k := 0
		for _, nd := range nodes {
			s, u := nd.filed()
			k += len(s) + len(u)
		}
		return k
	}
	if crashAt != "" {
		done := make(chan error, 1)
		go func() { done <- victim.cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(90 * time.Second):
			t.Fatalf("node %s did not reach %s within 90s\n%s", victim.name, crashAt, victim.log())
		}
	} else {
		// Kill at a random moment of the drain: once a random share of the
		// messages is filed, by any node (not when the victim files one,
		// which would aim at one window).
		at := n/10 + rand.IntN(n/2)
		deadline := time.Now().Add(30 * time.Second)
		for total() < at {
			if time.Now().After(deadline) {
				t.Fatalf("only %d of %d filed in 30s\n%s", total(), n, victim.log())
			}
			time.Sleep(time.Millisecond)
		}
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
		victim.cmd.Process.Kill()
		victim.cmd.Wait()
	}
	killedAt := time.Now()
	killedFiled, _ := victim.filed()
	t.Logf("node %s killed at %s (%s) with %d filed there, %d of %d filed in all", victim.name, killedAt.Format("15:04:05.000"), victim.cmd.ProcessState, len(killedFiled), total(), n)
	if total() >= n {
		t.Fatalf("everything was filed before the kill: the test proves nothing")
	}

	deadline := time.Now().Add(40 * time.Second)
	for total() < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polling folders of other processes
	}
	if left := streamEmpty(t, c); len(left) > 0 {
		// A node killed between its ack and the removal of the message's
		// state leaves the state behind: garbage, read by no one (ids are
		// never reused), at most one per archiver of the killed node.
		t.Logf("state of %d acknowledged messages left in the bucket by the killed node: %v", len(left), left)
		if len(left) > archivers {
			t.Errorf("%d states left in the bucket: more than the killed node's %d archivers could have had in hand", len(left), archivers)
		}
	}
	time.Sleep(300 * time.Millisecond) // room for a late duplicate to show
	for _, nd := range nodes[1:] {
		nd.stop()
	}

	filed := map[string]int{}     // copies of each message, on all nodes
	onVictim := map[string]bool{} // messages the killed node filed
	perNode := []string{}
	for _, nd := range nodes {
		s, u := nd.filed()
		perNode = append(perNode, fmt.Sprintf("%s: %d sent, %d undeliverable", nd.name, len(s), len(u)))
		for _, id := range s {
			filed[id]++
			if nd == victim {
				onVictim[id] = true
			}
		}
		if len(u) > 0 {
			t.Errorf("node %s filed as undeliverable: %v\n%s", nd.name, u, nd.log())
		}
	}
	t.Logf("filed: %s", strings.Join(perNode, "; "))
	ids := map[string]int{}
	by := map[string][]string{} // who sent each message, and when
	for _, m := range srv.Messages() {
		for _, id := range msgID.FindAllSubmatch(m.Data, -1) {
			ids[string(id[1])]++
			by[string(id[1])] = append(by[string(id[1])], fmt.Sprintf("%s at %s", m.Helo, m.Received.Format("15:04:05.000")))
		}
	}
	dups, refiled := 0, 0
	for i := range n {
		id := fmt.Sprintf("cluster-%d@example.com", i)
		switch {
		case filed[id] == 1:
		case filed[id] == 2 && onVictim[id] && !strictClusterFiling:
			// The known window (see strictClusterFiling): the killed node
			// had written its copy but not yet acknowledged the message.
			refiled++
			t.Logf("%s filed twice: by the killed node before its ack, and again by the node that took it over", id)
		default:
			t.Errorf("%s filed %d times across the nodes, want once", id, filed[id])
		}
		if ids[id] == 0 {
			t.Errorf("%s never reached the server", id)
		}
		if ids[id] > 1 {
			dups += ids[id] - 1
			t.Logf("%s sent %d times: %s", id, ids[id], strings.Join(by[id], ", "))
		}
	}
	// The killed node files with its archivers: at most one message per
	// archiver was between its Sent copy and its ack.
	if refiled > archivers {
		t.Errorf("%d messages filed both by the killed node and by another: more than its %d archivers could have had in hand", refiled, archivers)
	}
	if len(filed) != n {
		t.Errorf("%d distinct messages filed, want %d", len(filed), n)
	}
	// A duplicate needs the killed node between a 250 and its record: at
	// most one per session it had. At after-dot, the message it stopped on
	// is one.
	t.Logf("%d duplicates at the server (bound %d)", dups, threads)
	if dups > threads {
		t.Errorf("%d duplicates after killing one node with %d sessions: more than the kill explains", dups, threads)
	}
	if strings.HasPrefix(crashAt, "after-dot") && dups == 0 {
		t.Errorf("killed after a 250 and before its record, yet no message was sent twice")
	}
	if t.Failed() {
		for _, nd := range nodes {
			t.Logf("log of %s:\n%s", nd.name, nd.log())
		}
	}
}

// streamEmpty waits until the stream holds no message and the consumer has
// none pending or unacknowledged: everything was filed and acknowledged,
// nothing held or left behind. It returns the keys left in the state
// bucket.
func streamEmpty(t *testing.T, c *natstest.Cluster) []string {
	t.Helper()
	_, js := natstest.Connect(t, c.URL())
	var why string
	var keys []string
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		keys, why = streamLeft(js)
		if why == "" {
			return keys
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("the stream is not empty: %s", why)
	return keys
}

func streamLeft(js jetstream.JetStream) ([]string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	str, err := js.Stream(ctx, stream.DefaultStream)
	if err != nil {
		return nil, err.Error()
	}
	info, err := str.Info(ctx)
	if err != nil {
		return nil, err.Error()
	}
	if info.State.Msgs != 0 {
		return nil, fmt.Sprintf("%d messages in the stream", info.State.Msgs)
	}
	cons, err := str.Consumer(ctx, "smtpq")
	if err != nil {
		return nil, err.Error()
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		return nil, err.Error()
	}
	if ci.NumPending != 0 || ci.NumAckPending != 0 {
		return nil, fmt.Sprintf("consumer: %d pending, %d unacknowledged", ci.NumPending, ci.NumAckPending)
	}
	kv, err := js.KeyValue(ctx, stream.DefaultStream+"_state")
	if err != nil {
		return nil, err.Error()
	}
	keys, err := kv.Keys(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, err.Error()
	}
	return keys, ""
}
