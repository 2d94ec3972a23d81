package smtptest

import (
	"context"
	"errors"
	"io"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// waitTimeout bounds every wait in these tests.
const waitTimeout = 10 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// dial connects a go-smtp client with bounded timeouts; it is closed when
// the test ends.
func dial(t *testing.T, addr string) *smtp.Client {
	t.Helper()
	c, err := dialClient(addr)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialClient(addr string) (*smtp.Client, error) {
	conn, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		return nil, err
	}
	c := smtp.NewClient(conn)
	c.CommandTimeout = waitTimeout
	c.SubmissionTimeout = waitTimeout
	return c, nil
}

// dialRaw opens a connection for speaking SMTP by hand.
func dialRaw(t *testing.T, addr string) (net.Conn, *textproto.Conn) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	conn.SetDeadline(time.Now().Add(waitTimeout))
	t.Cleanup(func() { conn.Close() })
	return conn, textproto.NewConn(conn)
}

// expect sends cmd (unless empty) and checks the code of the reply, returning
// its text.
func expect(t *testing.T, tp *textproto.Conn, cmd string, code int) string {
	t.Helper()
	if cmd != "" {
		if err := tp.PrintfLine("%s", cmd); err != nil {
			t.Fatalf("send %q: %v", cmd, err)
		}
	}
	got, msg, err := tp.ReadResponse(0)
	if err != nil && got == 0 {
		t.Fatalf("reply to %q: %v", cmd, err)
	}
	if got != code {
		t.Fatalf("reply to %q = %d %q, want %d", cmd, got, msg, code)
	}
	return msg
}

// send runs one mail transaction on c.
func send(c *smtp.Client, from string, to []string, body string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, rcpt := range to {
		if err := c.Rcpt(rcpt, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, body); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

// converse runs a whole session (hello, optional AUTH PLAIN, one message,
// RSET, QUIT) and reports the stage at which it failed, "" if none.
func converse(addr, user, pass string) (stage string, err error) {
	c, err := dialClient(addr)
	if err != nil {
		return "dial", err
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		return "hello", err
	}
	if user != "" {
		if err := c.Auth(sasl.NewPlainClient("", user, pass)); err != nil {
			return "auth", err
		}
	}
	if err := c.Mail("alice@example.org", nil); err != nil {
		return "mail", err
	}
	if err := c.Rcpt("bob@example.org", nil); err != nil {
		return "rcpt", err
	}
	w, err := c.Data()
	if err != nil {
		return "data", err
	}
	if _, err := io.WriteString(w, testBody); err != nil {
		return "dot", err
	}
	if err := w.Close(); err != nil {
		return "dot", err
	}
	if err := c.Reset(); err != nil {
		return "rset", err
	}
	if err := c.Quit(); err != nil {
		return "quit", err
	}
	return "", nil
}

const testBody = "Subject: test\r\n\r\nHello.\r\n"

// wantSMTPError checks that err is an *smtp.SMTPError equal to want.
func wantSMTPError(t *testing.T, err error, want *smtp.SMTPError) {
	t.Helper()
	var got *smtp.SMTPError
	if !errors.As(err, &got) {
		t.Fatalf("error = %v (%T), want SMTP error %d", err, err, want.Code)
	}
	if got.Code != want.Code || got.EnhancedCode != want.EnhancedCode || got.Message != want.Message {
		t.Fatalf("error = %d %v %q, want %d %v %q",
			got.Code, got.EnhancedCode, got.Message, want.Code, want.EnhancedCode, want.Message)
	}
}

// wantConnError checks that err is a connection failure, not a reply.
func wantConnError(t *testing.T, err error) {
	t.Helper()
	var smtpErr *smtp.SMTPError
	if err == nil {
		t.Fatal("no error, want a connection error")
	}
	if errors.As(err, &smtpErr) {
		t.Fatalf("error = %v, want a connection error, not a reply", err)
	}
}

// pointLog records the fault points a server reaches.
type pointLog struct {
	mu     sync.Mutex
	points []FaultPoint
}

func (l *pointLog) add(p FaultPoint) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.points = append(l.points, p)
}

func (l *pointLog) get() []FaultPoint {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]FaultPoint(nil), l.points...)
}

func (l *pointLog) steps() string {
	var b strings.Builder
	for i, p := range l.get() {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.Step.String())
	}
	return b.String()
}

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
