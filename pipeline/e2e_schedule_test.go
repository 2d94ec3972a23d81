package pipeline_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/stages"
)

func TestNotBefore(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "127.0.0.2")
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{})
	p := srv.Params("later@example.org")
	p.NotBefore = time.Now().Add(2 * time.Second)
	name := env.Enqueue(testMessage(1), p)

	f := env.Wait(name)
	wantSent(t, f)
	msgs := srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("server received %d messages, want 1", len(msgs))
	}
	if at := msgs[0].Received; at.Before(p.NotBefore) {
		t.Errorf("received %v before its not-before time", p.NotBefore.Sub(at))
	}
	if got := f.Job.State.Attempts; got != 1 {
		t.Errorf("attempts = %d, want 1: waiting is not an attempt", got)
	}
	if r := results(env, name); len(r) < 2 || r[0] != "parked" || r[len(r)-1] != "sent" {
		t.Errorf("filings = %v, want parked first and sent last", r)
	}
}

func TestExpired(t *testing.T) {
	t.Parallel()
	srv := startServer(t, "127.0.0.2")
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{})
	p := srv.Params("late@example.org")
	p.Expires = time.Now().Add(-time.Minute)
	name := env.Enqueue(testMessage(1), p)

	f := env.Wait(name)
	wantFailed(t, f, stages.ClassExpired)
	if r := results(env, name); !slices.Equal(r, []string{"failed"}) {
		t.Errorf("filings = %v, want [failed]", r)
	}
	l := readXMLLog(t, env, name)
	if l.Failure.Class != "expired" || !strings.Contains(l.Failure.Text, "expired") || l.Attempts != 0 {
		t.Errorf("log: failure %+v after %d attempts, want class expired and no attempt", l.Failure, l.Attempts)
	}
	if n := srv.Sessions(); n != 0 {
		t.Errorf("%d sessions opened for an expired message", n)
	}
}
