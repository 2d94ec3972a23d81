package natstest

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A replicated work queue loses nothing when one node of three is lost in
// the middle of the work, and the node comes back with the stream.
func TestClusterNodeLost(t *testing.T) {
	start := time.Now()
	c := NewCluster(t, 3)
	t.Logf("cluster ready in %v", time.Since(start))

	if got := len(c.Servers()); got != 3 {
		t.Fatalf("Servers() has %d nodes, want 3", got)
	}
	urls := c.URLs()
	if len(urls) != 3 || len(slices.Compact(slices.Sorted(slices.Values(urls)))) != 3 {
		t.Fatalf("URLs() = %v, want 3 different URLs", urls)
	}
	if c.Leader() < 0 {
		t.Fatal("no meta leader after NewCluster")
	}

	_, js := Connect(t, c.URL())
	ctx := within(t, 45*time.Second)

	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:      "MAIL",
		Subjects:  []string{"mail.>"},
		Retention: jetstream.WorkQueuePolicy,
		Storage:   jetstream.FileStorage,
		Replicas:  3,
	})
	if err != nil {
		t.Fatalf("CreateStream: %v", err)
	}
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:   "workers",
		AckPolicy: jetstream.AckExplicitPolicy,
		AckWait:   2 * time.Second,
	})
	if err != nil {
		t.Fatalf("CreateConsumer: %v", err)
	}

	const n = 100
	publish := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			id := fmt.Sprintf("mail-%03d", i)
			if err := publishUntilAcked(ctx, js, "mail.out", id, []byte(id)); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(0, n)

	// Lose the node that leads the stream: the hardest case, since the
	// stream must elect a new leader before it takes more.
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream Info: %v", err)
	}
	lost := -1
	for i, s := range c.Servers() {
		if info.Cluster != nil && s.Name() == info.Cluster.Leader {
			lost = i
		}
	}
	if lost < 0 {
		t.Fatalf("stream leader %v is none of the nodes", info.Cluster)
	}
	t.Logf("100 published; stopping node %d, the stream leader", lost)
	c.Stop(lost)
	if c.Servers()[lost].Running() {
		t.Fatalf("node %d still running after Stop", lost)
	}
	c.WaitForLeader()

	publish(n, 2*n)
	t.Logf("100 more published with node %d down after %v", lost, time.Since(start))
	got, err := drain(ctx, cons, 2*n)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("all arrived after %v", time.Since(start))
	if len(got) != 2*n {
		t.Errorf("%d different messages arrived, want %d", len(got), 2*n)
	}
	for i := range 2 * n {
		if id := fmt.Sprintf("mail-%03d", i); got[id] == 0 {
			t.Errorf("%s never arrived", id)
		}
	}

	c.Restart(lost)
	if !c.Servers()[lost].Running() {
		t.Fatalf("node %d not running after Restart", lost)
	}
	// The restarted node catches up with the stream: it has a replica of
	// it again, current with the leader.
	deadline := time.Now().Add(20 * time.Second)
	for {
		try, cancel := context.WithTimeout(ctx, time.Second)
		info, err := stream.Info(try)
		cancel()
		if err == nil && info.Cluster != nil && replicaCurrent(info.Cluster, c.Servers()[lost].Name()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %d has no current replica of the stream after Restart: %+v (err %v)", lost, info, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("node %d back and current after %v", lost, time.Since(start))
}

func replicaCurrent(ci *jetstream.ClusterInfo, name string) bool {
	if ci.Leader == name {
		return true
	}
	for _, r := range ci.Replicas {
		if r.Name == name && r.Current && !r.Offline {
			return true
		}
	}
	return false
}

// Stopping the meta leader leaves the others to elect a new one.
func TestClusterMetaLeaderLost(t *testing.T) {
	c := NewCluster(t, 3)
	old := c.Leader()
	if old < 0 {
		t.Fatal("no meta leader after NewCluster")
	}
	c.Stop(old)
	if now := c.WaitForLeader(); now == old {
		t.Fatalf("stopped node %d is still the meta leader", old)
	}
	c.Restart(old)
	if c.WaitForLeader() < 0 {
		t.Fatal("no meta leader after Restart")
	}
}
