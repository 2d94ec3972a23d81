package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// The headers of a webhook POST.
const (
	// SignatureHeader carries "sha256=" and the hex HMAC-SHA-256 of the
	// body under the webhook's secret.
	SignatureHeader = "X-SmtpQ-Signature"
	// EventIDHeader carries the event's id, as the body's "id" does.
	EventIDHeader = "X-SmtpQ-Event-Id"
)

// Webhook is one receiver of events.
type Webhook struct {
	URL    string
	Secret queuefile.Secret // HMAC-SHA-256 key (secret_file)
	Events []string         // the event types it gets; empty: all
}

// wants reports whether the webhook asked for events of type typ.
func (w *Webhook) wants(typ string) bool { return len(w.Events) == 0 || slices.Contains(w.Events, typ) }

// Sign returns the value of SignatureHeader for body under secret:
// "sha256=" and the hex HMAC-SHA-256. A receiver computes the same over the
// raw body and compares with hmac.Equal.
func Sign(secret queuefile.Secret, body []byte) string {
	m := hmac.New(sha256.New, []byte(secret.Reveal()))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// hook is a webhook with its outbox folder and the signal that new events
// wait in it.
type hook struct {
	Webhook
	key  string
	wake chan struct{} // capacity 1: a pending signal is enough
}

func (h *hook) signal() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// redactedURL is the webhook's URL for logs: no query (it may carry a
// token).
func (h *hook) redactedURL() string {
	u, err := url.Parse(h.URL)
	if err != nil {
		return h.key
	}
	u.RawQuery, u.Fragment, u.User = "", "", nil
	return u.String()
}

// deliverAll posts the webhook's pending events, oldest first, until ctx
// is done. After a failure it waits (doubling from MinBackoff up to
// MaxBackoff) and starts again with the oldest event still pending, so
// events reach one webhook in order; other webhooks are not held up.
func (n *Notifier) deliverAll(ctx context.Context, h *hook) {
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		if n.deliverPending(ctx, h) {
			backoff = min(max(backoff*2, n.MinBackoff), n.MaxBackoff)
			select {
			case <-ctx.Done():
			case <-n.Clock.After(backoff):
			}
			continue
		}
		backoff = 0
		select {
		case <-ctx.Done():
		case <-h.wake:
		}
	}
}

// deliverPending posts every event pending for h, and reports whether one
// failed (the rest then wait).
func (n *Notifier) deliverPending(ctx context.Context, h *hook) bool {
	ids, err := n.box.pending(h.key)
	if err != nil {
		n.Log.Error("listing webhook events", zap.String("url", h.redactedURL()), zap.Error(err))
		return true
	}
	for _, id := range ids {
		if ctx.Err() != nil {
			return false
		}
		body, err := n.box.read(h.key, id)
		if err != nil {
			// Not a network matter: retrying would hold up every event
			// behind it for good. Set it aside, named in the log.
			n.Log.Error("an outbox file cannot be read: set aside as .bad", zap.String("url", h.redactedURL()), zap.String("event", id), zap.Error(err))
			n.box.setAside(h.key, id)
			continue
		}
		if err := n.post(ctx, h, id, body); err != nil {
			if ctx.Err() == nil {
				n.Log.Warn("webhook delivery failed; retrying", zap.String("url", h.redactedURL()), zap.String("event", id), zap.Error(err))
			}
			return true
		}
		if err := n.box.remove(h.key, id); err != nil {
			n.Log.Error("removing a delivered event", zap.String("event", id), zap.Error(err))
		}
	}
	return false
}

// maxResponse is how much of a webhook's answer is read (and dropped).
const maxResponse = 64 << 10

// post sends one event; any answer but 2xx is a failure.
func (n *Notifier) post(ctx context.Context, h *hook, id string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, n.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building the request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "smtpq")
	req.Header.Set(EventIDHeader, id)
	req.Header.Set(SignatureHeader, Sign(h.Secret, body))
	resp, err := n.Client.Do(req)
	if err != nil {
		// A url.Error names the URL: give the reason alone.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponse))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("answered %s", resp.Status)
	}
	return nil
}
