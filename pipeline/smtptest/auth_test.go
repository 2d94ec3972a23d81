package smtptest

import (
	"fmt"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

var users = map[string]string{"alice": "wonderland", "bob": "builder"}

func withUsers(s *Server) { s.Users = users }

func TestAuthAdvertised(t *testing.T) {
	srv := NewServer(t, withUsers)
	c := dial(t, srv.AddrString())
	ok, mechs := c.Extension("AUTH")
	if !ok || mechs != "PLAIN LOGIN XOAUTH2" {
		t.Errorf("AUTH extension = %v %q, want PLAIN LOGIN XOAUTH2", ok, mechs)
	}

	plain := NewServer(t)
	c = dial(t, plain.AddrString())
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH advertised without Users")
	}
	wantSMTPError(t, c.Auth(sasl.NewPlainClient("", "alice", "wonderland")), smtp.ErrAuthUnsupported)
	if err := send(c, "a@example.org", []string{"b@example.org"}, testBody); err != nil {
		t.Errorf("MAIL without Users and AUTH: %v", err)
	}
}

func TestAuthPlain(t *testing.T) {
	srv := NewServer(t, withUsers)

	c := dial(t, srv.AddrString())
	wantSMTPError(t, c.Auth(sasl.NewPlainClient("", "alice", "wrong")), smtp.ErrAuthFailed)
	wantSMTPError(t, c.Auth(sasl.NewPlainClient("", "nobody", "wonderland")), smtp.ErrAuthFailed)
	wantSMTPError(t, c.Auth(sasl.NewPlainClient("bob", "alice", "wonderland")), smtp.ErrAuthFailed)
	wantSMTPError(t, c.Mail("a@example.org", nil), errAuthRequired)
	if err := c.Auth(sasl.NewPlainClient("", "alice", "wonderland")); err != nil {
		t.Fatalf("AUTH PLAIN with the right password: %v", err)
	}
	if err := send(c, "alice@example.org", []string{"b@example.org"}, testBody); err != nil {
		t.Fatal(err)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || msgs[0].AuthUser != "alice" {
		t.Fatalf("messages = %+v, want one from AuthUser alice", msgs)
	}
}

func TestAuthLogin(t *testing.T) {
	srv := NewServer(t, withUsers)
	c := dial(t, srv.AddrString())
	wantSMTPError(t, c.Auth(sasl.NewLoginClient("bob", "wrong")), smtp.ErrAuthFailed)
	if err := c.Auth(sasl.NewLoginClient("bob", "builder")); err != nil {
		t.Fatal(err)
	}
	if err := send(c, "bob@example.org", []string{"c@example.org"}, testBody); err != nil {
		t.Fatal(err)
	}
	if m := srv.Messages(); len(m) != 1 || m[0].AuthUser != "bob" {
		t.Fatalf("messages = %+v, want one from AuthUser bob", m)
	}
}

func TestAuthLoginWithoutInitialResponse(t *testing.T) {
	srv := NewServer(t, withUsers)
	_, tp := dialRaw(t, srv.AddrString())
	expect(t, tp, "", 220)
	expect(t, tp, "EHLO raw.test", 250)
	if msg := expect(t, tp, "AUTH LOGIN", 334); msg != "VXNlcm5hbWU6" { // "Username:"
		t.Errorf("first challenge = %q", msg)
	}
	if msg := expect(t, tp, "Ym9i", 334); msg != "UGFzc3dvcmQ6" { // "bob", "Password:"
		t.Errorf("second challenge = %q", msg)
	}
	expect(t, tp, "YnVpbGRlcg==", 235) // "builder"
	expect(t, tp, "MAIL FROM:<bob@example.org>", 250)
}

// xoauth2Client is a minimal XOAUTH2 client; go-sasl has none.
type xoauth2Client struct {
	user, token string
	challenges  []string
}

func (x *xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", []byte(fmt.Sprintf("user=%s\x01auth=Bearer %s\x01\x01", x.user, x.token)), nil
}

func (x *xoauth2Client) Next(challenge []byte) ([]byte, error) {
	x.challenges = append(x.challenges, string(challenge))
	return []byte{}, nil // acknowledge the error, as the protocol asks
}

func TestAuthXOAuth2(t *testing.T) {
	srv := NewServer(t, withUsers)
	c := dial(t, srv.AddrString())

	bad := &xoauth2Client{user: "alice", token: "expired"}
	wantSMTPError(t, c.Auth(bad), smtp.ErrAuthFailed)
	if len(bad.challenges) != 1 || bad.challenges[0] != `{"status":"401","schemes":"bearer"}` {
		t.Errorf("error challenges = %q, want one JSON error", bad.challenges)
	}

	good := &xoauth2Client{user: "alice", token: "wonderland"}
	if err := c.Auth(good); err != nil {
		t.Fatal(err)
	}
	if len(good.challenges) != 0 {
		t.Errorf("challenges on success = %q", good.challenges)
	}
	if err := send(c, "alice@example.org", []string{"b@example.org"}, testBody); err != nil {
		t.Fatal(err)
	}
	if m := srv.Messages(); len(m) != 1 || m[0].AuthUser != "alice" {
		t.Fatalf("messages = %+v, want one from AuthUser alice", m)
	}
}

func TestAuthFaultSeesUserName(t *testing.T) {
	var log pointLog
	unavailable := Reply(454, smtp.EnhancedCode{4, 7, 0}, "Try again later")
	srv := NewServer(t, withUsers, func(s *Server) {
		s.Fault = func(p FaultPoint) Fault {
			if p.Step != Auth {
				return Fault{}
			}
			log.add(p)
			if p.Arg == "bob" {
				return unavailable
			}
			return Fault{}
		}
	})
	c := dial(t, srv.AddrString())
	wantSMTPError(t, c.Auth(sasl.NewLoginClient("bob", "builder")), unavailable.Err)
	wantSMTPError(t, c.Auth(&xoauth2Client{user: "bob", token: "builder"}), unavailable.Err)
	if err := c.Auth(sasl.NewPlainClient("", "alice", "wonderland")); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range log.get() {
		names = append(names, p.Arg)
	}
	if fmt.Sprint(names) != "[bob bob alice]" {
		t.Errorf("Auth fault points for users %v, want [bob bob alice]", names)
	}
}
