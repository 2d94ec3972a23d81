package pipeline_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

// tlsServer starts a server on ip with a certificate for ip, and returns it
// with a pool that trusts the certificate.
func tlsServer(t *testing.T, ip string, configure ...func(*smtptest.Server)) (*smtptest.Server, *x509.CertPool) {
	t.Helper()
	cert, pool, err := smtptest.SelfSigned(ip)
	if err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, ip, append([]func(*smtptest.Server){func(s *smtptest.Server) {
		s.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	}}, configure...)...)
	return srv, pool
}

// observed returns a logger that records every entry, at every level, and
// also writes to the test log.
func observed(t *testing.T) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core())), logs
}

// secretForms returns the ways a password could show up: as it is, and
// base64-encoded as in AUTH PLAIN and AUTH LOGIN.
func secretForms(user, password string) []string {
	b64 := base64.StdEncoding.EncodeToString
	return []string{
		password,
		b64([]byte(password)),
		b64([]byte("\x00" + user + "\x00" + password)),
	}
}

// checkNoSecrets fails the test if any of secrets is in a file under dir or
// in a log entry.
func checkNoSecrets(t *testing.T, dir string, logs *observer.ObservedLogs, secrets []string) {
	t.Helper()
	files := filesUnder(t, dir)
	if len(files) == 0 {
		t.Fatalf("no files under %s", dir)
	}
	for _, rel := range files {
		b, err := os.ReadFile(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("%s holds the secret %q", rel, s)
			}
		}
	}
	entries := logs.All()
	if len(entries) == 0 {
		t.Fatal("nothing was logged")
	}
	for _, e := range entries {
		line := fmt.Sprintf("%s %s %v", e.LoggerName, e.Message, e.ContextMap())
		for _, s := range secrets {
			if strings.Contains(line, s) {
				t.Errorf("log entry holds the secret %q: %s", s, line)
			}
		}
	}
}

func TestAuthAndCredentialsNeverLeak(t *testing.T) {
	t.Parallel()
	const (
		user, password   = "alice", "Tr0ub4dor&3-correct-horse"
		wrong            = "wr0ng-Pa55word-zebra"
		local, localPass = "bob", "l0cal-s3cret-kangaroo"
	)
	// A submission server: STARTTLS, and AUTH only after it.
	secure, pool := tlsServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Users = map[string]string{user: password}
	})
	// A server without TLS on loopback, where AUTH in the clear is allowed.
	plain := startServer(t, "127.0.0.1", func(s *smtptest.Server) {
		s.Users = map[string]string{local: localPass}
	})
	env := pipelinetest.New(t)
	logger, logs := observed(t)
	env.Start(pipeline.Options{Logger: logger, TLSConfig: &tls.Config{RootCAs: pool}})

	p := queuefile.Params{Host: secure.Host(), Port: secure.Port(), TLS: queuefile.TLSStartTLS,
		Username: user, Password: queuefile.NewSecret(password), From: "alice@example.com", To: []string{"tls@example.org"}}
	viaTLS := env.Enqueue(testMessage(1), p)
	p.Password, p.To = queuefile.NewSecret(wrong), []string{"wrong@example.org"}
	refused := env.Enqueue(testMessage(2), p)
	lp := plain.Params("local@example.org")
	lp.Username, lp.Password = local, queuefile.NewSecret(localPass)
	viaLoopback := env.Enqueue(testMessage(3), lp)

	final := env.WaitFinal(3)
	wantSent(t, final[viaTLS])
	wantSent(t, final[viaLoopback])
	if msgs := secure.Messages(); len(msgs) != 1 || msgs[0].AuthUser != user || !msgs[0].TLS {
		t.Errorf("TLS server got %+v, want one message over TLS from %s", msgs, user)
	}
	if msgs := plain.Messages(); len(msgs) != 1 || msgs[0].AuthUser != local || msgs[0].TLS {
		t.Errorf("loopback server got %+v, want one message in the clear from %s", msgs, local)
	}

	f := final[refused]
	wantFailed(t, f, stages.ClassPermanent)
	if r := results(env, refused); len(r) != 1 {
		t.Errorf("filings of the refused login = %v, want one: a 535 is not retried", r)
	}
	l := readXMLLog(t, env, refused)
	if l.Failure.Code != 535 || l.Failure.Step != "auth" {
		t.Errorf("failure = %+v, want 535 at auth", l.Failure)
	}
	if !strings.Contains(l.Transcript, "AUTH PLAIN") || !strings.Contains(l.Transcript, "535") {
		t.Errorf("transcript lacks the refused AUTH:\n%s", l.Transcript)
	}

	if err := env.Stop(); err != nil {
		t.Fatal(err)
	}
	var secrets []string
	secrets = append(secrets, secretForms(user, password)...)
	secrets = append(secrets, secretForms(user, wrong)...)
	secrets = append(secrets, secretForms(local, localPass)...)
	checkNoSecrets(t, env.Dir, logs, secrets)
}

func TestImplicitTLS(t *testing.T) {
	t.Parallel()
	srv, pool := tlsServer(t, "127.0.0.2", func(s *smtptest.Server) { s.ImplicitTLS = true })
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{TLSConfig: &tls.Config{RootCAs: pool}})
	p := srv.Params("user@example.org")
	p.TLS = queuefile.TLSImplicit
	name := env.Enqueue(testMessage(1), p)

	wantSent(t, env.Wait(name))
	if msgs := srv.Messages(); len(msgs) != 1 || !msgs[0].TLS {
		t.Errorf("server got %+v, want one message over TLS", msgs)
	}
}

func TestUntrustedCertificateIsNotUsed(t *testing.T) {
	t.Parallel()
	implicit, _ := tlsServer(t, "127.0.0.2", func(s *smtptest.Server) { s.ImplicitTLS = true })
	starttls, _ := tlsServer(t, "127.0.0.3")
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{}) // the system's roots only

	var names []string
	for _, c := range []struct {
		srv  *smtptest.Server
		mode queuefile.TLSMode
	}{{implicit, queuefile.TLSImplicit}, {starttls, queuefile.TLSStartTLS}} {
		p := c.srv.Params("user@example.org")
		p.TLS = c.mode
		names = append(names, env.Enqueue(testMessage(1), p))
	}
	firstFiling := func(name string) stages.Filed {
		var first stages.Filed
		env.WaitFor("the first filing of "+name, func(fs []stages.Filed) bool {
			for _, f := range fs {
				if f.Job.Name == name {
					first = f
					return true
				}
			}
			return false
		})
		return first
	}
	for i, name := range names {
		f := firstFiling(name)
		e := f.Job.Outcome.Err
		if f.Verdict != stages.Deferred || e == nil || e.Step != "tls" || !strings.Contains(e.Text, "certificate") {
			t.Errorf("server %d: %s (%v), want deferred with a certificate error at the tls step", i, f.Verdict, e)
		}
	}
	if n := len(implicit.Messages()) + len(starttls.Messages()); n != 0 {
		t.Errorf("%d messages sent over an untrusted connection", n)
	}
}

// STARTTLS is smtpq's own: the EHLO before it carries the configured name
// (go-smtp's sends "localhost"), the transactions after it are pipelined,
// and the transcript shows the plaintext part once.
func TestStartTLSSessionSaysItsNameAndPipelines(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var hellos []string
	secure, pool := tlsServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Hello {
				mu.Lock()
				hellos = append(hellos, p.Arg)
				mu.Unlock()
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t, func(c *pipeline.Config) { c.HELO = "mx.client.example" })
	env.Start(pipeline.Options{TLSConfig: &tls.Config{RootCAs: pool}})
	p := queuefile.Params{Host: secure.Host(), Port: secure.Port(), TLS: queuefile.TLSStartTLS,
		From: "alice@example.com", To: []string{"a@example.org", "b@example.org"}}
	first := env.Enqueue(testMessage(1), p)
	second := env.Enqueue(testMessage(2), p)
	final := env.WaitFinal(2)
	wantSent(t, final[first])
	wantSent(t, final[second])
	mu.Lock()
	defer mu.Unlock()
	if len(hellos) == 0 {
		t.Fatal("the server saw no EHLO")
	}
	for _, h := range hellos {
		if h != "mx.client.example" {
			t.Fatalf("EHLO names %v, want mx.client.example every time, before and after STARTTLS", hellos)
		}
	}
	msgs := secure.Messages()
	if len(msgs) != 2 || !msgs[0].TLS || !msgs[1].TLS {
		t.Fatalf("server got %+v, want two messages over TLS", msgs)
	}
	// The message that opened the session has its beginning in its
	// transcript (which one did depends on the order the queue was read in).
	tr := final[first].Job.Outcome.Transcript
	if !strings.Contains(tr, "C: STARTTLS") {
		tr = final[second].Job.Outcome.Transcript
	}
	for _, want := range []string{"C: EHLO mx.client.example", "C: STARTTLS", "[TLS started]", "C: RCPT TO:<b@example.org>"} {
		if !strings.Contains(tr, want) {
			t.Errorf("transcript lacks %q:\n%s", want, tr)
		}
	}
	if n := strings.Count(tr, "S: 220 "); n != 2 {
		t.Errorf("transcript has %d 220 replies, want the greeting and the go-ahead for STARTTLS:\n%s", n, tr)
	}
}
