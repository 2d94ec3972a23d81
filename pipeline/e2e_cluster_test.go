package pipeline_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
	"github.com/smtpq/smtpq/stages"
)

// clusterNode returns another node of e's cluster: the same keys and
// configuration, its own folders.
func clusterNode(t *testing.T, e *pipelinetest.Env, name string) *pipelinetest.Env {
	t.Helper()
	dir := t.TempDir()
	n := pipelinetest.NewShared(t, e.Config, func(c *pipeline.Config) {
		c.QueueDir = filepath.Join(dir, "queue")
		c.SentDir = filepath.Join(dir, "sent")
		c.UndeliverableDir = filepath.Join(dir, "undeliverable")
		nc := *c.NATS
		nc.Node = name
		c.NATS = &nc
	})
	n.Start(pipeline.Options{})
	return n
}

// Two nodes on one stream of a 3-server JetStream cluster drain messages
// dropped in one node's queue_dir and published straight to the stream:
// each reaches the SMTP server once, and is filed once, by one node.
func TestClusterDrainsOnce(t *testing.T) {
	c := natstest.NewCluster(t, 3)
	srv := smtptest.NewServer(t)
	a := pipelinetest.Start(t, pipelinetest.Config(func(cfg *pipeline.Config) {
		cfg.NATS = &pipeline.NATSConfig{URLs: c.URLs(), Replicas: 3, Node: "a", AckWait: pipeline.Duration(5 * time.Second)}
	}))
	b := clusterNode(t, a, "b")

	_, js := natstest.Connect(t, c.URLs()[1])
	published := *b.Queue
	published.Publish = func(name string, sealed []byte) (string, error) {
		return stream.Publish(t.Context(), js, "", name, sealed)
	}

	const dropped, direct = 30, 20
	for i := range dropped {
		a.Enqueue([]byte(fmt.Sprintf("From: a@example.org\r\nSubject: dropped %d\r\n\r\nbody\r\n", i)), srv.Params("x@example.org"))
	}
	for i := range direct {
		_, err := published.Enqueue(bytes.NewReader([]byte(fmt.Sprintf("From: a@example.org\r\nSubject: direct %d\r\n\r\nbody\r\n", i))), srv.Params("x@example.org"))
		if err != nil {
			t.Fatal(err)
		}
	}

	deadline := time.Now().Add(pipelinetest.WaitTimeout)
	for len(srv.Messages()) < dropped+direct && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // room for a duplicate to show
	if got := len(srv.Messages()); got != dropped+direct {
		t.Fatalf("the server got %d messages, want %d, each once", got, dropped+direct)
	}
	// Each message filed as sent once, on one node or the other. The
	// filing follows the server's reply: wait for it.
	var sent map[string]string
	deadline = time.Now().Add(pipelinetest.WaitTimeout)
	for {
		sent = map[string]string{}
		twice := ""
		for _, n := range []*pipelinetest.Env{a, b} {
			for _, f := range n.Filed() {
				if f.Verdict != stages.Sent {
					continue
				}
				if _, ok := sent[f.Job.Name]; ok {
					twice = f.Job.Name
				}
				sent[f.Job.Name] = f.Path
			}
		}
		if twice != "" {
			t.Fatalf("%s filed as sent twice", twice)
		}
		if len(sent) == dropped+direct || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(sent) != dropped+direct {
		t.Fatalf("%d messages filed as sent, want %d", len(sent), dropped+direct)
	}
	n := len(pipelinetest.Files(t, a.Config.SentDir)) + len(pipelinetest.Files(t, b.Config.SentDir))
	if n != dropped+direct {
		t.Errorf("Sent copies on the two nodes: %d, want %d", n, dropped+direct)
	}
	if left := pipelinetest.Files(t, a.Config.QueueDir); len(left) != 0 {
		t.Errorf("dropped files left in queue_dir after publishing: %v", left)
	}
}

// A host's max_connections holds across the nodes: two nodes with four
// threads each never have more than the host's two sessions open at once,
// as the server counts them.
func TestClusterHostCapAcrossNodes(t *testing.T) {
	const cap, n = 2, 40
	tr := newSessionTracker()
	srv := startServer(t, "127.0.0.2", func(s *smtptest.Server) { s.Fault = tr.fault("127.0.0.2") })
	a := pipelinetest.New(t, func(cfg *pipeline.Config) {
		cfg.NATS = &pipeline.NATSConfig{URLs: []string{natstest.NewServer(t).URL()}, Node: "a"}
		cfg.Hosts["127.0.0.2"] = hostLimits(cap)
	})
	for i := range n {
		a.Enqueue(testMessage(i), srv.Params(fmt.Sprintf("user%d@example.org", i)))
	}
	a.Start(pipeline.Options{})
	clusterNode(t, a, "b")

	deadline := time.Now().Add(pipelinetest.WaitTimeout)
	for len(srv.Messages()) < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := len(srv.Messages()); got != n {
		t.Fatalf("the server got %d messages, want %d", got, n)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.max["127.0.0.2"] > cap {
		t.Errorf("%d sessions at once from two nodes, max_connections is %d", tr.max["127.0.0.2"], cap)
	}
	t.Logf("at most %d sessions at once", tr.max["127.0.0.2"])
}

// A message one node filed as undeliverable is requeued by that node when
// an operator asks from anywhere (the queue commands of another node): the
// request names the node, which moves the file from its own Undeliverable
// folder back through its drop folder onto the stream.
func TestClusterRequeueAskedOfTheNodeThatFiledIt(t *testing.T) {
	var refuse atomic.Bool
	refuse.Store(true)
	srv := smtptest.NewServer(t, func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Rcpt && refuse.Load() {
				return noSuchUser
			}
			return smtptest.Fault{}
		}
	})
	nsrv := natstest.NewServer(t)
	a := pipelinetest.Start(t, pipelinetest.Config(func(cfg *pipeline.Config) {
		cfg.NATS = &pipeline.NATSConfig{URLs: []string{nsrv.URL()}, Node: "a"}
	}))
	name := a.Enqueue(testMessage(1), srv.Params("nobody@example.org"))
	if f := a.Wait(name); f.Verdict != stages.Failed {
		t.Fatalf("first try: %v, want failed", f)
	}
	refuse.Store(false)

	_, js := natstest.Connect(t, nsrv.URL())
	var id string
	for deadline := time.Now().Add(5 * time.Second); id == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		rs, err := stream.Records(t.Context(), js, "", name)
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) == 1 && rs[0].State == "undeliverable" && rs[0].Node == "a" {
			id = rs[0].ID
		}
	}
	if id == "" {
		t.Fatal("no record of the undeliverable message on node a")
	}
	if err := stream.RequestRequeue(t.Context(), js, "", id, "a", name); err != nil {
		t.Fatal(err)
	}
	a.WaitFor("the requeued message to be sent", func(fs []stages.Filed) bool {
		for _, f := range fs {
			if f.Job.Name == name && f.Verdict == stages.Sent {
				return true
			}
		}
		return false
	})
	if got := len(srv.Messages()); got != 1 {
		t.Errorf("the server got %d messages, want the requeued one", got)
	}
}
