package smtptest

import (
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestStepString(t *testing.T) {
	want := "Greeting Hello Auth Mail Rcpt Data AfterDot Reset Quit"
	var got []string
	for s := Greeting; s <= Quit; s++ {
		got = append(got, s.String())
	}
	if strings.Join(got, " ") != want {
		t.Errorf("steps = %v, want %s", got, want)
	}
	if s := Step(0).String(); s != "Step(0)" {
		t.Errorf("Step(0) = %q", s)
	}
}

func TestFaultPointsOfANormalSession(t *testing.T) {
	var log pointLog
	srv := NewServer(t, func(s *Server) {
		s.Users = map[string]string{"user": "secret"}
		s.Fault = func(p FaultPoint) Fault { log.add(p); return Fault{} }
	})
	if stage, err := converse(srv.AddrString(), "user", "secret"); err != nil {
		t.Fatalf("%s: %v", stage, err)
	}
	if err := srv.WaitIdle(testContext(t)); err != nil {
		t.Fatal(err)
	}
	// go-smtp's client says EHLO again after RSET, which go-smtp treats
	// as another RSET.
	want := []FaultPoint{
		{Step: Greeting, Session: 1},
		{Step: Hello, Session: 1, Arg: "client.test"},
		{Step: Auth, Session: 1, Arg: "user"},
		{Step: Mail, Session: 1, Message: 1, Arg: "alice@example.org"},
		{Step: Rcpt, Session: 1, Message: 1, Arg: "bob@example.org"},
		{Step: Data, Session: 1, Message: 1},
		{Step: AfterDot, Session: 1, Message: 1},
		{Step: Reset, Session: 1, Message: 1},
		{Step: Reset, Session: 1, Message: 1},
		{Step: Quit, Session: 1, Message: 1},
	}
	got := log.get()
	if len(got) != len(want) {
		t.Fatalf("fault points = %s, want %d points", log.steps(), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("point %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if len(srv.Messages()) != 1 {
		t.Errorf("got %d messages, want 1", len(srv.Messages()))
	}
}

// faultCases pairs each step with the client stage of converse at which its
// fault shows and whether the message is recorded before it.
var faultCases = []struct {
	step     Step
	stage    string
	recorded int
	err      *smtp.SMTPError
}{
	{Greeting, "hello", 0, &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 3, 2}, Message: "No service"}},
	{Hello, "hello", 0, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Hello refused"}},
	{Auth, "auth", 0, &smtp.SMTPError{Code: 454, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Auth backend down"}},
	{Mail, "mail", 0, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Sender deferred"}},
	{Rcpt, "rcpt", 0, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "No such user"}},
	{Data, "dot", 0, &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "Content refused"}},
	{AfterDot, "dot", 0, &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "Disk full"}},
	{Reset, "rset", 1, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "Reset refused"}},
	{Quit, "quit", 1, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "Quit refused"}},
}

// onceAt returns a function for Server.Fault that returns f the first time
// the session reaches step, and proceeds normally everywhere else.
func onceAt(step Step, f Fault) func(FaultPoint) Fault {
	var calls atomic.Int32
	return func(p FaultPoint) Fault {
		if p.Step == step && calls.Add(1) == 1 {
			return f
		}
		return Fault{}
	}
}

func TestFaultErrAtEachStep(t *testing.T) {
	for _, tc := range faultCases {
		t.Run(tc.step.String(), func(t *testing.T) {
			srv := NewServer(t, func(s *Server) {
				s.Users = map[string]string{"user": "secret"}
				s.Fault = onceAt(tc.step, Fault{Err: tc.err})
			})
			stage, err := converse(srv.AddrString(), "user", "secret")
			if stage != tc.stage {
				t.Fatalf("session failed at %q (%v), want at %q", stage, err, tc.stage)
			}
			wantSMTPError(t, err, tc.err)
			if n := len(srv.Messages()); n != tc.recorded {
				t.Errorf("recorded %d messages, want %d", n, tc.recorded)
			}
			if err := srv.WaitIdle(testContext(t)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestFaultDropAtEachStep(t *testing.T) {
	for _, tc := range faultCases {
		t.Run(tc.step.String(), func(t *testing.T) {
			srv := NewServer(t, func(s *Server) {
				s.Users = map[string]string{"user": "secret"}
				s.Fault = FaultAt(tc.step, Fault{Drop: true})
			})
			stage, err := converse(srv.AddrString(), "user", "secret")
			if stage != tc.stage {
				t.Fatalf("session failed at %q (%v), want at %q", stage, err, tc.stage)
			}
			wantConnError(t, err)
			if n := len(srv.Messages()); n != tc.recorded {
				t.Errorf("recorded %d messages, want %d", n, tc.recorded)
			}
			if err := srv.WaitIdle(testContext(t)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestDropAfterDotLosesMessage(t *testing.T) {
	srv := NewServer(t, func(s *Server) { s.Fault = FaultAt(AfterDot, Fault{Drop: true}) })
	_, tp := dialRaw(t, srv.AddrString())
	expect(t, tp, "", 220)
	expect(t, tp, "EHLO raw.test", 250)
	expect(t, tp, "MAIL FROM:<a@example.org>", 250)
	expect(t, tp, "RCPT TO:<b@example.org>", 250)
	expect(t, tp, "DATA", 354)
	if _, err := tp.W.WriteString(testBody + ".\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := tp.W.Flush(); err != nil {
		t.Fatal(err)
	}
	// Not a single byte of reply.
	rest, err := io.ReadAll(tp.R)
	if len(rest) != 0 {
		t.Errorf("got %q after the dot, want nothing", rest)
	}
	if err != nil && !isConnReset(err) {
		t.Errorf("reading after the dot: %v, want EOF", err)
	}
	if err := srv.WaitIdle(testContext(t)); err != nil {
		t.Fatal(err)
	}
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("recorded %d messages, want 0", n)
	}

	// And with go-smtp's client.
	c := dial(t, srv.AddrString())
	err = send(c, "a@example.org", []string{"b@example.org"}, testBody)
	wantConnError(t, err)
	if n := len(srv.Messages()); n != 0 {
		t.Errorf("recorded %d messages, want 0", n)
	}
}

func isConnReset(err error) bool {
	return strings.Contains(err.Error(), "connection reset")
}

func TestRejectOneRecipient(t *testing.T) {
	reject := Reply(550, smtp.EnhancedCode{5, 1, 1}, "No such user")
	srv := NewServer(t, func(s *Server) {
		s.Fault = func(p FaultPoint) Fault {
			if p.Step == Rcpt && p.Arg == "bob@example.org" {
				return reject
			}
			return Fault{}
		}
	})
	c := dial(t, srv.AddrString())
	if err := c.Mail("alice@example.org", nil); err != nil {
		t.Fatal(err)
	}
	for _, rcpt := range []string{"carol@example.org", "bob@example.org", "dave@example.org"} {
		err := c.Rcpt(rcpt, nil)
		if rcpt == "bob@example.org" {
			wantSMTPError(t, err, reject.Err)
		} else if err != nil {
			t.Fatalf("RCPT %s: %v", rcpt, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(w, testBody)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || strings.Join(msgs[0].To, ",") != "carol@example.org,dave@example.org" {
		t.Fatalf("messages = %+v, want one to carol and dave", msgs)
	}
}

func TestFailFirstAttemptOnly(t *testing.T) {
	srv := NewServer(t, func(s *Server) {
		s.Fault = func(p FaultPoint) Fault {
			if p.Step == Mail && p.Message == 1 {
				return Reply(451, smtp.EnhancedCode{4, 7, 1}, "Greylisted")
			}
			return Fault{}
		}
	})
	c := dial(t, srv.AddrString())
	err := send(c, "a@example.org", []string{"b@example.org"}, testBody)
	wantSMTPError(t, err, &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 7, 1}, Message: "Greylisted"})
	if err := send(c, "a@example.org", []string{"b@example.org"}, testBody); err != nil {
		t.Fatalf("second attempt: %v", err)
	}
	if msgs := srv.Messages(); len(msgs) != 1 || msgs[0].Seq != 2 {
		t.Errorf("messages = %+v, want one with Seq 2", msgs)
	}
}

func TestGreetingErrThenBadSequenceUntilQuit(t *testing.T) {
	var log pointLog
	srv := NewServer(t, func(s *Server) {
		s.Fault = func(p FaultPoint) Fault {
			log.add(p)
			if p.Step == Greeting {
				return Reply(554, smtp.EnhancedCode{5, 3, 2}, "Not now\nNor later")
			}
			return Fault{}
		}
	})
	_, tp := dialRaw(t, srv.AddrString())
	if msg := expect(t, tp, "", 554); msg != "5.3.2 Not now\n5.3.2 Nor later" {
		t.Errorf("greeting text = %q", msg)
	}
	expect(t, tp, "EHLO raw.test", 503)
	expect(t, tp, "MAIL FROM:<a@example.org>", 503)
	expect(t, tp, "QUIT", 221)
	if _, err := tp.ReadLine(); err != io.EOF {
		t.Errorf("after QUIT: %v, want EOF", err)
	}
	if got := log.steps(); got != "Greeting" {
		t.Errorf("fault points = %s, want Greeting only", got)
	}
}

// TestHelloErrIsTheEHLOReply checks what go-smtp does with an error from
// Backend.NewSession: it is the reply to EHLO, and the client may try again.
func TestHelloErrIsTheEHLOReply(t *testing.T) {
	srv := NewServer(t, func(s *Server) {
		s.Fault = func(p FaultPoint) Fault {
			if p.Step == Hello && p.Arg == "first.test" {
				return Reply(550, smtp.EnhancedCode{5, 7, 1}, "Go away")
			}
			return Fault{}
		}
	})
	_, tp := dialRaw(t, srv.AddrString())
	if msg := expect(t, tp, "", 220); !strings.Contains(msg, DefaultDomain) {
		t.Errorf("banner = %q, want %s in it", msg, DefaultDomain)
	}
	if msg := expect(t, tp, "EHLO first.test", 550); msg != "5.7.1 Go away" {
		t.Errorf("EHLO reply = %q", msg)
	}
	expect(t, tp, "MAIL FROM:<a@example.org>", 502) // not introduced
	expect(t, tp, "EHLO second.test", 250)
	expect(t, tp, "MAIL FROM:<a@example.org>", 250)
	expect(t, tp, "QUIT", 221)
}

func TestResetErrClosesConnection(t *testing.T) {
	srv := NewServer(t, func(s *Server) {
		s.Fault = FaultAt(Reset, Reply(421, smtp.EnhancedCode{4, 3, 2}, "Shutting down"))
	})
	_, tp := dialRaw(t, srv.AddrString())
	expect(t, tp, "", 220)
	expect(t, tp, "EHLO raw.test", 250)
	expect(t, tp, "MAIL FROM:<a@example.org>", 250)
	if msg := expect(t, tp, "RSET", 421); msg != "4.3.2 Shutting down" {
		t.Errorf("RSET reply = %q", msg)
	}
	if line, err := tp.ReadLine(); err == nil {
		t.Errorf("after RSET got %q, want the connection closed", line)
	}
}

func TestStallEndsOnClose(t *testing.T) {
	reached := make(chan struct{})
	s := NewUnstartedServer()
	s.Fault = func(p FaultPoint) Fault {
		if p.Step == Mail {
			close(reached)
			return Fault{Stall: time.Hour}
		}
		return Fault{}
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	errc := make(chan error, 1)
	go func() {
		c, err := dialClient(s.AddrString())
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		errc <- c.Mail("a@example.org", nil)
	}()
	select {
	case <-reached:
	case err := <-errc:
		t.Fatalf("client ended before the stall: %v", err)
	case <-time.After(waitTimeout):
		t.Fatal("MAIL never reached the server")
	}

	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > waitTimeout/2 {
		t.Errorf("Close took %v", d)
	}
	select {
	case err := <-errc:
		wantConnError(t, err)
	case <-time.After(waitTimeout):
		t.Fatal("client still waiting after Close")
	}
	if n := s.Concurrent(); n != 0 {
		t.Errorf("Concurrent after Close = %d", n)
	}
}

func TestStallThenProceed(t *testing.T) {
	const stall = 100 * time.Millisecond
	srv := NewServer(t, func(s *Server) { s.Fault = FaultAt(Rcpt, Fault{Stall: stall}) })
	c := dial(t, srv.AddrString())
	if err := c.Mail("a@example.org", nil); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.Rcpt("b@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < stall {
		t.Errorf("RCPT took %v, want at least %v", d, stall)
	}
}

func TestStallThenErr(t *testing.T) {
	f := Reply(451, smtp.EnhancedCode{4, 4, 1}, "Slow and failing")
	f.Stall = 50 * time.Millisecond
	srv := NewServer(t, func(s *Server) { s.Fault = FaultAt(Mail, f) })
	c := dial(t, srv.AddrString())
	start := time.Now()
	wantSMTPError(t, c.Mail("a@example.org", nil), f.Err)
	if d := time.Since(start); d < f.Stall {
		t.Errorf("MAIL took %v, want at least %v", d, f.Stall)
	}
}

func TestGreetingStallDoesNotBlockOthers(t *testing.T) {
	srv := NewServer(t, func(s *Server) {
		s.Fault = func(p FaultPoint) Fault {
			if p.Step == Greeting && p.Session == 1 {
				return Fault{Stall: time.Hour}
			}
			return Fault{}
		}
	})
	dialRaw(t, srv.AddrString())
	// Make sure the first connection is accepted first.
	if err := srv.waitFor(testContext(t), func() bool { return srv.sessions == 1 }); err != nil {
		t.Fatal(err)
	}
	c := dial(t, srv.AddrString())
	if err := send(c, "a@example.org", []string{"b@example.org"}, testBody); err != nil {
		t.Fatal(err)
	}
	if srv.Concurrent() != 2 {
		t.Errorf("Concurrent = %d, want 2", srv.Concurrent())
	}
}

func TestBlockedFaultMakesCloseFail(t *testing.T) {
	unblock := make(chan struct{})
	reached := make(chan struct{})
	s := NewUnstartedServer()
	s.CloseTimeout = 100 * time.Millisecond
	s.Fault = func(p FaultPoint) Fault {
		if p.Step == Greeting {
			close(reached)
			<-unblock
		}
		return Fault{}
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	dialRaw(t, s.AddrString())
	select {
	case <-reached:
	case <-time.After(waitTimeout):
		t.Fatal("Fault not called")
	}
	err := s.Close()
	close(unblock)
	if err == nil || !strings.Contains(err.Error(), "Fault") {
		t.Errorf("Close = %v, want an error about a Fault call still running", err)
	}
	// Let the greeting goroutine finish before goleak looks.
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("greeting goroutine did not end")
	}
}

// Raw replaces the reply at each step with bytes of the test's choosing,
// then closes the connection.
func TestFaultRawAtEachStep(t *testing.T) {
	const noise = "\x00\xff\x1bnot SMTP at all"
	for _, tc := range faultCases {
		t.Run(tc.step.String(), func(t *testing.T) {
			srv := NewServer(t, func(s *Server) {
				s.Users = map[string]string{"user": "secret"}
				s.Fault = onceAt(tc.step, Fault{Raw: strings.NewReader(noise + "\r\n")})
			})
			stage, err := converse(srv.AddrString(), "user", "secret")
			if stage != tc.stage || err == nil {
				t.Fatalf("session failed at %q (%v), want at %q", stage, err, tc.stage)
			}
			if n := len(srv.Messages()); n != tc.recorded {
				t.Errorf("recorded %d messages, want %d", n, tc.recorded)
			}
			if err := srv.WaitIdle(testContext(t)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// An endless Raw reply goes on until the client hangs up; a trickled one
// comes a byte at a time; and Close ends both.
func TestFaultRawEndlessAndTrickled(t *testing.T) {
	srv := NewServer(t, func(s *Server) {
		s.Fault = func(p FaultPoint) Fault {
			switch {
			case p.Step == Greeting && p.Session == 1:
				return Fault{Raw: Repeat([]byte("220-more\r\n"))}
			case p.Step == Greeting && p.Session == 2:
				return Fault{Raw: strings.NewReader("220 slow\r\n"), Trickle: 20 * time.Millisecond}
			case p.Step == Greeting:
				return Fault{Raw: strings.NewReader("220 "), Trickle: time.Hour}
			}
			return Fault{}
		}
	})
	conn, tp := dialRaw(t, srv.AddrString())
	for i := range 1000 { // far more than any socket buffer holds
		if l, err := tp.ReadLine(); err != nil || l != "220-more" {
			t.Fatalf("line %d: %q, %v", i, l, err)
		}
	}
	conn.Close()

	start := time.Now()
	_, tp = dialRaw(t, srv.AddrString())
	for i, want := range []byte("220 slow\r\n") {
		b, err := tp.R.ReadByte()
		if err != nil || b != want {
			t.Fatalf("byte %d: %q, %v; want %q", i, b, err, want)
		}
	}
	if d := time.Since(start); d < 9*20*time.Millisecond {
		t.Errorf("10 bytes trickled 20ms apart came in %v", d)
	}
	if _, err := tp.R.ReadByte(); err == nil {
		t.Error("the connection stayed open after the Raw reply")
	}

	_, tp = dialRaw(t, srv.AddrString())
	if b, err := tp.R.Peek(1); err != nil || b[0] != '2' {
		t.Fatalf("first trickled byte: %q, %v", b, err)
	}
	if err := srv.Close(); err != nil { // ends the hour-long trickle
		t.Fatal(err)
	}
}
