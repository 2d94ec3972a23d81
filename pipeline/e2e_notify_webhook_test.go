package pipeline_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/notify"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
)

const webhookSecret = "e2e-webhook-secret-42"

// hookReceiver is an application's webhook endpoint on 127.0.0.1: it
// checks each POST's signature and keeps the events, refusing the first
// failFirst POSTs with 503.
type hookReceiver struct {
	t         *testing.T
	srv       *httptest.Server
	mu        sync.Mutex
	failFirst int
	posts     int
	badSig    int
	events    []notify.Event
	changed   chan struct{}
}

func startHookReceiver(t *testing.T, failFirst int) *hookReceiver {
	r := &hookReceiver{t: t, failFirst: failFirst, changed: make(chan struct{})}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *hookReceiver) serve(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	m := hmac.New(sha256.New, []byte(webhookSecret))
	m.Write(body)
	sig := "sha256=" + hex.EncodeToString(m.Sum(nil))
	r.mu.Lock()
	defer r.mu.Unlock()
	r.posts++
	if !hmac.Equal([]byte(sig), []byte(req.Header.Get(notify.SignatureHeader))) {
		r.badSig++
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if r.posts <= r.failFirst {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	var e notify.Event
	if err := json.Unmarshal(body, &e); err != nil || e.ID != req.Header.Get(notify.EventIDHeader) {
		r.t.Errorf("event %s (%v), id header %q", body, err, req.Header.Get(notify.EventIDHeader))
	}
	r.events = append(r.events, e)
	close(r.changed)
	r.changed = make(chan struct{})
}

// count returns how many POSTs arrived.
func (r *hookReceiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.posts
}

// eventsOf returns the events received about the message name.
func (r *hookReceiver) eventsOf(name string) []notify.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []notify.Event
	for _, e := range r.events {
		if e.Name == name {
			out = append(out, e)
		}
	}
	return out
}

// waitEvent waits for an event of type typ about the message name.
func (r *hookReceiver) waitEvent(name, typ string) notify.Event {
	r.t.Helper()
	deadline := time.After(pipelinetest.WaitTimeout)
	for {
		r.mu.Lock()
		for _, e := range r.events {
			if e.Name == name && e.Type == typ {
				r.mu.Unlock()
				return e
			}
		}
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			r.t.Fatalf("no %s event for %s", typ, name)
		}
	}
}

// withWebhook adds a webhook to r, its secret in a file beside the queue.
func withWebhook(r *hookReceiver, events ...string) func(*pipeline.Config) {
	return func(c *pipeline.Config) {
		secret := filepath.Join(filepath.Dir(c.QueueDir), "webhook-secret")
		if err := os.WriteFile(secret, []byte(webhookSecret+"\n"), 0o600); err != nil {
			r.t.Fatal(err)
		}
		c.Notify.Webhooks = append(c.Notify.Webhooks, pipeline.NotifyWebhook{URL: r.srv.URL + "/smtpq", SecretFile: secret, Events: events})
	}
}

func TestNotifyWebhookEventsForEachOutcome(t *testing.T) {
	var busyOnce sync.Once
	srv := startServer(t, "127.0.0.1", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			switch {
			case p.Step == smtptest.Rcpt && p.Arg == "gone@example.org":
				return smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
			case p.Step == smtptest.Rcpt && p.Arg == "busy@example.org":
				f := smtptest.Fault{}
				busyOnce.Do(func() { f = smtptest.Reply(451, smtp.EnhancedCode{4, 2, 0}, "busy, try later") })
				return f
			}
			return smtptest.Fault{}
		}
		s.Users = map[string]string{"app": "s3cret-login"}
	})
	r := startHookReceiver(t, 2) // the receiver is down for the first two POSTs
	env := pipelinetest.Start(t, pipelinetest.Config(withWebhook(r)))
	send := func(to string) string {
		p := srv.Params(to)
		p.From, p.Username, p.Password = "app@example.com", "app", queuefile.NewSecret("s3cret-login")
		return env.Enqueue([]byte("From: app@example.com\r\nMessage-ID: <"+to+">\r\nSubject: x\r\n\r\nx\r\n"), p)
	}
	busy, gone := send("busy@example.org"), send("gone@example.org")
	env.Wait(busy)
	env.Wait(gone)

	d := r.waitEvent(busy, notify.EventDeferred)
	if d.Reply == nil || d.Reply.Code != 451 || d.NextAttempt == nil || d.Attempts != 1 {
		t.Errorf("deferred event %+v", d)
	}
	s := r.waitEvent(busy, notify.EventSent)
	if s.ID == d.ID || s.MessageID != "busy@example.org" || s.From != "app@example.com" || s.Attempts != 2 ||
		s.Host != "127.0.0.1" || s.Path == "" {
		t.Errorf("sent event %+v", s)
	}
	f := r.waitEvent(gone, notify.EventFailed)
	if f.Class != "permanent" || f.Reply == nil || f.Reply.Enhanced != "5.1.1" || len(f.Recipients) != 1 {
		t.Errorf("failed event %+v", f)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.badSig != 0 {
		t.Errorf("%d POSTs with a bad signature", r.badSig)
	}
	for _, e := range r.events {
		b, _ := json.Marshal(e)
		if strings.Contains(string(b), "s3cret-login") || strings.Contains(string(b), webhookSecret) {
			t.Errorf("an event holds a secret: %s", b)
		}
	}
	if r.posts < len(r.events)+2 {
		t.Errorf("%d POSTs for %d events: the two refused were not retried", r.posts, len(r.events))
	}
}

func TestNotifyChangeNeedsARestart(t *testing.T) {
	r := startHookReceiver(t, 0)
	env := pipelinetest.Start(t)
	c := *env.Config
	withWebhook(r)(&c)
	if err := env.Pipeline.Reload(&c); err == nil || !strings.Contains(err.Error(), "notify") {
		t.Errorf("Reload with a new webhook: %v, want a refusal naming notify", err)
	}
}
