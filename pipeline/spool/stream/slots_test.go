package stream_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
)

func openSlots(t *testing.T, js jetstream.JetStream, node string, ttl time.Duration, onNodes func(int)) *stream.Slots {
	t.Helper()
	s, err := stream.OpenSlots(t.Context(), js, "", 1, node, ttl, onNodes, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// A host's sessions are counted across nodes: with max 2, two sessions on
// one node leave none for the other until one ends; a dead node's slots are
// free again after the TTL.
func TestSlotsHoldAcrossNodes(t *testing.T) {
	srv := natstest.NewServer(t)
	a := openSlots(t, connect(t, srv.URL()), "a", time.Second, nil)
	b := openSlots(t, connect(t, srv.URL()), "b", time.Second, nil)

	r1, ok1 := a.Take("mx.example.org", 2)
	r2, ok2 := a.Take("mx.example.org", 2)
	if !ok1 || !ok2 {
		t.Fatal("node a could not take two slots of two")
	}
	if _, ok := b.Take("mx.example.org", 2); ok {
		t.Fatal("node b took a third session of a host that allows two")
	}
	if _, ok := b.Take("[2001:db8::1]", 1); !ok {
		t.Fatal("another host's slot was refused")
	}
	time.Sleep(1500 * time.Millisecond) // past the TTL: renewals keep a's leases
	if _, ok := b.Take("mx.example.org", 2); ok {
		t.Fatal("a lease expired while its node renewed it")
	}
	r1()
	rb, ok := b.Take("mx.example.org", 2)
	if !ok {
		t.Fatal("a slot given back was not free")
	}
	rb()
	r2()

	// A node that dies: its connection goes, its leases are not renewed.
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	dead, err := stream.OpenSlots(t.Context(), js, "", 1, "dead", time.Second, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := dead.Take("slow.example.org", 1); !ok {
		t.Fatal("the doomed node took no slot")
	}
	nc.Close()
	defer dead.Close()
	if _, ok := b.Take("slow.example.org", 1); ok {
		t.Fatal("a live lease was taken")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if release, ok := b.Take("slow.example.org", 1); ok {
			release()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a dead node's slot was never freed")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Nodes are counted as they come and go, for each one's share of a rate.
func TestSlotsCountNodes(t *testing.T) {
	srv := natstest.NewServer(t)
	counts := make(chan int, 16)
	a := openSlots(t, connect(t, srv.URL()), "a", 600*time.Millisecond, func(n int) { counts <- n })
	if got := <-counts; got != 1 {
		t.Fatalf("alone: %d nodes", got)
	}
	b, err := stream.OpenSlots(t.Context(), connect(t, srv.URL()), "", 1, "b", 600*time.Millisecond, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	waitCount(t, counts, 2)
	if a.Nodes() != 2 {
		t.Errorf("Nodes() = %d, want 2", a.Nodes())
	}
	b.Close()
	waitCount(t, counts, 1)
}

func waitCount(t *testing.T, counts <-chan int, want int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case n := <-counts:
			if n == want {
				return
			}
		case <-timeout:
			t.Fatalf("the node count never became %d", want)
		}
	}
}

// A pause recorded by one node reaches every node, its own included; a
// node that opens later finds it.
func TestBreakersShared(t *testing.T) {
	srv := natstest.NewServer(t)
	type pause struct {
		host  string
		until time.Time
	}
	open := func(name string) (*stream.Breakers, chan pause) {
		ch := make(chan pause, 8)
		b, err := stream.OpenBreakers(t.Context(), connect(t, srv.URL()), "", 1, func(h string, u time.Time) { ch <- pause{h, u} }, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(b.Close)
		return b, ch
	}
	a, _ := open("a")
	_, bch := open("b")
	until := time.Now().Add(time.Minute).UTC().Truncate(time.Second)
	a.Pause("mx.example.org", until)
	want := func(ch chan pause, until time.Time) {
		t.Helper()
		select {
		case p := <-ch:
			if p.host != "mx.example.org" || !p.until.Equal(until) {
				t.Errorf("got %+v, want mx.example.org until %v", p, until)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the pause did not reach the node")
		}
	}
	want(bch, until)
	_, cch := open("c") // later
	want(cch, until)
	a.Pause("mx.example.org", time.Time{})
	want(bch, time.Time{})
	want(cch, time.Time{})
}
