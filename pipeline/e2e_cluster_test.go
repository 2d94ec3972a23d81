package pipeline_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

	nc, err := nats.Connect(c.URLs()[1])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
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
