package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

const testMsg = "From: App <app@example.com>\r\nTo: Ann <ann@example.org>, bob@example.org\r\nCc: cid@example.net\r\nBcc: hidden@example.net\r\nSubject: hello\r\n\r\nbody line\r\n.\r\nmore\r\n"

// The message as queued when the recipients come from the header: the same
// bytes without the Bcc field.
var testMsgNoBcc = strings.Replace(testMsg, "Bcc: hidden@example.net\r\n", "", 1)

var testMsgRcpts = []string{"ann@example.org", "bob@example.org", "cid@example.net", "hidden@example.net"}

func TestEnqueueHappyPaths(t *testing.T) {
	e := newEnv(t, true)
	msgFile := e.writeFile("msg.eml", testMsg)

	check := func(name string, code int, out, stderr string) (*queuefile.Params, string, []byte) {
		t.Helper()
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", name, code, stderr)
		}
		if stderr != "" {
			t.Errorf("%s: stderr %q", name, stderr)
		}
		p, msg, raw := e.only()
		path := strings.TrimSuffix(out, "\n")
		if !filepath.IsAbs(path) || filepath.Dir(path) != e.queue || !queuefile.IsQueueName(filepath.Base(path)) || strings.Count(out, "\n") != 1 {
			t.Errorf("%s: stdout %q is not the queued file's full path", name, out)
		}
		noClearText(t, raw, relayPassword, hostPassword, envPassword, oauthToken, hostName, userName, "relay-user", "relay.example.com")
		return p, msg, raw
	}

	// A file, through the default relay, recipients and sender from the header.
	code, out, stderr := e.smtpq("", "enqueue", msgFile)
	p, msg, _ := check("file", code, out, stderr)
	if p.Relay != "main" || p.Host != "" || !p.Password.IsZero() || p.Username != "" {
		t.Errorf("file: params %+v", p)
	}
	if p.From != "app@example.com" || !sameStrings(p.To, testMsgRcpts) {
		t.Errorf("file: envelope %q -> %q", p.From, p.To)
	}
	if msg != testMsgNoBcc {
		t.Errorf("file: message changed:\n%q\nwant\n%q", msg, testMsgNoBcc)
	}

	// Standard input, "-" and no argument; explicit envelope keeps Bcc.
	for _, args := range [][]string{{"enqueue", "-"}, {"enqueue"}} {
		args = append(args, "--from", "bounce@example.com", "--to", "x@example.org", "--to", "y@example.org", "--helo", "client.example.com")
		code, out, stderr := e.smtpq(testMsg, args...)
		p, msg, _ := check("stdin", code, out, stderr)
		if p.From != "bounce@example.com" || !sameStrings(p.To, []string{"x@example.org", "y@example.org"}) || p.HELO != "client.example.com" {
			t.Errorf("stdin %q: params %+v", args, p)
		}
		if msg != testMsg {
			t.Errorf("stdin: message changed:\n%q", msg)
		}
	}

	// --relay names another profile.
	code, out, stderr = e.smtpq("", "enqueue", "--relay", "backup", msgFile)
	if p, _, _ := check("relay", code, out, stderr); p.Relay != "backup" {
		t.Errorf("relay: params %+v", p)
	}

	// --host with --password-file: the first line, CR LF trimmed.
	pwFile := e.writeFile("host.pw", hostPassword+"\r\nsecond line\n")
	code, out, stderr = e.smtpq("", "enqueue", "--host", hostName, "--port", "2525", "--tls", "STARTTLS",
		"--user", userName, "--password-file", pwFile, msgFile)
	p, _, _ = check("host", code, out, stderr)
	if p.Relay != "" || p.Host != hostName || p.Port != 2525 || p.TLS != queuefile.TLSStartTLS ||
		p.Username != userName || p.Password.Reveal() != hostPassword {
		t.Errorf("host: params %+v (password %q)", p, p.Password.Reveal())
	}

	// --tls implicit without --port: SMTPS.
	code, out, stderr = e.smtpq("", "enqueue", "--host", hostName, "--tls", "implicit", msgFile)
	if p, _, _ := check("implicit", code, out, stderr); p.Port != 465 || p.TLS != queuefile.TLSImplicit {
		t.Errorf("implicit: params %+v", p)
	}

	// The password from SMTPQ_PASSWORD; --password-file wins over it.
	t.Setenv("SMTPQ_PASSWORD", envPassword)
	code, out, stderr = e.smtpq("", "enqueue", "--host", hostName, "--user", userName, msgFile)
	if p, _, _ := check("env", code, out, stderr); p.Password.Reveal() != envPassword || p.Port != 0 || p.TLS != "" {
		t.Errorf("env: params %+v", p)
	}
	code, out, stderr = e.smtpq("", "enqueue", "--host", hostName, "--user", userName, "--password-file", pwFile, msgFile)
	if p, _, _ := check("env+file", code, out, stderr); p.Password.Reveal() != hostPassword {
		t.Error("env+file: --password-file did not win over SMTPQ_PASSWORD")
	}
	// ... and is not used without --user, nor with a relay profile.
	code, out, stderr = e.smtpq("", "enqueue", "--host", hostName, msgFile)
	if p, _, _ := check("env without user", code, out, stderr); !p.Password.IsZero() {
		t.Error("SMTPQ_PASSWORD used without --user")
	}
	code, out, stderr = e.smtpq("", "enqueue", msgFile)
	if p, _, _ := check("env with relay", code, out, stderr); !p.Password.IsZero() {
		t.Error("SMTPQ_PASSWORD used with a relay profile")
	}
	// An OAuth2 token instead of a password.
	tokFile := e.writeFile("token", oauthToken+"\n")
	code, out, stderr = e.smtpq("", "enqueue", "--host", hostName, "--user", userName, "--oauth2-token-file", tokFile, msgFile)
	if p, _, _ := check("oauth2", code, out, stderr); p.OAuth2Token.Reveal() != oauthToken || !p.Password.IsZero() {
		t.Errorf("oauth2: params %+v", p)
	}
	t.Setenv("SMTPQ_PASSWORD", "")

	// Schedule: durations from now and RFC 3339 times.
	before := time.Now()
	code, out, stderr = e.smtpq("", "enqueue", "--not-before", "90m", "--expires", "2d", msgFile)
	p, _, _ = check("durations", code, out, stderr)
	if d := p.NotBefore.Sub(before); d < 90*time.Minute || d > 91*time.Minute {
		t.Errorf("not-before %v is not 90m from now", p.NotBefore)
	}
	if d := p.Expires.Sub(before); d < 48*time.Hour || d > 48*time.Hour+time.Minute {
		t.Errorf("expires %v is not 2d from now", p.Expires)
	}
	nb, ex := time.Now().Add(time.Hour).UTC().Truncate(time.Second), time.Now().Add(24*time.Hour).UTC().Truncate(time.Second)
	code, out, stderr = e.smtpq("", "enqueue", "--not-before", nb.Format(time.RFC3339), "--expires", ex.Format(time.RFC3339), msgFile)
	p, _, _ = check("rfc3339", code, out, stderr)
	if !p.NotBefore.Equal(nb) || !p.Expires.Equal(ex) {
		t.Errorf("times %v %v, want %v %v", p.NotBefore, p.Expires, nb, ex)
	}

	// --config from SMTPQ_CONFIG.
	t.Setenv("SMTPQ_CONFIG", e.cfgPath)
	code, out, stderr = e.run(testMsg, "smtpq", "enqueue")
	check("SMTPQ_CONFIG", code, out, stderr)
}

func TestEnqueueErrors(t *testing.T) {
	e := newEnv(t, true)
	msgFile := e.writeFile("msg.eml", testMsg)
	emptyPw := e.writeFile("empty.pw", "\nsecond\n")
	pwFile := e.writeFile("host.pw", hostPassword+"\n")
	noRcpt := e.writeFile("norcpt.eml", "From: app@example.com\nSubject: x\n\nbody\n")
	noSep := e.writeFile("nosep.eml", "From: app@example.com\nTo: a@example.org\nSubject: x\n")
	badHdr := e.writeFile("badhdr.eml", "From: app@example.com\nTo: ann\nSubject: x\n\nbody\n")

	tests := []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"no recipients", "", []string{noRcpt}, exitFailure, "no recipients"},
		{"recipient CR LF", "", []string{"--to", "a@example.org\r\nRCPT TO:<evil@example.com>", msgFile}, exitUsage, "contains CR or LF"},
		{"recipient without @", "", []string{"--to", "ann", msgFile}, exitUsage, `address "ann" is not of the form local@domain`},
		{"sender without @", "", []string{"--from", "app", msgFile}, exitUsage, `sender: address "app"`},
		{"sender CR LF", "", []string{"--from", "a@example.org\nX: y", msgFile}, exitUsage, "contains CR or LF"},
		{"empty sender", "", []string{"--from", "", msgFile}, exitUsage, "null sender"},
		{"header address without @", "", []string{badHdr}, exitFailure, "To header"},
		{"port high", "", []string{"--host", "h.example.com", "--port", "65536", msgFile}, exitUsage, "port 65536 out of range"},
		{"port zero", "", []string{"--host", "h.example.com", "--port", "0", msgFile}, exitUsage, "port 0 out of range"},
		{"port negative", "", []string{"--host", "h.example.com", "--port", "-1", msgFile}, exitUsage, "port -1 out of range"},
		{"port not a number", "", []string{"--host", "h.example.com", "--port", "smtp", msgFile}, exitUsage, "--port"},
		{"bad tls", "", []string{"--host", "h.example.com", "--tls", "ssl", msgFile}, exitUsage, `unknown TLS mode "ssl"`},
		{"bad host", "", []string{"--host", "h.example.com:25", msgFile}, exitUsage, "give the port separately"},
		{"bad helo", "", []string{"--helo", "a b", msgFile}, exitUsage, "HELO name"},
		{"unreadable message", "", []string{filepath.Join(e.dir, "missing.eml")}, exitFailure, "missing.eml: no such file"},
		{"message is a directory", "", []string{e.dir}, exitFailure, "is a directory"},
		{"no separator", "", []string{noSep}, exitFailure, "no empty line between header and body"},
		{"no separator stdin", "From: a@example.com\nTo: b@example.org\n", nil, exitFailure, "no empty line between header and body"},
		{"empty message", "", []string{"-"}, exitFailure, "empty message"},
		{"already sealed", "X-SmtpQ-Sealed: v1\n AAAA\n" + testMsg, nil, exitFailure, "already sealed"},
		{"unknown relay", "", []string{"--relay", "nope", msgFile}, exitUsage, "unknown relay profile nope (configured: backup, main)"},
		{"relay and host", "", []string{"--relay", "main", "--host", "h.example.com", msgFile}, exitUsage, "--relay and --host"},
		{"port without host", "", []string{"--relay", "main", "--port", "25", msgFile}, exitUsage, "--port needs --host"},
		{"user without host", "", []string{"--user", "u", msgFile}, exitUsage, "--user needs --host"},
		{"password file without user", "", []string{"--host", "h.example.com", "--password-file", pwFile, msgFile}, exitUsage, "--password-file needs --user"},
		{"token file without user", "", []string{"--host", "h.example.com", "--oauth2-token-file", pwFile, msgFile}, exitUsage, "--oauth2-token-file needs --user"},
		{"password and token", "", []string{"--host", "h.example.com", "--user", "u", "--password-file", pwFile, "--oauth2-token-file", pwFile, msgFile}, exitUsage, "choose one"},
		{"missing password file", "", []string{"--host", "h.example.com", "--user", "u", "--password-file", filepath.Join(e.dir, "nope.pw"), msgFile}, exitFailure, "password file: open"},
		{"empty password", "", []string{"--host", "h.example.com", "--user", "u", "--password-file", emptyPw, msgFile}, exitFailure, "first line is empty"},
		{"password flag", "", []string{"--password", "x", msgFile}, exitUsage, "unknown flag: --password"},
		{"two messages", "", []string{msgFile, msgFile}, exitUsage, "at most 1 argument"},
		{"bad not-before", "", []string{"--not-before", "tomorrow", msgFile}, exitUsage, "--not-before"},
		{"expired", "", []string{"--expires", "2001-01-01T00:00:00Z", msgFile}, exitUsage, "in the past"},
		{"negative duration", "", []string{"--expires", "-5m", msgFile}, exitUsage, "negative duration"},
		{"expires before not-before", "", []string{"--not-before", "3h", "--expires", "2h", msgFile}, exitUsage, "is not after --not-before"},
		{"unknown flag", "", []string{"--frobnicate", msgFile}, exitUsage, "unknown flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			code, out, stderr := e.smtpq(tc.stdin, append([]string{"enqueue"}, tc.args...)...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.want)
			}
			if out != "" {
				t.Errorf("stdout %q", out)
			}
			if strings.Contains(stderr, hostPassword) {
				t.Error("error message shows the password")
			}
			if q := e.queued(); len(q) != 0 {
				t.Errorf("left in the queue: %q", q)
			}
		})
	}
	e.t = t
}

func TestEnqueueConfigErrors(t *testing.T) {
	// No default relay: --relay or --host needed.
	e := newEnv(t, false)
	msgFile := e.writeFile("msg.eml", testMsg)
	code, _, stderr := e.smtpq("", "enqueue", msgFile)
	if code != exitUsage || !strings.Contains(stderr, "give --relay or --host") {
		t.Errorf("no default relay: exit %d: %s", code, stderr)
	}
	code, _, stderr = e.smtpq("", "enqueue", "--relay", "main", msgFile)
	if code != 0 {
		t.Errorf("--relay without default_relay: exit %d: %s", code, stderr)
	}
	// Missing key file.
	pub := filepath.Join(e.dir, "keys", "recipient.txt")
	if err := os.Rename(pub, pub+".old"); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = e.smtpq("", "enqueue", "--relay", "main", msgFile)
	if code != exitFailure || !strings.Contains(stderr, pub) || !strings.Contains(stderr, "smtpq keygen") {
		t.Errorf("missing recipient file: exit %d: %s", code, stderr)
	}
	// Missing configuration.
	code, _, stderr = e.run("", "smtpq", "enqueue", "--config", filepath.Join(e.dir, "none.yaml"), msgFile)
	if code != exitFailure || !strings.Contains(stderr, "none.yaml") {
		t.Errorf("missing config: exit %d: %s", code, stderr)
	}
}

// No flag may take a password: command lines are visible to every user.
func TestEnqueueHasNoPasswordFlag(t *testing.T) {
	cmd := newEnqueueCmd()
	for _, name := range []string{"password", "pass", "pw", "secret", "token", "oauth2-token"} {
		if cmd.Flags().Lookup(name) != nil {
			t.Errorf("enqueue has a --%s flag", name)
		}
	}
}
