package notify_test

import (
	"context"
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

	"github.com/smtpq/smtpq/pipeline/notify"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

const hookSecret = "whsec-test-0123456789"

// delivery is one POST a receiver got.
type delivery struct {
	id    string // X-SmtpQ-Event-Id
	body  []byte
	event notify.Event
}

// receiver is a webhook receiver on 127.0.0.1 that checks each POST's
// signature as an application would, and fails the first fail POSTs.
type receiver struct {
	t    *testing.T
	srv  *httptest.Server
	mu   sync.Mutex
	fail int
	got  []delivery // every POST with a good signature, failed ones too
	bad  int        // POSTs whose signature did not verify
	ok   chan delivery
}

func newReceiver(t *testing.T, fail int) *receiver {
	r := &receiver{t: t, fail: fail, ok: make(chan delivery, 100)}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) serve(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(req.Body)
	if err != nil {
		http.Error(w, "read", http.StatusBadRequest)
		return
	}
	m := hmac.New(sha256.New, []byte(hookSecret))
	m.Write(body)
	want := "sha256=" + hex.EncodeToString(m.Sum(nil))
	r.mu.Lock()
	defer r.mu.Unlock()
	if !hmac.Equal([]byte(req.Header.Get(notify.SignatureHeader)), []byte(want)) {
		r.bad++
		http.Error(w, "bad signature", http.StatusUnauthorized)
		return
	}
	d := delivery{id: req.Header.Get(notify.EventIDHeader), body: body}
	if err := json.Unmarshal(body, &d.event); err != nil {
		r.t.Errorf("event is not JSON: %v\n%s", err, body)
	}
	r.got = append(r.got, d)
	if r.fail > 0 {
		r.fail--
		http.Error(w, "not now", http.StatusServiceUnavailable)
		return
	}
	r.ok <- d
}

// next waits for the next event the receiver accepted.
func (r *receiver) next() delivery {
	r.t.Helper()
	select {
	case d := <-r.ok:
		return d
	case <-time.After(10 * time.Second):
		r.t.Fatal("timed out waiting for a webhook delivery")
	}
	return delivery{}
}

func (r *receiver) posts() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivery(nil), r.got...)
}

// runNotifier runs n until the test ends.
func runNotifier(t *testing.T, n *notify.Notifier) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

func hookTo(r *receiver, events ...string) notify.Webhook {
	return notify.Webhook{URL: r.srv.URL + "/hook?token=x", Secret: queuefile.NewSecret(hookSecret), Events: events}
}

func sentFiling() stages.Filed {
	j := testJob(time.Now().Add(-time.Minute))
	j.Outcome = stages.Outcome{Verdict: stages.Sent, Attempted: true,
		Rcpts: []stages.RcptResult{{Addr: "a@example.org", Status: stages.RcptDelivered, Code: 250}}}
	return stages.Filed{Job: j, Verdict: stages.Sent, Path: "/sent/x.eml"}
}

func TestWebhookSignedEventWithoutCredentials(t *testing.T) {
	r := newReceiver(t, 0)
	n, _ := newNotifier(t, func(n *notify.Notifier) { n.Webhooks = []notify.Webhook{hookTo(r)} })
	runNotifier(t, n)
	file(n, sentFiling())
	d := r.next()
	e := d.event
	if d.id == "" || d.id != e.ID {
		t.Errorf("event id header %q, body %q", d.id, e.ID)
	}
	if e.Type != notify.EventSent || e.Name != "20261204T100000.000000000Z-abc.eml" || e.QueueID != "0123456789abcdef" ||
		e.MessageID != "inv-1@example.com" || e.From != "app@example.com" || len(e.Recipients) != 2 ||
		e.Host != "smtp.example.net" || e.Attempts != 2 || e.Path != "/sent/x.eml" {
		t.Errorf("event %+v", e)
	}
	for _, secret := range []string{testPassword, hookSecret, `"app"`} {
		if strings.Contains(string(d.body), secret) {
			t.Errorf("event holds %q: %s", secret, d.body)
		}
	}
	if r.bad != 0 {
		t.Errorf("%d POSTs with a bad signature", r.bad)
	}
}

func TestWebhookWrongSecretIsRefused(t *testing.T) {
	r := newReceiver(t, 0)
	n, _ := newNotifier(t, func(n *notify.Notifier) {
		h := hookTo(r)
		h.Secret = queuefile.NewSecret("another secret")
		n.Webhooks = []notify.Webhook{h}
	})
	runNotifier(t, n)
	file(n, sentFiling())
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		bad := r.bad
		r.mu.Unlock()
		if bad >= 2 {
			break // refused, and retried
		}
		if time.Now().After(deadline) {
			t.Fatalf("the receiver saw %d badly signed POSTs, want them retried", bad)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if len(r.posts()) != 0 {
		t.Error("the receiver accepted a POST signed with another secret")
	}
}

func TestWebhookRetriesAfterTheReceiverFails(t *testing.T) {
	r := newReceiver(t, 3)
	n, _ := newNotifier(t, func(n *notify.Notifier) { n.Webhooks = []notify.Webhook{hookTo(r)} })
	runNotifier(t, n)
	file(n, sentFiling())
	d := r.next()
	posts := r.posts()
	if len(posts) != 4 {
		t.Fatalf("%d POSTs, want 3 failed and 1 accepted", len(posts))
	}
	for _, p := range posts {
		if p.id != d.id || string(p.body) != string(d.body) {
			t.Errorf("a retry changed the event: %s %s, want %s", p.id, p.body, d.body)
		}
	}
	waitOutboxEmpty(t, n)
}

func TestWebhookEventFilter(t *testing.T) {
	failedOnly, all := newReceiver(t, 0), newReceiver(t, 0)
	n, _ := newNotifier(t, func(n *notify.Notifier) {
		n.Webhooks = []notify.Webhook{hookTo(failedOnly, notify.EventFailed), hookTo(all)}
	})
	runNotifier(t, n)
	file(n, sentFiling())
	file(n, stages.Filed{Job: failedJob(time.Now()), Verdict: stages.Failed, Path: "/u/x.eml"})
	file(n, stages.Filed{Job: testJob(time.Now()), Verdict: stages.Held})
	file(n, stages.Filed{Job: testJob(time.Now()), Verdict: stages.Parked})                      // no event
	file(n, stages.Filed{Job: testJob(time.Now()), Verdict: stages.Sent, Err: os.ErrPermission}) // not filed: no event
	if e := failedOnly.next().event; e.Type != notify.EventFailed || e.Class != "permanent" || e.Reply == nil || e.Reply.Code != 554 {
		t.Errorf("failed event %+v", e)
	}
	if a, b, c := all.next().event.Type, all.next().event.Type, all.next().event.Type; a != notify.EventSent || b != notify.EventFailed || c != notify.EventHeld {
		t.Errorf("events %s, %s, %s; want sent, failed, held in order", a, b, c)
	}
	waitOutboxEmpty(t, n)
	if len(failedOnly.posts()) != 1 || len(all.posts()) != 3 {
		t.Errorf("POSTs %d and %d, want 1 and 3", len(failedOnly.posts()), len(all.posts()))
	}
}

func TestWebhookEventsSurviveARestart(t *testing.T) {
	r := newReceiver(t, 0)
	n, _ := newNotifier(t, func(n *notify.Notifier) { n.Webhooks = []notify.Webhook{hookTo(r)} })
	// Recorded while no worker runs (the service stopped, or died, before
	// delivering it).
	file(n, sentFiling())
	if pending := outboxFiles(t, n); len(pending) != 1 {
		t.Fatalf("outbox %v, want the one event", pending)
	}
	again := newNotifierOn(t, n)
	runNotifier(t, again)
	if e := r.next().event; e.Type != notify.EventSent {
		t.Errorf("event %+v", e)
	}
	waitOutboxEmpty(t, again)
}

func outboxFiles(t *testing.T, n *notify.Notifier) []string {
	t.Helper()
	var out []string
	for _, w := range n.Webhooks {
		es, err := os.ReadDir(filepath.Join(n.QueueDir, notify.EventsDir, notify.HookKey(w.URL)))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			out = append(out, e.Name())
		}
	}
	return out
}

// waitOutboxEmpty waits until every delivered event's file is removed.
func waitOutboxEmpty(t *testing.T, n *notify.Notifier) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(outboxFiles(t, n)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("outbox still holds %v", outboxFiles(t, n))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWebhookUnreadableOutboxFileIsSetAside(t *testing.T) {
	r := newReceiver(t, 0)
	n, _ := newNotifier(t, func(n *notify.Notifier) { n.Webhooks = []notify.Webhook{hookTo(r)} })
	dir := filepath.Join(n.QueueDir, notify.EventsDir, notify.HookKey(n.Webhooks[0].URL))
	huge := filepath.Join(dir, "0000.json") // sorts before any event id
	if err := os.WriteFile(huge, make([]byte, 1<<20+1), 0o640); err != nil {
		t.Fatal(err)
	}
	runNotifier(t, n)
	file(n, sentFiling())
	if e := r.next().event; e.Type != notify.EventSent {
		t.Errorf("event %+v", e)
	}
	if _, err := os.Stat(huge + ".bad"); err != nil {
		t.Errorf("the unreadable file was not set aside: %v", err)
	}
}
