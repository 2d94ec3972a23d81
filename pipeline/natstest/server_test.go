package natstest

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestServerWorkQueue(t *testing.T) {
	srv := NewServer(t)
	if !strings.HasPrefix(srv.URL(), "nats://127.0.0.1:") {
		t.Fatalf("URL() = %q, want nats://127.0.0.1:port", srv.URL())
	}
	_, js := Connect(t, srv.URL())
	ctx := within(t, 20*time.Second)

	stream, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:      "WORK",
		Subjects:  []string{"work.>"},
		Retention: jetstream.WorkQueuePolicy,
		Storage:   jetstream.FileStorage,
	})
	if err != nil {
		t.Fatalf("CreateStream: %v", err)
	}
	const n = 10
	for i := range n {
		if _, err := js.Publish(ctx, "work.mail", fmt.Appendf(nil, "msg-%d", i)); err != nil {
			t.Fatalf("Publish %d: %v", i, err)
		}
	}
	cons, err := stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:   "workers",
		AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatalf("CreateConsumer: %v", err)
	}
	got, err := drain(ctx, cons, n)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if c := got[fmt.Sprintf("msg-%d", i)]; c != 1 {
			t.Errorf("msg-%d arrived %d times, want once", i, c)
		}
	}
	// A work queue drops what was acknowledged.
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream Info: %v", err)
	}
	if info.State.Msgs != 0 {
		t.Errorf("stream holds %d messages after all were acknowledged, want 0", info.State.Msgs)
	}
}

// Restart brings a server back on its URL with the messages it had stored.
func TestServerRestartKeepsStore(t *testing.T) {
	srv := NewServer(t, WithLogging())
	url := srv.URL()
	// A request sent between the server's shutdown and the client noticing
	// it is lost, so the test waits for the client to reconnect.
	reconnected := make(chan struct{}, 1)
	_, js := Connect(t, url, nats.ReconnectHandler(func(*nats.Conn) {
		select {
		case reconnected <- struct{}{}:
		default:
		}
	}))
	ctx := within(t, 20*time.Second)

	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "KEEP", Subjects: []string{"keep"}, Storage: jetstream.FileStorage,
	}); err != nil {
		t.Fatalf("CreateStream: %v", err)
	}
	for i := range 5 {
		if _, err := js.Publish(ctx, "keep", fmt.Appendf(nil, "%d", i)); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}

	srv.Shutdown()
	if srv.Running() || srv.NATS() != nil {
		t.Fatal("server still running after Shutdown")
	}
	srv.Shutdown() // a second Shutdown does nothing
	srv.Restart()
	if srv.URL() != url {
		t.Errorf("URL after Restart = %q, want %q", srv.URL(), url)
	}
	if !srv.Running() {
		t.Fatal("server not running after Restart")
	}
	// The client reconnects to the same address by itself.
	select {
	case <-reconnected:
	case <-ctx.Done():
		t.Fatal("client did not reconnect after Restart")
	}
	stream, err := js.Stream(ctx, "KEEP")
	if err != nil {
		t.Fatalf("Stream after Restart: %v", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatalf("stream Info: %v", err)
	}
	if info.State.Msgs != 5 {
		t.Errorf("stream holds %d messages after Restart, want 5", info.State.Msgs)
	}
}

// A message over the maximum payload is refused before it is sent.
func TestServerMaxPayload(t *testing.T) {
	srv := NewServer(t, WithMaxPayload(1024))
	nc, _ := Connect(t, srv.URL())
	if got := nc.MaxPayload(); got != 1024 {
		t.Fatalf("client sees max payload %d, want 1024", got)
	}
	if err := nc.Publish("big", make([]byte, 1024)); err != nil {
		t.Errorf("Publish at the limit: %v", err)
	}
	if err := nc.Publish("big", make([]byte, 1025)); !errors.Is(err, nats.ErrMaxPayload) {
		t.Errorf("Publish over the limit: err = %v, want %v", err, nats.ErrMaxPayload)
	}
}

// WithOptions reaches the server options; the server reports what it was
// given.
func TestServerWithOptions(t *testing.T) {
	srv := NewServer(t, WithOptions(func(o *server.Options) { o.MaxConn = 7 }))
	ns := srv.NATS()
	if ns == nil {
		t.Fatal("NATS() = nil for a running server")
	}
	varz, err := ns.Varz(nil)
	if err != nil {
		t.Fatalf("Varz: %v", err)
	}
	if varz.MaxConn != 7 {
		t.Errorf("MaxConn = %d, want 7", varz.MaxConn)
	}
	if varz.Host != "127.0.0.1" {
		t.Errorf("Host = %q, want 127.0.0.1", varz.Host)
	}
}

// The server is gone when the test that started it ends.
func TestServerShutdownWithTest(t *testing.T) {
	var srv *Server
	var addr string
	t.Run("inner", func(t *testing.T) {
		srv = NewServer(t)
		addr = strings.TrimPrefix(srv.URL(), "nats://")
		if !srv.Running() {
			t.Fatal("server not running")
		}
	})
	if srv.Running() {
		t.Fatal("server still running after its test ended")
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after its test ended", addr)
	}
}
