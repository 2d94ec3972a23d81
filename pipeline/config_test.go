package pipeline_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// baseYAML is the smallest valid configuration.
const baseYAML = "queue_dir: q\nsent_dir: s\nundeliverable_dir: u\n"

func parseYAML(t *testing.T, text string) (*pipeline.Config, error) {
	t.Helper()
	return pipeline.ParseConfig([]byte(baseYAML+text), "/etc/smtpq/test.yaml")
}

// TestConfigEnumsInAnyCase: an operator may write an enumerated value in
// any case, with spaces around; what the rest of the service sees is the
// constant. (tls: STARTTLS used to pass validation and then send in plain
// text.)
func TestConfigEnumsInAnyCase(t *testing.T) {
	t.Parallel()
	cfg, err := parseYAML(t, `
relays:
  main: {host: smtp.example.com, port: 587, tls: STARTTLS}
  smtps: {host: smtp.example.com, port: 465, tls: " Implicit "}
  local: {host: 127.0.0.1, tls: None}
  dflt: {host: smtp.example.com}
log: {level: Warn, format: JSON}
`)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]queuefile.TLSMode{
		"main": queuefile.TLSStartTLS, "smtps": queuefile.TLSImplicit, "local": queuefile.TLSNone, "dflt": queuefile.TLSDefault,
	} {
		if got := queuefile.TLSMode(cfg.Relays[name].TLS); got != want {
			t.Errorf("relays.%s.tls = %q, want %q", name, got, want)
		}
	}
	if cfg.Log.Level != "warn" || cfg.Log.Format != "json" {
		t.Errorf("log = %+v, want level warn and format json", cfg.Log)
	}
}

// TestConfigRefusesUnknownValues: an enumerated value that is none of the
// allowed ones is refused at load, naming the setting, the value and what
// is allowed.
func TestConfigRefusesUnknownValues(t *testing.T) {
	t.Parallel()
	wantRefused(t, []refusedConfig{
		{"relays: {main: {host: smtp.example.com, tls: start-tls}}", []string{"relays.main.tls", `"start-tls"`, "implicit", "starttls", "none"}},
		{"relays: {main: {host: smtp.example.com, tls: ssl}}", []string{"relays.main.tls", `"ssl"`, "implicit"}},
		{"log: {level: verbose}", []string{"log.level", `"verbose"`, "debug", "info", "warn", "error"}},
		{"log: {level: warning}", []string{"log.level", `"warning"`}},
		{"log: {format: text}", []string{"log.format", `"text"`, "console", "json"}},
	})
}

// TestConfigRefusesUnknownKeys: a typo in a key is an error naming the key
// and its line, at any depth; so is a second YAML document, which would
// otherwise be ignored.
func TestConfigRefusesUnknownKeys(t *testing.T) {
	t.Parallel()
	wantRefused(t, []refusedConfig{
		{"max_thread: 4\n", []string{`line 4: unknown key "max_thread" (did you mean max_threads?)`}},
		{"relays:\n  main:\n    host: smtp.example.com\n    hots: x\n", []string{"hots", "line 7"}},
		{"hosts:\n  default:\n    max_conections: 2\n", []string{`line 6: unknown key "max_conections" (did you mean max_connections?)`}},
		{"hosts:\n  mx.example.com:\n    rate: 1\n    brust: 2\n", []string{"brust", "line 7"}},
		{"log:\n  levle: debug\n", []string{"levle", "line 5"}},
		{"retry:\n  max_attempt: 3\n", []string{"max_attempt", "line 5"}},
		{"allowed_host: ['*:*']\n", []string{"allowed_host", "line 4"}},
		{"max_threads: 4\n---\nmax_threads: 8\n", []string{"one YAML document", "line 5"}},
	})
}

// refusedConfig is a configuration text and what its error must mention.
type refusedConfig struct {
	yaml string
	want []string
}

// wantRefused checks that each configuration is refused at load with an
// error that mentions everything it wants.
func wantRefused(t *testing.T, cases []refusedConfig) {
	t.Helper()
	for _, tc := range cases {
		_, err := parseYAML(t, tc.yaml)
		if err == nil {
			t.Errorf("%q: accepted", tc.yaml)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not mention %s", tc.yaml, err, w)
			}
		}
	}
}

// TestConfigHostKeys: hosts keys are matched as the Sender names hosts
// (lower case, no brackets, no final dot), and two keys for one host are
// refused instead of one silently winning.
func TestConfigHostKeys(t *testing.T) {
	t.Parallel()
	cfg, err := parseYAML(t, `
hosts:
  default: {max_connections: 3}
  MX.Example.COM.: {max_connections: 1}
  "[::1]": {max_connections: 2}
`)
	if err != nil {
		t.Fatal(err)
	}
	for host, want := range map[string]int{"mx.example.com": 1, "::1": 2, "other.example.com": 3} {
		if got := cfg.Limits(host).MaxConnections; got != want {
			t.Errorf("Limits(%q).MaxConnections = %d, want %d", host, got, want)
		}
	}
	for _, dup := range []string{
		"hosts:\n  mx.example.com: {rate: 1}\n  MX.example.com: {rate: 2}\n",
		"hosts:\n  default: {rate: 1}\n  Default: {rate: 2}\n",
	} {
		_, err := parseYAML(t, dup)
		if err == nil || !strings.Contains(err.Error(), "same host") {
			t.Errorf("%q: %v, want an error about two keys for the same host", dup, err)
		}
	}
}

// TestValidateAcceptsAnyCaseFromGo: a configuration built in Go is checked
// with the same rules as a file: any case passes, unknown values do not.
func TestValidateAcceptsAnyCaseFromGo(t *testing.T) {
	t.Parallel()
	cfg := pipeline.Defaults()
	cfg.QueueDir, cfg.SentDir, cfg.UndeliverableDir = "/q", "/s", "/u"
	cfg.Relays = map[string]pipeline.Relay{"main": {Host: "smtp.example.com", TLS: "StartTLS"}}
	cfg.Log.Level, cfg.Log.Format = "DEBUG", "Console"
	if err := cfg.Validate(); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	if cfg.Relays["main"].TLS != "StartTLS" {
		t.Errorf("Validate changed the caller's configuration: relays.main.tls %q", cfg.Relays["main"].TLS)
	}
	cfg.Relays = map[string]pipeline.Relay{"main": {Host: "smtp.example.com", TLS: "tls"}}
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("relays.main.tls: unknown TLS mode %q", "tls")) {
		t.Errorf("Validate with tls %q: %v", "tls", err)
	}
}

// TestConfigNATS: the nats section is read with its paths made absolute,
// and each mistake in it is refused naming the key.
func TestConfigNATS(t *testing.T) {
	t.Parallel()
	cfg, err := parseYAML(t, "nats:\n  urls: nats://10.0.0.5:4222\n  creds_file: smtpq.creds\n  replicas: 3\n  embedded: {listen: 127.0.0.1:4222, store_dir: nats}\n")
	if err != nil {
		t.Fatal(err)
	}
	if n := cfg.NATS; n == nil || len(n.URLs) != 1 || n.Replicas != 3 || n.CredsFile != "/etc/smtpq/smtpq.creds" || n.Embedded.StoreDir != "/etc/smtpq/nats" {
		t.Errorf("nats = %+v", cfg.NATS)
	}
	wantRefused(t, []refusedConfig{
		{"nats: {}\n", []string{"nats: give urls, or embedded"}},
		{"nats:\n  url: nats://x:4222\n", []string{`unknown key "url" (did you mean urls?)`, "line 5"}},
		{"nats: {urls: n, creds_file: a, nkey_file: b}\n", []string{"one of creds_file, nkey_file"}},
		{"nats: {urls: n, user: u}\n", []string{"user and password_file go together"}},
		{"nats: {urls: n, replicas: 7}\n", []string{"nats.replicas 7"}},
		{"nats: {urls: n, stream: 'my stream'}\n", []string{"nats.stream", "letters, digits"}},
		{"nats: {embedded: {listen: '127.0.0.1:4222'}}\n", []string{"nats.embedded.store_dir is required"}},
		{"nats: {embedded: {listen: 'nowhere', store_dir: x}}\n", []string{"nats.embedded.listen"}},
	})
}
