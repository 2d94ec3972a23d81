package pipeline

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"reflect"
	"slices"

	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/notify"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// validateNotify checks the notify section; each error names the setting.
func (c *Config) validateNotify() []error {
	n := &c.Notify
	var errs []error
	if (n.DSN.Failure || n.DSN.Delay > 0) && c.RecipientFile == "" {
		errs = append(errs, errors.New("notify.dsn needs recipient_file: notices are queued sealed to the service's key"))
	}
	seen := map[string]int{}
	for i, w := range n.Webhooks {
		key := fmt.Sprintf("notify.webhooks[%d]", i)
		if err := checkWebhookURL(w.URL); err != nil {
			errs = append(errs, fmt.Errorf("%s.url: %w", key, err))
		} else if j, dup := seen[w.URL]; dup {
			errs = append(errs, fmt.Errorf("%s.url: the same URL as notify.webhooks[%d]: merge them", key, j))
		}
		seen[w.URL] = i
		if w.SecretFile == "" {
			errs = append(errs, fmt.Errorf("%s.secret_file is required (events are signed with it)", key))
		}
		for _, e := range w.Events {
			if _, err := parseEnum(e, "event", notify.EventTypes...); err != nil {
				errs = append(errs, fmt.Errorf("%s.events: %w", key, err))
			}
		}
	}
	return errs
}

// checkWebhookURL refuses what is not an http or https URL with a host,
// and a user or password in it: they would reach the logs; the webhook's
// secret belongs in secret_file.
func checkWebhookURL(s string) error {
	if s == "" {
		return errors.New("is required")
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return fmt.Errorf("%q is not a URL", s)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q: want an http:// or https:// URL", u.Redacted())
	case u.Host == "":
		return fmt.Errorf("%q has no host", u.Redacted())
	case u.User != nil:
		return fmt.Errorf("%q: no user or password in the URL (events are signed with secret_file)", u.Redacted())
	}
	return nil
}

// normalize writes the events in lower case, each once.
func (n *NotifyConfig) normalize() {
	for i := range n.Webhooks {
		var evs StringList
		for _, e := range n.Webhooks[i].Events {
			if v, err := parseEnum(e, "event", notify.EventTypes...); err == nil && !slices.Contains(evs, v) {
				evs = append(evs, v)
			}
		}
		n.Webhooks[i].Events = evs
	}
}

// clone returns a copy of n that shares no slice with it.
func (n NotifyConfig) clone() NotifyConfig {
	n.Webhooks = slices.Clone(n.Webhooks)
	for i := range n.Webhooks {
		n.Webhooks[i].Events = slices.Clone(n.Webhooks[i].Events)
	}
	return n
}

// notifyChanged reports whether the notify section differs between two
// normalised configurations: it cannot change without a restart.
func notifyChanged(a, b *Config) bool { return !reflect.DeepEqual(a.Notify, b.Notify) }

// newNotifier builds the notifier of the notify section, opened (its
// folders made), or returns nil when the section asks for nothing. The
// webhooks' secrets are read here, with the bounded secret reader.
func (p *Pipeline) newNotifier(cfg *Config, clock stages.Clock, log *zap.Logger) (*notify.Notifier, error) {
	nc := cfg.Notify
	n := &notify.Notifier{
		QueueDir: cfg.QueueDir, Failure: nc.DSN.Failure, Delay: nc.DSN.Delay.D(),
		DefaultRelay: cfg.DefaultRelay, ReportingMTA: cfg.HELO,
		Clock: clock, Log: log, Crash: p.opts.Crash,
	}
	if cfg.NATS == nil {
		n.Locate = locateInQueue(spool.Dirs{Queue: cfg.QueueDir, Sent: cfg.SentDir, Undeliverable: cfg.UndeliverableDir})
	}
	for i, w := range nc.Webhooks {
		secret, err := queuefile.ReadSecretFile(w.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("notify.webhooks[%d].secret_file: %w", i, err)
		}
		n.Webhooks = append(n.Webhooks, notify.Webhook{URL: w.URL, Secret: secret, Events: w.Events})
	}
	if !n.Enabled() {
		return nil, nil
	}
	if n.ReportingMTA == "" {
		n.ReportingMTA, _ = os.Hostname()
	}
	if n.Failure || n.Delay > 0 {
		rcpts, err := queuefile.LoadRecipients(cfg.RecipientFile)
		if err != nil {
			return nil, fmt.Errorf("notify.dsn needs the service's public key (recipient_file) to queue notices: %w", err)
		}
		n.Queue = &queuefile.Queue{Dir: cfg.QueueDir, Recipients: rcpts, Now: clock.Now}
	}
	if err := n.Open(); err != nil {
		return nil, fmt.Errorf("notify: %w", err)
	}
	return n, nil
}

// locateInQueue finds messages by id in the directory spool's working
// folders, in one listing, for the notifier's resolution of the filings a
// crash cut short.
func locateInQueue(d spool.Dirs) notify.Locate {
	return func(ids []string) (map[string]string, error) {
		want := map[string]bool{}
		for _, id := range ids {
			want[id] = true
		}
		where := map[string]string{}
		err := spool.Walk(context.Background(), d, spool.QueuePlaces, func(e spool.Entry) error {
			if want[e.ID] {
				where[e.ID] = string(e.Place)
			}
			return nil
		})
		return where, err
	}
}
