package smtpclient

import (
	"bufio"
	"encoding/base64"
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// authServer is a server that logs every line it reads, as Postfix does a
// stray one: it offers AUTH with mechs and answers each AUTH step from
// steps (the reply to the AUTH command, then to each response).
func authServer(t *testing.T, mechs string, steps ...string) (addr string, got <-chan []string) {
	t.Helper()
	return oneConnServer(t, func(c net.Conn) []string {
		r := bufio.NewReader(c)
		var lines []string
		say := func(s string) { c.Write([]byte(s + "\r\n")) }
		say("220 auth ESMTP")
		inAuth := false
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return lines
			}
			l = strings.TrimRight(l, "\r\n")
			lines = append(lines, l)
			verb := strings.ToUpper(strings.Fields(l + " x")[0])
			switch {
			case verb == "EHLO":
				say("250-auth\r\n250 AUTH " + mechs)
			case verb == "QUIT":
				say("221 bye")
				return lines
			case verb == "AUTH" || inAuth:
				if l == "*" && !inAuth {
					say("502 5.5.2 Error: command not recognized") // Postfix: non-SMTP command
					continue
				}
				reply := "535 5.7.8 Error: authentication failed"
				if len(steps) > 0 {
					reply, steps = steps[0], steps[1:]
				}
				inAuth = strings.HasPrefix(reply, "334")
				if l == "*" {
					inAuth, reply = false, "501 5.7.0 Authentication aborted"
				}
				say(reply)
			default:
				say("502 what")
			}
		}
	})
}

// A refused login (535) ends the AUTH exchange: no "*" follows it, which a
// server would take for a stray command (Postfix logs "non-SMTP command"
// and ban rules count the failure twice). The cancel is sent only to a
// challenge the client cannot answer.
func TestAuthRefusalSendsNoCancel(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mechs    string
		steps    []string
		wantCode int
		wantStar bool
	}{
		{"PLAIN refused", "PLAIN LOGIN", []string{"535 5.7.8 Error: authentication failed"}, 535, false},
		{"LOGIN refused after the password", "LOGIN", []string{"334 UGFzc3dvcmQ6", "535 5.7.8 no"}, 535, false},
		{"a challenge the client cannot read", "PLAIN LOGIN", []string{"334 !!not base64!!"}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, got := authServer(t, tc.mechs, tc.steps...)
			cfg := testConfig(addr)
			cfg.Username, cfg.Password = "user", queuefile.NewSecret("s3cret-pw")
			s, e := Dial(t.Context(), cfg)
			if e == nil {
				s.Close(true)
				t.Fatal("a refused login opened a session")
			}
			if tc.wantCode != 0 && e.Code != tc.wantCode {
				t.Errorf("error %v, want code %d", e, tc.wantCode)
			}
			if s != nil {
				for _, secret := range []string{"s3cret-pw", base64.StdEncoding.EncodeToString([]byte("\x00user\x00s3cret-pw")), base64.StdEncoding.EncodeToString([]byte("s3cret-pw"))} {
					if strings.Contains(s.Transcript(), secret) {
						t.Errorf("the password reached the transcript:\n%s", s.Transcript())
					}
				}
				s.Close(false)
			}
			lines := <-got
			if star := slices.Contains(lines, "*"); star != tc.wantStar {
				t.Errorf("the server read %q: a cancel sent %v, want %v", lines, star, tc.wantStar)
			}
		})
	}
}

// A reply code outside 200-599 is no SMTP reply: a broken server, not a
// refusal of the message, so the error is temporary.
func TestClassifyCodesOutsideSMTP(t *testing.T) {
	for code, temporary := range map[int]bool{451: true, 550: false, 552: false, 600: true, 799: true, 999: true} {
		e := Classify("mail", &smtp.SMTPError{Code: code, Message: "x"})
		if e.Temporary != temporary {
			t.Errorf("%d: temporary %v, want %v", code, e.Temporary, temporary)
		}
	}
}
