package smtptest

import (
	"bytes"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestSendIsRecordedExactly(t *testing.T) {
	srv := NewServer(t)
	body := "From: alice@example.org\r\n" +
		"Subject: dots\r\n" +
		"\r\n" +
		"first line\r\n" +
		".leading dot\r\n" +
		"..two dots\r\n" +
		".\r\n" +
		"caf\xc3\xa9 \t trailing space \r\n" +
		"\r\n" +
		"last\r\n"

	start := time.Now()
	c := dial(t, srv.AddrString())
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	to := []string{"bob@example.org", "carol@example.net"}
	if err := send(c, "alice@example.org", to, body); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}

	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("got %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if string(m.Data) != body {
		t.Errorf("Data = %q\nwant   %q", m.Data, body)
	}
	if m.From != "alice@example.org" || !slices.Equal(m.To, to) {
		t.Errorf("envelope = %q -> %q, want alice@example.org -> %q", m.From, m.To, to)
	}
	if m.Session != 1 || m.Seq != 1 || m.Helo != "client.test" || m.AuthUser != "" || m.TLS {
		t.Errorf("Session, Seq, Helo, AuthUser, TLS = %d, %d, %q, %q, %v; want 1, 1, client.test, \"\", false",
			m.Session, m.Seq, m.Helo, m.AuthUser, m.TLS)
	}
	if m.MailOptions.Body != smtp.Body8BitMIME {
		t.Errorf("MailOptions.Body = %q, want 8BITMIME (go-smtp's client sends it when advertised)", m.MailOptions.Body)
	}
	if m.Received.Before(start) || m.Received.After(time.Now()) {
		t.Errorf("Received = %v, not during the test", m.Received)
	}
	if srv.Sessions() != 1 {
		t.Errorf("Sessions = %d, want 1", srv.Sessions())
	}
}

func TestDataIsNotNormalised(t *testing.T) {
	srv := NewServer(t)
	_, tp := dialRaw(t, srv.AddrString())
	expect(t, tp, "", 220)
	expect(t, tp, "EHLO raw.test", 250)
	expect(t, tp, "MAIL FROM:<>", 250)
	expect(t, tp, "RCPT TO:<postmaster@example.org>", 250)
	expect(t, tp, "DATA", 354)
	// A bare LF, a bare CR and dot-stuffing, sent byte for byte.
	if _, err := tp.W.WriteString("a\nb\rc\r\n..d\r\n.\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := tp.W.Flush(); err != nil {
		t.Fatal(err)
	}
	expect(t, tp, "", 250)
	expect(t, tp, "QUIT", 221)

	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("got %d messages, want 1", len(msgs))
	}
	if want := "a\nb\rc\r\n.d\r\n"; string(msgs[0].Data) != want {
		t.Errorf("Data = %q, want %q", msgs[0].Data, want)
	}
	if msgs[0].From != "" {
		t.Errorf("From = %q, want the null reverse path", msgs[0].From)
	}
}

func TestMessagesReturnsCopies(t *testing.T) {
	srv := NewServer(t)
	c := dial(t, srv.AddrString())
	if err := send(c, "a@example.org", []string{"b@example.org"}, testBody); err != nil {
		t.Fatal(err)
	}
	m := srv.Messages()[0]
	m.Data[0] = 'X'
	m.To[0] = "changed"
	again := srv.Messages()[0]
	if string(again.Data) != testBody || again.To[0] != "b@example.org" {
		t.Errorf("changing the result of Messages changed the record: %q %q", again.To, again.Data)
	}
}

func TestSeveralMessagesInOneSession(t *testing.T) {
	var log pointLog
	srv := NewServer(t, func(s *Server) {
		s.Fault = func(p FaultPoint) Fault { log.add(p); return Fault{} }
	})
	c := dial(t, srv.AddrString())
	for i := 1; i <= 3; i++ {
		body := fmt.Sprintf("Subject: %d\r\n\r\nbody %d\r\n", i, i)
		if err := send(c, fmt.Sprintf("s%d@example.org", i), []string{"r@example.org"}, body); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	msgs, err := srv.WaitMessages(testContext(t), 3)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		if m.Session != 1 || m.Seq != i+1 || m.From != fmt.Sprintf("s%d@example.org", i+1) {
			t.Errorf("message %d: Session %d, Seq %d, From %q", i+1, m.Session, m.Seq, m.From)
		}
	}
	var afterDots []int
	for _, p := range log.get() {
		if p.Step == AfterDot {
			afterDots = append(afterDots, p.Message)
		}
	}
	if !slices.Equal(afterDots, []int{1, 2, 3}) {
		t.Errorf("AfterDot Message numbers = %v, want [1 2 3]", afterDots)
	}
}

func TestMailOptions(t *testing.T) {
	srv := NewServer(t, func(s *Server) { s.EnableSMTPUTF8 = true })
	c := dial(t, srv.AddrString())
	if ok, _ := c.Extension("SMTPUTF8"); !ok {
		t.Error("SMTPUTF8 not advertised")
	}
	if ok, _ := c.Extension("8BITMIME"); !ok {
		t.Error("8BITMIME not advertised")
	}
	if err := c.Mail("jörg@example.org", &smtp.MailOptions{UTF8: true, Size: 42}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("zoë@example.org", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte(testBody))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	m := srv.Messages()[0]
	if !m.MailOptions.UTF8 || m.MailOptions.Size != 42 || m.MailOptions.Body != smtp.Body8BitMIME {
		t.Errorf("MailOptions = %+v, want UTF8, Size 42, BODY=8BITMIME", m.MailOptions)
	}
	if m.From != "jörg@example.org" || m.To[0] != "zoë@example.org" {
		t.Errorf("envelope = %q -> %q", m.From, m.To)
	}
}

func TestMaxMessageBytes(t *testing.T) {
	srv := NewServer(t, func(s *Server) { s.MaxMessageBytes = 100 })
	c := dial(t, srv.AddrString())
	if size, ok := c.MaxMessageSize(); !ok || size != 100 {
		t.Errorf("advertised SIZE = %d, %v; want 100", size, ok)
	}
	err := send(c, "a@example.org", []string{"b@example.org"}, strings.Repeat("x", 200)+"\r\n")
	wantSMTPError(t, err, smtp.ErrDataTooLarge)
	if err := send(c, "a@example.org", []string{"b@example.org"}, testBody); err != nil {
		t.Fatalf("small message after large one: %v", err)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || string(msgs[0].Data) != testBody {
		t.Errorf("recorded %d messages, want only the small one", len(msgs))
	}
}

func TestLoopbackOnly(t *testing.T) {
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:0", "[::]:0", "example.com:0", "127.0.0.1"} {
		s := NewUnstartedServer()
		s.Addr = addr
		if err := s.Start(); err == nil {
			s.Close()
			t.Errorf("Start with Addr %q succeeded, want an error", addr)
		}
	}

	s := NewServer(t, func(s *Server) { s.Addr = "localhost:0" })
	if s.Host() != "127.0.0.1" || s.Port() == 0 {
		t.Errorf("Host, Port = %q, %d; want 127.0.0.1 and a port", s.Host(), s.Port())
	}
	if want := "127.0.0.1:" + strconv.Itoa(s.Port()); s.AddrString() != want {
		t.Errorf("AddrString = %q, want %q", s.AddrString(), want)
	}
}

func TestOtherLoopbackAddress(t *testing.T) {
	s := NewUnstartedServer()
	s.Addr = "127.0.0.2:0"
	if err := s.Start(); err != nil {
		if runtime.GOOS != "linux" {
			t.Skipf("127.0.0.2 is not configured here: %v", err)
		}
		t.Fatal(err)
	}
	defer func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	}()
	if s.Host() != "127.0.0.2" {
		t.Errorf("Host = %q, want 127.0.0.2", s.Host())
	}
	c := dial(t, s.AddrString())
	if err := send(c, "a@example.org", []string{"b@example.org"}, testBody); err != nil {
		t.Fatal(err)
	}
	if n := len(s.Messages()); n != 1 {
		t.Errorf("got %d messages, want 1", n)
	}
}

func TestLifecycle(t *testing.T) {
	s := NewUnstartedServer()
	if s.AddrString() != "" || s.Port() != 0 || s.Host() != "" {
		t.Error("unstarted server reports an address")
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	addr := s.AddrString()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if _, err := dialClient(addr); err == nil {
		t.Error("dial after Close succeeded")
	}

	unstarted := NewUnstartedServer()
	if err := unstarted.Close(); err != nil {
		t.Errorf("Close before Start = %v", err)
	}
	if err := unstarted.Start(); err == nil {
		unstarted.Close()
		t.Error("Start after Close succeeded")
	}

	implicit := NewUnstartedServer()
	implicit.ImplicitTLS = true
	if err := implicit.Start(); err == nil {
		implicit.Close()
		t.Error("ImplicitTLS without TLSConfig started")
	}
}

func TestWaitMessagesTimesOut(t *testing.T) {
	srv := NewServer(t)
	c := dial(t, srv.AddrString())
	if err := send(c, "a@example.org", []string{"b@example.org"}, testBody); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := contextWithTimeout(50 * time.Millisecond)
	defer cancel()
	msgs, err := srv.WaitMessages(ctx, 2)
	if err == nil {
		t.Fatal("WaitMessages for 2 of 1 messages succeeded")
	}
	if len(msgs) != 1 || !strings.Contains(err.Error(), "1 of 2") {
		t.Errorf("WaitMessages = %d messages, %v; want 1 and an error saying 1 of 2", len(msgs), err)
	}
}

func TestWaitMessagesWakesUp(t *testing.T) {
	srv := NewServer(t)
	done := make(chan error, 1)
	go func() {
		_, err := srv.WaitMessages(testContext(t), 2)
		done <- err
	}()
	for i := 0; i < 2; i++ {
		c := dial(t, srv.AddrString())
		if err := send(c, "a@example.org", []string{"b@example.org"}, testBody); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestMaxConcurrent(t *testing.T) {
	const n = 5
	arrived := make(chan struct{}, n)
	release := make(chan struct{})
	srv := NewServer(t, func(s *Server) {
		s.Fault = func(p FaultPoint) Fault {
			if p.Step != Hello {
				return Fault{}
			}
			arrived <- struct{}{}
			select {
			case <-release:
				return Fault{}
			case <-time.After(waitTimeout):
				return Reply(421, smtp.EnhancedCode{4, 0, 0}, "barrier timed out")
			}
		}
	})
	var releaseOnce sync.Once
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })

	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			c, err := dialClient(srv.AddrString())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if err := send(c, fmt.Sprintf("s%d@example.org", i), []string{"r@example.org"}, testBody); err != nil {
				errs <- err
				return
			}
			errs <- c.Quit()
		}()
	}
	timeout := time.After(waitTimeout)
	for i := 0; i < n; i++ {
		select {
		case <-arrived:
		case <-timeout:
			t.Fatalf("only %d of %d sessions reached EHLO", i, n)
		}
	}
	if got := srv.Concurrent(); got != n {
		t.Errorf("Concurrent while all sessions wait = %d, want %d", got, n)
	}
	releaseOnce.Do(func() { close(release) })
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Errorf("client: %v", err)
		}
	}
	if err := srv.WaitIdle(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if srv.Concurrent() != 0 || srv.MaxConcurrent() != n || srv.Sessions() != n {
		t.Errorf("Concurrent, MaxConcurrent, Sessions = %d, %d, %d; want 0, %d, %d",
			srv.Concurrent(), srv.MaxConcurrent(), srv.Sessions(), n, n)
	}
	msgs := srv.Messages()
	var sessions []int
	for _, m := range msgs {
		sessions = append(sessions, m.Session)
	}
	slices.Sort(sessions)
	if !slices.Equal(sessions, []int{1, 2, 3, 4, 5}) {
		t.Errorf("messages came from sessions %v, want 1 to 5", sessions)
	}
}

func TestSequentialSessions(t *testing.T) {
	srv := NewServer(t)
	for i := 1; i <= 3; i++ {
		c := dial(t, srv.AddrString())
		if err := send(c, "a@example.org", []string{"b@example.org"}, testBody); err != nil {
			t.Fatal(err)
		}
		if err := c.Quit(); err != nil {
			t.Fatal(err)
		}
		if err := srv.WaitIdle(testContext(t)); err != nil {
			t.Fatal(err)
		}
		if srv.Sessions() != i {
			t.Errorf("Sessions = %d, want %d", srv.Sessions(), i)
		}
	}
	if srv.MaxConcurrent() != 1 {
		t.Errorf("MaxConcurrent = %d, want 1", srv.MaxConcurrent())
	}
	for i, m := range srv.Messages() {
		if m.Session != i+1 || m.Seq != 1 {
			t.Errorf("message %d: Session %d, Seq %d; want %d, 1", i, m.Session, m.Seq, i+1)
		}
	}
}

func TestClientDisconnectEndsSession(t *testing.T) {
	srv := NewServer(t)
	c := dial(t, srv.AddrString())
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if srv.Concurrent() != 1 {
		t.Errorf("Concurrent = %d, want 1", srv.Concurrent())
	}
	c.Close() // no QUIT
	if err := srv.WaitIdle(testContext(t)); err != nil {
		t.Fatal(err)
	}
}

func TestDebugTranscript(t *testing.T) {
	var buf syncBuffer
	srv := NewServer(t, func(s *Server) { s.Debug = &buf })
	c := dial(t, srv.AddrString())
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	if err := srv.WaitIdle(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if s := buf.String(); !strings.Contains(s, "EHLO client.test") || !strings.Contains(s, "221 2.0.0 Bye") {
		t.Errorf("transcript lacks EHLO or QUIT:\n%s", s)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestMaxRecipients(t *testing.T) {
	srv := NewServer(t, func(s *Server) { s.MaxRecipients = 2 })
	c := dial(t, srv.AddrString())
	err := send(c, "a@example.org", []string{"b@example.org", "c@example.org", "d@example.org"}, testBody)
	wantSMTPError(t, err, &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Maximum limit of 2 recipients reached"})
}
