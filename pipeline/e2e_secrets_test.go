package pipeline_test

// Issue 6's secrets check: after sending with AUTH PLAIN and AUTH LOGIN,
// failures included, at debug level, no password shows up anywhere smtpq
// writes: log lines, Sent copies, Undeliverable messages and XML logs,
// state files. And the types that hold passwords do not print them.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

// b64Forms returns the ways s shows up inside base64: at each of the three
// alignments it can have in a longer string, the characters that depend on
// s alone (not on the bytes around it).
func b64Forms(s string) []string {
	var out []string
	for pad := range 3 {
		enc := base64.StdEncoding.EncodeToString(append(make([]byte, pad), s...))
		// Character k covers bits [6k, 6k+6); s covers [8pad, 8(pad+len)).
		start := (8*pad + 5) / 6
		end := 8 * (pad + len(s)) / 6
		out = append(out, enc[start:end])
	}
	return out
}

// passwordForms are the forms of a password to look for: as it is, in
// base64 (AUTH LOGIN sends it alone, AUTH PLAIN inside a longer string), and
// the whole AUTH PLAIN response.
func passwordForms(user, password string) []string {
	forms := append([]string{password}, b64Forms(password)...)
	return append(forms, base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+password)))
}

// loginOnly is a dial function that makes the server at addr look as if it
// offered AUTH LOGIN only (smtptest offers PLAIN, LOGIN and XOAUTH2), and
// records what the client writes there. It needs a connection without TLS.
type loginOnly struct{ wireLog }

func (l *loginOnly) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := l.wireLog.dial(ctx, network, addr)
	if err != nil || addr != l.addr {
		return c, err
	}
	return &loginOnlyConn{Conn: c, br: bufio.NewReader(c)}, nil
}

type loginOnlyConn struct {
	net.Conn
	br      *bufio.Reader
	pending []byte
}

// Read passes the server's replies on line by line, with the AUTH line of
// the EHLO reply rewritten.
func (c *loginOnlyConn) Read(b []byte) (int, error) {
	if len(c.pending) == 0 {
		line, err := c.br.ReadString('\n')
		if len(line) > 4 && strings.HasPrefix(line[4:], "AUTH ") {
			line = line[:4] + "AUTH LOGIN\r\n"
		}
		if line == "" {
			return 0, err
		}
		c.pending = []byte(line)
	}
	n := copy(b, c.pending)
	c.pending = c.pending[n:]
	return n, nil
}

// logLines renders every log entry as the JSON and the console encoders
// would write it, fields and all.
func logLines(t *testing.T, logs *observer.ObservedLogs) []string {
	t.Helper()
	ec := zap.NewProductionEncoderConfig()
	encoders := []zapcore.Encoder{zapcore.NewJSONEncoder(ec), zapcore.NewConsoleEncoder(ec)}
	var out []string
	for _, e := range logs.All() {
		for _, enc := range encoders {
			buf, err := enc.EncodeEntry(e.Entry, e.Context)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, buf.String())
			buf.Free()
		}
		out = append(out, fmt.Sprintf("%s %s %+v", e.LoggerName, e.Message, e.ContextMap()))
	}
	return out
}

func TestNoPasswordAnywhereAfterPlainAndLoginAuth(t *testing.T) {
	t.Parallel()
	const (
		user         = "mailer"
		plainPass    = "pl41nSecretValue1"
		loginPass    = "l0g1nSecretValue22"
		wrongPlain   = "wr0ngPlainSecret333"
		wrongLogin   = "wr0ngLoginSecret4444"
		deferredPass = "t3mpFailSecret55555"
	)
	plainSrv := startServer(t, "127.0.0.2", func(s *smtptest.Server) { s.Users = map[string]string{user: plainPass} })
	loginSrv := startServer(t, "127.0.0.3", func(s *smtptest.Server) { s.Users = map[string]string{user: loginPass} })
	busySrv := startServer(t, "127.0.0.4", func(s *smtptest.Server) {
		s.Users = map[string]string{user: deferredPass}
		s.Fault = smtptest.FaultAt(smtptest.Auth, smtptest.Reply(454, smtp.EnhancedCode{4, 7, 0}, "Temporary authentication failure"))
	})
	login := &loginOnly{wireLog{addr: loginSrv.AddrString()}}
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		// The deferred message stays deferred, with its state file, until
		// the end of the test.
		c.Retry.MinBackoff = pipeline.Duration(time.Hour)
		c.Retry.MaxBackoff = pipeline.Duration(time.Hour)
	})
	logger, logs := observed(t) // debug level
	env.Start(pipeline.Options{Logger: logger, Dial: login.dial})

	withLogin := func(srv *smtptest.Server, password string, i int) string {
		p := srv.Params(fmt.Sprintf("user%d@example.org", i))
		p.Username, p.Password = user, queuefile.NewSecret(password)
		return env.Enqueue(testMessage(i), p)
	}
	viaPlain := withLogin(plainSrv, plainPass, 1)
	viaLogin := withLogin(loginSrv, loginPass, 2)
	refusedPlain := withLogin(plainSrv, wrongPlain, 3)
	refusedLogin := withLogin(loginSrv, wrongLogin, 4)
	deferred := withLogin(busySrv, deferredPass, 5)

	final := env.WaitFinal(4)
	wantSent(t, final[viaPlain])
	wantSent(t, final[viaLogin])
	for _, name := range []string{refusedPlain, refusedLogin} {
		wantFailed(t, final[name], stages.ClassPermanent)
		l := readXMLLog(t, env, name)
		if l.Failure.Code != 535 || !strings.Contains(l.Transcript, "AUTH ") || !strings.Contains(l.Transcript, "535") {
			t.Errorf("%s: failure %+v, transcript:\n%s\nwant a 535 and the AUTH exchange", name, l.Failure, l.Transcript)
		}
	}
	if !strings.Contains(readXMLLog(t, env, refusedLogin).Transcript, "AUTH LOGIN") {
		t.Errorf("the transcript of the refused LOGIN lacks AUTH LOGIN")
	}
	env.WaitFor("the deferral of "+deferred, func(fs []stages.Filed) bool { return count(fs, deferred, "deferred") > 0 })
	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}

	// The mechanisms really used.
	if wire := login.String(); !strings.Contains(wire, "AUTH LOGIN") || strings.Contains(wire, "AUTH PLAIN") {
		t.Errorf("to the server without PLAIN the client wrote:\n%s\nwant AUTH LOGIN only", wire)
	}
	// The forms looked for below are what the wire carried.
	for _, pw := range []string{loginPass, wrongLogin} {
		if wire := login.String(); !strings.Contains(wire, b64Forms(pw)[0]) {
			t.Errorf("AUTH LOGIN did not send %q as %q:\n%s", pw, b64Forms(pw)[0], wire)
		}
	}
	if msgs := plainSrv.Messages(); len(msgs) != 1 || msgs[0].AuthUser != user {
		t.Errorf("PLAIN server got %+v, want one message from %s", msgs, user)
	}
	if msgs := loginSrv.Messages(); len(msgs) != 1 || msgs[0].AuthUser != user {
		t.Errorf("LOGIN server got %+v, want one message from %s", msgs, user)
	}
	if _, err := stateOf(t, env.Config.QueueDir, deferred); err != nil {
		t.Errorf("the deferred message has no state file to search: %v", err)
	}

	var secrets []string
	for _, pw := range []string{plainPass, loginPass, wrongPlain, wrongLogin, deferredPass} {
		secrets = append(secrets, passwordForms(user, pw)...)
	}
	lines := logLines(t, logs)
	if len(lines) == 0 {
		t.Fatal("nothing was logged")
	}
	for _, l := range lines {
		for _, s := range secrets {
			if strings.Contains(l, s) {
				t.Errorf("a log line holds %q: %s", s, l)
			}
		}
	}
	files := filesUnder(t, env.Dir)
	var searched []string
	for _, rel := range files {
		b, err := os.ReadFile(filepath.Join(env.Dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		searched = append(searched, rel)
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds %q", rel, s)
			}
		}
	}
	t.Logf("searched %d log lines and %d files: %v", len(lines), len(searched), searched)
}

func TestPasswordsDoNotFormat(t *testing.T) {
	t.Parallel()
	const password, token = "f0rmatSecretValue6", "t0kenSecretValue77"
	route := stages.Route{Host: "smtp.example.com", Port: 587, TLS: queuefile.TLSStartTLS,
		Username: "mailer", Password: queuefile.NewSecret(password), OAuth2Token: queuefile.NewSecret(token), HELO: "app.example.com"}
	params := queuefile.Params{Host: "smtp.example.com", Port: 587, TLS: queuefile.TLSStartTLS,
		Username: "mailer", Password: queuefile.NewSecret(password), OAuth2Token: queuefile.NewSecret(token), From: "app@example.com", To: []string{"user@example.org"}}
	job := stages.Job{Name: "x.eml", Route: route, Params: &params}
	all := []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"}
	// fmt prints unexported fields, and a pointer under a verb that does
	// not suit it (%s, %q, ...), by reflection, calling no Format or
	// String method: a Secret keeps its value behind a pointer, which fmt
	// then prints as an address.
	type private struct {
		route  stages.Route
		params queuefile.Params
		job    *stages.Job
	}
	hidden := private{route: route, params: params, job: &job}
	values := []struct {
		what  string
		v     any
		verbs []string
	}{
		{"Route", route, all}, {"*Route", &route, all},
		{"Params", params, all}, {"*Params", &params, all}, {"[]Params", []queuefile.Params{params}, all},
		{"Job", job, all}, {"*Job", &job, all},
		{"map", map[string]any{"route": route, "params": &params}, all},
		{"unexported fields", hidden, all}, {"*unexported fields", &hidden, all},
	}
	forms := []string{password, token, hex.EncodeToString([]byte(password)), strings.ToUpper(hex.EncodeToString([]byte(password)))}
	forms = append(forms, b64Forms(password)...)
	for _, val := range values {
		what, v := val.what, val.v
		for _, verb := range val.verbs {
			out := fmt.Sprintf(verb, v)
			for _, s := range forms {
				if strings.Contains(out, s) {
					t.Errorf("fmt %s of a %s shows %q: %s", verb, what, s, out)
				}
			}
		}
		// And through zap, which marshals what it does not know as JSON.
		enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
		buf, err := enc.EncodeEntry(zapcore.Entry{Message: "x"}, []zap.Field{zap.Any("v", v)})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range forms {
			if strings.Contains(buf.String(), s) {
				t.Errorf("zap.Any of a %s shows %q: %s", what, s, buf.String())
			}
		}
		buf.Free()
	}
}
