package smtptest

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

func tlsPair(t *testing.T) (server *tls.Config, client *tls.Config) {
	t.Helper()
	cert, pool, err := SelfSigned("127.0.0.1", "localhost")
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}}, &tls.Config{RootCAs: pool}
}

func TestSelfSigned(t *testing.T) {
	cert, pool, err := SelfSigned()
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"127.0.0.1", "::1", "localhost"} {
		if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: pool}); err != nil {
			t.Errorf("default certificate for %s: %v", host, err)
		}
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "example.org", Roots: pool}); err == nil {
		t.Error("certificate valid for example.org")
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "localhost"}); err == nil {
		t.Error("certificate trusted without the pool")
	}
}

func TestStartTLS(t *testing.T) {
	serverTLS, clientTLS := tlsPair(t)
	var log pointLog
	srv := NewServer(t, withUsers, func(s *Server) {
		s.TLSConfig = serverTLS
		s.Fault = func(p FaultPoint) Fault { log.add(p); return Fault{} }
	})

	// Before STARTTLS, AUTH is neither advertised nor accepted.
	c := dial(t, srv.AddrString())
	if ok, _ := c.Extension("STARTTLS"); !ok {
		t.Error("STARTTLS not advertised")
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH advertised before STARTTLS")
	}
	err := c.Auth(sasl.NewPlainClient("", "alice", "wonderland"))
	wantSMTPError(t, err, &smtp.SMTPError{Code: 523, EnhancedCode: smtp.EnhancedCode{5, 7, 10}, Message: "TLS is required"})
	c.Close()

	c, err = smtp.DialStartTLS(srv.AddrString(), clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, mechs := c.Extension("AUTH"); !ok || mechs != "PLAIN LOGIN XOAUTH2" {
		t.Errorf("AUTH after STARTTLS = %v %q", ok, mechs)
	}
	if state, ok := c.TLSConnectionState(); !ok || !state.HandshakeComplete {
		t.Fatal("client is not using TLS")
	}
	if err := c.Auth(sasl.NewPlainClient("", "alice", "wonderland")); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "alice@example.org", []string{"b@example.org"}, testBody); err != nil {
		t.Fatal(err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || !msgs[0].TLS || msgs[0].AuthUser != "alice" || string(msgs[0].Data) != testBody {
		t.Fatalf("messages = %+v, want one over TLS from alice", msgs)
	}
	if err := srv.WaitIdle(testContext(t)); err != nil {
		t.Fatal(err)
	}
	// go-smtp starts a new session after STARTTLS, so Hello comes twice
	// in the same connection; QUIT is invisible under TLS.
	var second []string
	for _, p := range log.get() {
		if p.Session == 2 {
			second = append(second, p.Step.String())
		}
	}
	if got := strings.Join(second, " "); got != "Greeting Hello Hello Auth Mail Rcpt Data AfterDot" {
		t.Errorf("fault points of the STARTTLS session = %s", got)
	}
}

func TestStartTLSUntrusted(t *testing.T) {
	serverTLS, _ := tlsPair(t)
	srv := NewServer(t, func(s *Server) { s.TLSConfig = serverTLS })
	c, err := smtp.DialStartTLS(srv.AddrString(), &tls.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// The handshake happens with the first command after STARTTLS.
	err = c.Hello("client.test")
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Errorf("EHLO after STARTTLS with an unknown authority: %v, want x509.UnknownAuthorityError", err)
	}
}

func TestStartTLSDisabled(t *testing.T) {
	serverTLS, clientTLS := tlsPair(t)
	srv := NewServer(t, withUsers, func(s *Server) {
		s.TLSConfig = serverTLS
		s.DisableStartTLS = true
	})
	c, err := smtp.DialStartTLS(srv.AddrString(), clientTLS)
	if err == nil {
		c.Close()
		t.Fatal("STARTTLS succeeded although disabled")
	}
	if !strings.Contains(err.Error(), "STARTTLS") {
		t.Errorf("error = %v, want one about STARTTLS", err)
	}

	_, tp := dialRaw(t, srv.AddrString())
	expect(t, tp, "", 220)
	if caps := expect(t, tp, "EHLO raw.test", 250); strings.Contains(caps, "STARTTLS") || !strings.Contains(caps, "AUTH PLAIN") {
		t.Errorf("capabilities = %q, want AUTH (no TLS on offer) and no STARTTLS", caps)
	}
	expect(t, tp, "STARTTLS", 502)
}

func TestImplicitTLS(t *testing.T) {
	serverTLS, clientTLS := tlsPair(t)
	srv := NewServer(t, withUsers, func(s *Server) {
		s.TLSConfig = serverTLS
		s.ImplicitTLS = true
	})
	c, err := smtp.DialTLS(srv.AddrString(), clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised on an implicit TLS connection")
	}
	if err := c.Auth(sasl.NewPlainClient("", "bob", "builder")); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "bob@example.org", []string{"c@example.org"}, testBody); err != nil {
		t.Fatal(err)
	}
	if m := srv.Messages(); len(m) != 1 || !m[0].TLS || m[0].AuthUser != "bob" {
		t.Fatalf("messages = %+v, want one over TLS from bob", m)
	}
}

func TestImplicitTLSGreetingErr(t *testing.T) {
	serverTLS, clientTLS := tlsPair(t)
	refuse := Reply(421, smtp.EnhancedCode{4, 3, 2}, "Too busy")
	srv := NewServer(t, func(s *Server) {
		s.TLSConfig = serverTLS
		s.ImplicitTLS = true
		s.Fault = FaultAt(Greeting, refuse)
	})
	c, err := smtp.DialTLS(srv.AddrString(), clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wantSMTPError(t, c.Hello("client.test"), refuse.Err)
}

func TestImplicitTLSPlaintextClientFails(t *testing.T) {
	serverTLS, _ := tlsPair(t)
	srv := NewServer(t, func(s *Server) {
		s.TLSConfig = serverTLS
		s.ImplicitTLS = true
	})
	conn, _ := dialRaw(t, srv.AddrString())
	if _, err := io.WriteString(conn, "EHLO raw.test\r\n"); err != nil {
		t.Fatal(err)
	}
	// The server expects a TLS handshake: it answers with a TLS alert, if
	// anything, and hangs up.
	got, _ := io.ReadAll(conn)
	if strings.HasPrefix(string(got), "220") || strings.HasPrefix(string(got), "250") {
		t.Errorf("plaintext client got an SMTP reply: %q", got)
	}
	if err := srv.WaitIdle(testContext(t)); err != nil {
		t.Fatal(err)
	}
}
