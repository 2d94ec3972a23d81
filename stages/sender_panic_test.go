package stages

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// panicConn panics on Read, as a bug brought out by a server's bytes
// would, and records whether it was closed.
type panicConn struct {
	net.Conn
	closed atomic.Bool
}

func (c *panicConn) Read([]byte) (int, error) { panic("odd bytes from the server s3cret-pw") }
func (c *panicConn) Close() error {
	c.closed.Store(true)
	return c.Conn.Close()
}

// A panic while a session opens fails the job as transient, closes the
// connection it was opening, and is logged (redacted) and reported.
func TestPanicWhileOpeningFailsTheJob(t *testing.T) {
	defer goleak.VerifyNone(t)
	client, server := net.Pipe()
	defer server.Close()
	pc := &panicConn{Conn: client}
	core, logs := observer.New(zap.ErrorLevel)
	s := newPipeSender()
	s.Log = zap.New(core)
	s.Dial = func(context.Context, string, string) (net.Conn, error) { return pc, nil }
	var reported []string
	s.Panicked = func(file, text string) { reported = append(reported, file+": "+text) }

	job := pipeJob("a@example.org", "b@example.org")
	job.Route = Route{Host: "127.0.0.1", Port: 25, TLS: queuefile.TLSNone, Username: "u", Password: queuefile.NewSecret("s3cret-pw")}
	var cur *session
	report, ok := s.attempt(context.Background(), context.Background(), &cur, Assignment{}, job)
	if ok || report != nil || cur != nil {
		t.Fatalf("attempt = %v, %v with session %v; want false, no report, no session", report, ok, cur)
	}
	if !pc.closed.Load() {
		t.Error("the connection was left open")
	}
	o := job.Outcome
	if o.Verdict != Deferred || !o.Attempted || o.Err == nil || o.Err.Step != "local" || !strings.Contains(o.Err.Text, "odd bytes from the server") {
		t.Fatalf("outcome %+v (%v), want a transient local failure naming the panic", o, o.Err)
	}
	if len(o.Rcpts) != 2 || o.Rcpts[0].Status != RcptDeferred || o.Rcpts[1].Addr != "b@example.org" {
		t.Errorf("recipients %+v, want both deferred", o.Rcpts)
	}
	if strings.Contains(o.Err.Text, "s3cret-pw") {
		t.Errorf("the password shows in the error: %s", o.Err.Text)
	}
	entries := logs.FilterMessage(SenderPanicLog).All()
	if len(entries) != 1 || len(reported) != 1 || !strings.Contains(reported[0], job.Name) {
		t.Fatalf("%d log entries, reported %q; want one of each", len(entries), reported)
	}
	if st, _ := entries[0].ContextMap()["stack"].(string); !strings.Contains(st, "(*Sender).open") {
		t.Errorf("logged stack does not show where it panicked:\n%s", st)
	}
}

// A route whose TLS mode is not one of the constants (an embedder's
// "STARTTLS") is refused before any connection, never sent in plain text.
func TestSenderRefusesAnUnknownTLSMode(t *testing.T) {
	dialed := false
	s := &Sender{
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dialed = true
			return nil, errors.New("no dialing here")
		},
		Log: zaptest.NewLogger(t),
	}
	for _, mode := range []queuefile.TLSMode{"STARTTLS", "Implicit", "", "tls"} {
		sess, e := s.open(t.Context(), Route{Host: "127.0.0.1", Port: 25, TLS: mode})
		if sess != nil || e == nil || e.Temporary || e.Step != "tls" || !strings.Contains(e.Error(), "unknown TLS mode") {
			t.Errorf("TLS mode %q: session %v, error %v; want a permanent tls error", mode, sess, e)
		}
	}
	if dialed {
		t.Error("the Sender dialed with an unknown TLS mode")
	}
}
