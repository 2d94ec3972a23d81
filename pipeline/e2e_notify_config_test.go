package pipeline_test

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNotifyConfigParses(t *testing.T) {
	t.Parallel()
	cfg, err := parseYAML(t, `
recipient_file: keys/recipient.txt
notify:
  dsn: {failure: true, delay: 4h}
  webhooks:
    - url: https://app.example.com/hook
      secret_file: hook-secret
      events: [Sent, " FAILED ", sent]
    - url: http://127.0.0.1:8080/all
      secret_file: /etc/smtpq/other
`)
	if err != nil {
		t.Fatal(err)
	}
	n := cfg.Notify
	if !n.DSN.Failure || n.DSN.Delay.D() != 4*time.Hour || len(n.Webhooks) != 2 {
		t.Fatalf("notify %+v", n)
	}
	if w := n.Webhooks[0]; w.SecretFile != "/etc/smtpq/hook-secret" || !slices.Equal(w.Events, []string{"sent", "failed"}) {
		t.Errorf("webhook %+v: want the secret's path made absolute and the events in lower case, once each", w)
	}
	if len(n.Webhooks[1].Events) != 0 {
		t.Errorf("events %v, want none given (all)", n.Webhooks[1].Events)
	}
}

func TestNotifyConfigErrorsNameTheKey(t *testing.T) {
	t.Parallel()
	for text, want := range map[string]string{
		"notify: {dsn: {failur: true}}": `unknown key "failur" (did you mean failure?)`,
		"notify: {webhook: []}":         `unknown key "webhook" (did you mean webhooks?)`,
		"notify: {dsn: {delay: soon}}":  `"soon" is not a duration`,
		"notify: {webhooks: [{url: 'http://h/x', secret_file: s, events: [bounce]}]}":                    `notify.webhooks[0].events: unknown event "bounce"`,
		"notify: {webhooks: [{url: 'http://h/x', secret_file: s}, {url: 'http://h/x', secret_file: s}]}": "notify.webhooks[1].url: the same URL as notify.webhooks[0]",
	} {
		_, err := parseYAML(t, text)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", text, err, want)
		}
	}
}
