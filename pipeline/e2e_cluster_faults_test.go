package pipeline_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
	"github.com/smtpq/smtpq/stages"
)

// Two nodes drain an R3 stream; the NATS server that leads the stream is
// stopped in the middle. The other two keep a majority, a new leader is
// elected, the nodes reconnect: every message reaches the SMTP server once
// and is filed once, by one node, and the stream ends empty. The server
// then comes back and catches up.
func TestClusterNATSNodeLostMidDrain(t *testing.T) {
	const n = 100
	c := natstest.NewCluster(t, 3)
	// A short pause before each 250 keeps the drain going long enough for
	// the stop to land in it.
	srv := smtptest.NewServer(t, func(s *smtptest.Server) {
		s.Fault = smtptest.FaultAt(smtptest.AfterDot, smtptest.Fault{Stall: 10 * time.Millisecond})
	})
	// The ack wait must outlast the election of new stream and consumer
	// leaders (a few seconds here under the race detector): a node's
	// in-progress heartbeats cannot land before it, and with a shorter
	// wait the new leader gives every held message to a node again, to be
	// sent again. The default (1m) leaves room enough.
	a := pipelinetest.Start(t, pipelinetest.Config(func(cfg *pipeline.Config) {
		cfg.NATS = &pipeline.NATSConfig{URLs: c.URLs(), Replicas: 3, Node: "a", AckWait: pipeline.Duration(10 * time.Second)}
	}))
	b := clusterNode(t, a, "b")

	publish, closePub, err := pipeline.Publisher(a.Config)
	if err != nil {
		t.Fatal(err)
	}
	defer closePub()
	q := *a.Queue
	q.Dir = t.TempDir() // the producer's temporary copies
	q.Publish = publish
	for i := range n {
		msg := fmt.Sprintf("From: a@example.org\r\nTo: x@example.org\r\nSubject: lost %d\r\nMessage-ID: <lost-%d@example.org>\r\n\r\nbody\r\n", i, i)
		if _, err := q.Enqueue(strings.NewReader(msg), srv.Params("x@example.org")); err != nil {
			t.Fatal(err)
		}
	}

	sentBy := func() map[string][]string { // Job.Name -> the nodes that filed it as sent
		m := map[string][]string{}
		for _, nd := range []*pipelinetest.Env{a, b} {
			for _, f := range nd.Filed() {
				if f.Verdict == stages.Sent && f.Err == nil {
					m[f.Job.Name] = append(m[f.Job.Name], nd.Config.NATS.Node)
				}
			}
		}
		return m
	}
	// Mid-drain: a fifth of the messages filed.
	deadline := time.Now().Add(pipelinetest.WaitTimeout)
	for len(sentBy()) < n/5 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d filed in %v", len(sentBy()), n, pipelinetest.WaitTimeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
	leader := streamLeader(t, c)
	before := len(sentBy())
	c.Stop(leader)
	t.Logf("stopped NATS server %d, the stream's leader, with %d of %d filed", leader, before, n)
	if before >= n {
		t.Fatal("everything was filed before the stop: the test proves nothing")
	}

	deadline = time.Now().Add(40 * time.Second)
	for len(sentBy()) < n && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // room for a late duplicate to show

	got := map[string]int{}
	for _, m := range srv.Messages() {
		for _, id := range messageID.FindAllSubmatch(m.Data, -1) {
			got[string(id[1])]++
		}
	}
	for i := range n {
		if id := fmt.Sprintf("<lost-%d@example.org>", i); got[id] != 1 {
			t.Errorf("%s reached the server %d times, want once", id, got[id])
		}
	}
	sent := sentBy()
	for name, by := range sent {
		if len(by) != 1 {
			t.Errorf("%s filed as sent %d times, by %v", name, len(by), by)
		}
	}
	if len(sent) != n {
		t.Errorf("%d messages filed as sent, want %d", len(sent), n)
	}
	copies := map[string]int{}
	for _, nd := range []*pipelinetest.Env{a, b} {
		for _, f := range pipelinetest.Files(t, nd.Config.SentDir) {
			b, err := os.ReadFile(filepath.Join(nd.Config.SentDir, f))
			if err != nil {
				t.Fatal(err)
			}
			if m := messageID.FindSubmatch(b); m != nil {
				copies[string(m[1])]++
			}
		}
		if u := pipelinetest.Files(t, nd.Config.UndeliverableDir); len(u) != 0 {
			t.Errorf("node %s: undeliverable %v", nd.Config.NATS.Node, u)
		}
	}
	for i := range n {
		if id := fmt.Sprintf("<lost-%d@example.org>", i); copies[id] != 1 {
			t.Errorf("%s: %d Sent copies on the two nodes, want 1", id, copies[id])
		}
	}

	if why := waitStreamDrained(t, c, 15*time.Second); why != "" {
		t.Errorf("with one server down: %s", why)
	}
	c.Restart(leader)
	if why := waitStreamDrained(t, c, 15*time.Second); why != "" {
		t.Errorf("after the server came back: %s", why)
	}
}

// streamLeader returns the index of the NATS server that leads the
// stream.
func streamLeader(t *testing.T, c *natstest.Cluster) int {
	t.Helper()
	_, js := natstest.Connect(t, c.URL())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	str, err := js.Stream(ctx, stream.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Cluster == nil {
		t.Fatal("the stream has no cluster information")
	}
	for i, s := range c.Servers() {
		if s.NATS() != nil && s.NATS().Name() == info.Cluster.Leader {
			return i
		}
	}
	t.Fatalf("stream leader %q is none of the cluster's servers", info.Cluster.Leader)
	return -1
}

// waitStreamDrained waits until the stream holds no message and its
// consumer none pending or unacknowledged, as seen through any server, and
// returns why not if it does not come to that within d.
func waitStreamDrained(t *testing.T, c *natstest.Cluster, d time.Duration) string {
	t.Helper()
	_, js := natstest.Connect(t, c.URL())
	why := ""
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		why = drained(js)
		if why == "" {
			return ""
		}
		time.Sleep(50 * time.Millisecond)
	}
	return why
}

func drained(js jetstream.JetStream) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	str, err := js.Stream(ctx, stream.DefaultStream)
	if err != nil {
		return err.Error()
	}
	info, err := str.Info(ctx)
	if err != nil {
		return err.Error()
	}
	if info.State.Msgs != 0 {
		return fmt.Sprintf("%d messages left in the stream", info.State.Msgs)
	}
	cons, err := str.Consumer(ctx, "smtpq")
	if err != nil {
		return err.Error()
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		return err.Error()
	}
	if ci.NumPending != 0 || ci.NumAckPending != 0 {
		return fmt.Sprintf("consumer: %d pending, %d unacknowledged", ci.NumPending, ci.NumAckPending)
	}
	return ""
}
