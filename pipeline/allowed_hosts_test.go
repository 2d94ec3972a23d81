package pipeline_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

func TestHostPatterns(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		pattern, canonical string
		match, miss        [][2]any // host, port
	}{
		{"smtp.example.com:587", "smtp.example.com:587",
			[][2]any{{"smtp.example.com", 587}, {"SMTP.Example.COM.", 587}},
			[][2]any{{"smtp.example.com", 25}, {"mx.smtp.example.com", 587}, {"smtp.example.com.evil.org", 587}}},
		{" SMTP.Example.com.:587 ", "smtp.example.com:587", [][2]any{{"smtp.example.com", 587}}, nil},
		{"*.example.org:*", "*.example.org:*",
			[][2]any{{"mx.example.org", 25}, {"a.b.Example.ORG", 587}},
			[][2]any{{"example.org", 25}, {"badexample.org", 25}, {"example.org.evil.com", 25}, {"10.0.0.5", 25}}},
		{"10.0.0.5:25", "10.0.0.5:25",
			[][2]any{{"10.0.0.5", 25}, {"::ffff:10.0.0.5", 25}},
			[][2]any{{"10.0.0.5", 587}, {"10.0.0.50", 25}, {"10.0.0.5.example.org", 25}}},
		{"[::1]:25", "[::1]:25",
			[][2]any{{"::1", 25}, {"[::1]", 25}, {"0:0:0:0:0:0:0:1", 25}},
			[][2]any{{"127.0.0.1", 25}, {"::2", 25}}},
		{"*:465", "*:465", [][2]any{{"anything.example", 465}, {"192.0.2.1", 465}}, [][2]any{{"anything.example", 25}}},
	} {
		p, err := pipeline.ParseHostPattern(tc.pattern)
		if err != nil {
			t.Errorf("%q: %v", tc.pattern, err)
			continue
		}
		if p.String() != tc.canonical {
			t.Errorf("%q reads as %q, want %q", tc.pattern, p, tc.canonical)
		}
		for _, m := range tc.match {
			if !p.Match(m[0].(string), m[1].(int)) {
				t.Errorf("%q does not match %s port %d", tc.pattern, m[0], m[1])
			}
		}
		for _, m := range tc.miss {
			if p.Match(m[0].(string), m[1].(int)) {
				t.Errorf("%q matches %s port %d", tc.pattern, m[0], m[1])
			}
		}
	}
	for _, bad := range []string{
		"smtp.example.com", "smtp.example.com:", "smtp.example.com:0", "smtp.example.com:65536", "smtp.example.com:smtp",
		"::1:25", "[10.0.0.5]:25", "[smtp.example.com]:25", "smtp*.example.com:25", "*example.com:25",
		"a.*.example.com:25", "smtp_example com:25", ":25", "", "http://smtp.example.com:25",
	} {
		if p, err := pipeline.ParseHostPattern(bad); err == nil {
			t.Errorf("%q accepted as %q", bad, p)
		} else if !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
			t.Errorf("%q: error %q does not name the value", bad, err)
		}
	}
}

// TestConfigAllowedHosts: allowed_hosts is checked at load, naming the
// entry; relay profiles must be inside it; its entries are kept in their
// canonical form.
func TestConfigAllowedHosts(t *testing.T) {
	t.Parallel()
	cfg, err := parseYAML(t, `
allowed_hosts: ["SMTP.example.com:587", "*.Example.org:*", "[::1]:25"]
relays:
  main: {host: smtp.example.com, port: 587}
  mx: {host: mx.example.org}
`)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cfg.AllowedHosts, " "); got != "smtp.example.com:587 *.example.org:* [::1]:25" {
		t.Errorf("allowed_hosts = %s", got)
	}
	if !cfg.Allows("mx.example.org", 25) || cfg.Allows("smtp.example.com", 25) {
		t.Error("Allows does not follow allowed_hosts")
	}
	for _, tc := range []struct{ yaml, want string }{
		{"allowed_hosts: [smtp.example.com]", `allowed_hosts[0]: "smtp.example.com": want host:port`},
		{"allowed_hosts: ['a.example.com:25', 'b.example.com:99999']", `allowed_hosts[1]: "b.example.com:99999": port`},
		{"allowed_hosts: ['smtp.example.com:587']\nrelays: {main: {host: smtp.example.com}}", "relays.main: smtp.example.com:25 is not in allowed_hosts"},
		{"allowed_hosts: ['smtp.example.com:587']\nrelays: {s: {host: smtp.example.com, tls: implicit}}", "relays.s: smtp.example.com:465 is not in allowed_hosts"},
	} {
		if _, err := parseYAML(t, tc.yaml); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.yaml, err, tc.want)
		}
	}
}

// TestAllowedHostsLimitWhereProducersSend: a message for a server outside
// allowed_hosts is filed as invalid and the server never hears of it; a
// reload that adds the server lets the next one through.
func TestAllowedHostsLimitWhereProducersSend(t *testing.T) {
	t.Parallel()
	allowed := startServer(t, "127.0.0.6")
	internal := startServer(t, "127.0.0.7")
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		c.AllowedHosts = []string{fmt.Sprintf("127.0.0.6:%d", allowed.Port()), "*.example.org:*"}
	})
	env.Start(pipeline.Options{})
	ok := env.Enqueue(testMessage(1), allowed.Params("a@example.org"))
	refused := env.Enqueue(testMessage(2), internal.Params("b@example.org"))
	wantSent(t, env.Wait(ok))
	f := env.Wait(refused)
	wantFailed(t, f, stages.ClassInvalid)
	if e := f.Job.Outcome.Err; e == nil || !strings.Contains(e.Error(), "allowed_hosts") {
		t.Errorf("refusal %v does not name allowed_hosts", e)
	}
	if n := internal.Sessions(); n != 0 {
		t.Errorf("the server outside allowed_hosts got %d connections", n)
	}

	re := *env.Config
	re.AllowedHosts = append(re.AllowedHosts, "127.0.0.7:*")
	if err := env.Pipeline.Reload(&re); err != nil {
		t.Fatal(err)
	}
	wantSent(t, env.Wait(env.Enqueue(testMessage(3), internal.Params("c@example.org"))))
}

// TestAllowedHostsReloadStopsQueuedMail: messages already parsed and
// waiting in the service for a server are not sent once a reload takes the
// server out of allowed_hosts: they go back to the queue and are filed as
// invalid, and the server gets only the message it was already reading.
func TestAllowedHostsReloadStopsQueuedMail(t *testing.T) {
	t.Parallel()
	reading := make(chan struct{}, 8)
	srv := startServer(t, "127.0.0.8", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.AfterDot {
				reading <- struct{}{}
				return smtptest.Fault{Stall: time.Second}
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t, withHost("127.0.0.8", hostLimits(1)), func(c *pipeline.Config) {
		c.AllowedHosts = []string{fmt.Sprintf("127.0.0.8:%d", srv.Port())}
	})
	env.Start(pipeline.Options{})
	first := env.Enqueue(testMessage(1), srv.Params("a@example.org"))
	<-reading // the one session is busy with it
	waiting := []string{
		env.Enqueue(testMessage(2), srv.Params("b@example.org")),
		env.Enqueue(testMessage(3), srv.Params("c@example.org")),
	}
	// Wait until the service has claimed all three (the Parser follows at
	// once), so that the two wait in the Dispatcher when the reload comes.
	dirs := spool.Dirs{Queue: env.Config.QueueDir, Sent: env.Config.SentDir, Undeliverable: env.Config.UndeliverableDir}
	for deadline := time.Now().Add(pipelinetest.WaitTimeout); ; {
		active := 0
		spool.Walk(t.Context(), dirs, []spool.Place{spool.PlaceActive}, func(spool.Entry) error { active++; return nil })
		if active == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d messages claimed, want 3", active)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	re := *env.Config
	re.AllowedHosts = []string{"*.example.org:*"}
	if err := env.Pipeline.Reload(&re); err != nil {
		t.Fatal(err)
	}
	wantSent(t, env.Wait(first))
	for _, name := range waiting {
		f := env.Wait(name)
		wantFailed(t, f, stages.ClassInvalid)
		if e := f.Job.Outcome.Err; e == nil || !strings.Contains(e.Error(), "allowed_hosts") {
			t.Errorf("%s: %v, want a refusal naming allowed_hosts", name, e)
		}
	}
	if n := len(srv.Messages()); n != 1 {
		t.Errorf("the server got %d messages, want only the one it was reading at the reload", n)
	}
}
