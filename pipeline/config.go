package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/smtpq/smtpq/pipeline/console"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// DefaultConfigPath is used when neither --config nor SMTPQ_CONFIG is given.
const DefaultConfigPath = "/etc/smtpq/smtpq.yaml"

// ConfigPath returns the configuration file to use: flag if set, else the
// environment variable SMTPQ_CONFIG, else DefaultConfigPath.
func ConfigPath(flag string) string {
	if flag != "" {
		return flag
	}
	if env := os.Getenv("SMTPQ_CONFIG"); env != "" {
		return env
	}
	return DefaultConfigPath
}

// Duration is a time.Duration written in YAML as a Go duration string
// ("90s", "5m", "120h").
type Duration time.Duration

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a duration such as \"90s\" or \"5m\"", n.Line)
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q is not a duration (want e.g. \"90s\", \"5m\", \"2h\")", n.Line, n.Value)
	}
	if v < 0 {
		return fmt.Errorf("line %d: negative duration %q", n.Line, n.Value)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return time.Duration(d).String(), nil }

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// StringList is a YAML value that may be one string or a list of strings.
type StringList []string

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *StringList) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*s = StringList{n.Value}
		return nil
	case yaml.SequenceNode:
		var l []string
		if err := n.Decode(&l); err != nil {
			return err
		}
		*s = l
		return nil
	}
	return fmt.Errorf("line %d: want a path or a list of paths", n.Line)
}

// Relay is a named relay profile: an SMTP server and its login, kept in the
// service configuration so no password needs to sit in a queue file.
type Relay struct {
	Host         string            `yaml:"host"`
	Port         int               `yaml:"port"`          // default 25 (465 with tls: implicit)
	TLS          queuefile.TLSMode `yaml:"tls"`           // implicit, starttls, none, in any case; default by port
	Username     string            `yaml:"username"`      // optional
	PasswordFile string            `yaml:"password_file"` // optional: file holding the password (first line)
	HELO         string            `yaml:"helo"`          // optional EHLO name
}

// HostLimits are the limits smtpq keeps towards one SMTP server.
type HostLimits struct {
	MaxConnections           int      `yaml:"max_connections"`             // SMTP sessions at once to this host
	Rate                     float64  `yaml:"rate"`                        // messages per second; 0: unlimited
	Burst                    int      `yaml:"burst"`                       // messages allowed at once above the rate
	MaxMessagesPerConnection int      `yaml:"max_messages_per_connection"` // then the session is closed and a new one opened
	IdleTimeout              Duration `yaml:"idle_timeout"`                // an unused open session is closed after this
}

// RetryConfig is the retry policy for transient failures.
type RetryConfig struct {
	MinBackoff  Duration `yaml:"min_backoff"`  // delay before the first retry
	MaxBackoff  Duration `yaml:"max_backoff"`  // the doubling stops here
	MaxAttempts int      `yaml:"max_attempts"` // then Undeliverable
	MaxAge      Duration `yaml:"max_age"`      // then Undeliverable, counted from enqueueing
}

// TimeoutsConfig bounds each network step.
type TimeoutsConfig struct {
	Connect Duration `yaml:"connect"` // TCP connect and TLS handshake
	Command Duration `yaml:"command"` // each SMTP command's reply
	Data    Duration `yaml:"data"`    // sending the message and the reply to the final dot
}

// TLSConfig holds TLS settings for connections to SMTP servers.
type TLSConfig struct {
	CAFile string `yaml:"ca_file"` // extra CA certificates (PEM) for private relays, in addition to the system pool
}

// LogConfig controls the service's log.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info, warn, error (see ParseLogLevel)
	Format string `yaml:"format"` // json or console (see ParseLogFormat)
	Dir    string `yaml:"dir"`    // optional: also write smtpq.log there
}

// The log levels and formats, as LoadConfig, New and Reload leave them.
const (
	LogDebug   = "debug"
	LogInfo    = "info"
	LogWarn    = "warn"
	LogError   = "error"
	LogConsole = "console"
	LogJSON    = "json"
)

// ParseLogLevel returns the log level s names, in any case and with white
// space around, as one of the LogDebug... constants; an unknown level is an
// error naming the value and the levels allowed.
func ParseLogLevel(s string) (string, error) {
	return parseEnum(s, "log level", LogDebug, LogInfo, LogWarn, LogError)
}

// ParseLogFormat returns the log format s names (LogConsole or LogJSON), in
// any case and with white space around.
func ParseLogFormat(s string) (string, error) {
	return parseEnum(s, "log format", LogConsole, LogJSON)
}

// parseEnum returns the one of allowed that s is, ignoring case and white
// space around it, or an error naming what, the value and allowed.
func parseEnum(s, what string, allowed ...string) (string, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	if slices.Contains(allowed, v) {
		return v, nil
	}
	return "", fmt.Errorf("unknown %s %q (allowed: %s)", what, s, strings.Join(allowed, ", "))
}

// SendmailConfig is how the sendmail command treats bare local names
// ("root", a login name), as Unix programs such as cron write them.
type SendmailConfig struct {
	// Domain qualifies bare names (root -> root@Domain) and makes the
	// sender of a message that names none (login@Domain); default: the
	// machine's host name.
	Domain string `yaml:"domain"`
	// Aliases maps bare names to addresses (root: ops@example.org), as
	// /etc/aliases does for a local MTA.
	Aliases map[string]StringList `yaml:"aliases"`
}

// MetricsConfig controls the metrics endpoint.
type MetricsConfig struct {
	Listen string `yaml:"listen"` // e.g. "127.0.0.1:9465"; empty: off
}

// ConsoleConfig controls the web console (package pipeline/console). It is
// off unless Listen is set; then at least one user is required, and an
// address that is not loopback needs TLS or Insecure.
type ConsoleConfig struct {
	Listen   string                 `yaml:"listen"`   // e.g. "127.0.0.1:8025"; empty: off
	Users    map[string]ConsoleUser `yaml:"users"`    // who may log in
	TLS      ConsoleTLS             `yaml:"tls"`      // serve HTTPS with this certificate
	Insecure bool                   `yaml:"insecure"` // allow plain HTTP on an address that is not loopback
}

// ConsoleUser is one user of the web console.
type ConsoleUser struct {
	// PasswordHash is the output of "smtpq console passwd" (bcrypt).
	PasswordHash string `yaml:"password_hash"`
}

// MarshalYAML shows that a hash is set without showing it ("smtpq config
// check" prints the configuration).
func (u ConsoleUser) MarshalYAML() (any, error) {
	h := "[not set]"
	if u.PasswordHash != "" {
		h = "[set]"
	}
	return map[string]string{"password_hash": h}, nil
}

// ConsoleTLS is the web console's certificate, in PEM files.
type ConsoleTLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// NotifyConfig is the notify section: delivery status notices to senders
// and webhooks for applications (package pipeline/notify).
type NotifyConfig struct {
	DSN      NotifyDSN       `yaml:"dsn"`
	Webhooks []NotifyWebhook `yaml:"webhooks"`
}

// NotifyDSN says when the envelope sender gets a delivery status notice.
type NotifyDSN struct {
	Failure bool     `yaml:"failure"` // when a message fails for good
	Delay   Duration `yaml:"delay"`   // once, when a message is still undelivered this long after it was queued; 0: never
}

// NotifyWebhook is one receiver of JSON events, signed with HMAC-SHA-256.
type NotifyWebhook struct {
	URL        string     `yaml:"url"`         // http or https
	SecretFile string     `yaml:"secret_file"` // the HMAC key: the file's first line
	Events     StringList `yaml:"events"`      // sent, deferred, failed, held (any case); empty: all
}

// Config is the service configuration, read from YAML by LoadConfig. Relative
// paths are relative to the configuration file's folder.
type Config struct {
	QueueDir         string           `yaml:"queue_dir"`
	SentDir          string           `yaml:"sent_dir"`
	UndeliverableDir string           `yaml:"undeliverable_dir"`
	IdentityFile     StringList       `yaml:"identity_file"` // current key first, older ones after
	RecipientFile    string           `yaml:"recipient_file"`
	Relays           map[string]Relay `yaml:"relays"`
	DefaultRelay     string           `yaml:"default_relay"`
	PickupCompat     bool             `yaml:"pickup_compat"`
	// Settle is how long a file written in place (not through enqueue)
	// must stay unchanged before it is sent: a pickup file, or one that
	// looks cut short. Default 5s.
	Settle Duration `yaml:"settle"`
	HELO   string   `yaml:"helo"` // default EHLO name; default: the machine's host name

	// AllowedHosts are the SMTP servers the service may connect to, as
	// host:port patterns (see ParseHostPattern); empty: any. A message for
	// another server is filed in Undeliverable as invalid; a relay profile
	// outside them is refused at load.
	AllowedHosts []string `yaml:"allowed_hosts"`

	MaxThreads      int                   `yaml:"max_threads"`
	DeleteAfterSend bool                  `yaml:"delete_after_send"`
	Hosts           map[string]HostLimits `yaml:"hosts"` // "default" and per-host overrides
	Retry           RetryConfig           `yaml:"retry"`
	Timeouts        TimeoutsConfig        `yaml:"timeouts"`
	TLS             TLSConfig             `yaml:"tls"`
	Log             LogConfig             `yaml:"log"`
	Metrics         MetricsConfig         `yaml:"metrics"`
	Console         ConsoleConfig         `yaml:"console"`
	ScanInterval    Duration              `yaml:"scan_interval"` // periodic rescan of the queue

	// Sendmail is how "smtpq sendmail" treats bare local names.
	Sendmail SendmailConfig `yaml:"sendmail"`

	// NATS, if set, runs the queue on a NATS JetStream stream shared by
	// several nodes instead of in queue_dir alone (see cluster.go).
	NATS *NATSConfig `yaml:"nats"`

	// Notify tells senders (delivery status notices) and applications
	// (webhooks) what became of their mail; off by default.
	Notify NotifyConfig `yaml:"notify"`

	// Path is the file the configuration was read from (not a YAML key).
	Path string `yaml:"-"`

	allowed []HostPattern // AllowedHosts parsed, by normalize
}

// Defaults returns a configuration with every default filled in and no paths.
func Defaults() Config {
	return Config{
		MaxThreads: 16,
		Hosts: map[string]HostLimits{"default": {
			MaxConnections:           4,
			Rate:                     0,
			Burst:                    0,
			MaxMessagesPerConnection: 100,
			IdleTimeout:              Duration(5 * time.Second),
		}},
		Retry: RetryConfig{
			MinBackoff:  Duration(5 * time.Minute),
			MaxBackoff:  Duration(time.Hour),
			MaxAttempts: 30,
			MaxAge:      Duration(5 * 24 * time.Hour),
		},
		Timeouts: TimeoutsConfig{
			Connect: Duration(30 * time.Second),
			Command: Duration(5 * time.Minute),
			Data:    Duration(10 * time.Minute),
		},
		Log:          LogConfig{Level: LogInfo, Format: LogConsole},
		ScanInterval: Duration(10 * time.Second),
		Settle:       Duration(5 * time.Second),
	}
}

// LoadConfig reads and validates a configuration file. Unknown keys and wrong
// types are errors that name the key and line.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := ParseConfig(b, path)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// ParseConfig parses YAML configuration text; path is used for messages and
// to resolve relative paths. Enumerated values (TLS modes, log level and
// format) may be written in any case: the Config returned holds their
// constants.
func ParseConfig(text []byte, path string) (*Config, error) {
	cfg := Defaults()
	userHosts := map[string]HostLimits{}
	dec := yaml.NewDecoder(bytes.NewReader(text))
	dec.KnownFields(true)
	cfg.Hosts = userHosts
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config %s: %s", path, yamlMessage(err))
	}
	// A second document ("---") would be ignored: refuse it rather than
	// leave the operator wondering why its settings do nothing.
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		line := 0
		if err == nil {
			line = next.Line
		}
		return nil, fmt.Errorf("config %s: line %d: a second YAML document: the configuration is one YAML document", path, line)
	}
	// Host limits: the built-in default, overridden key by key by hosts.default,
	// then each host's map overrides hosts.default key by key. Merging needs to
	// know which keys were given, so decode the hosts section again as nodes.
	if err := mergeHosts(&cfg, text); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	cfg.Path = path
	abs, err := filepath.Abs(path)
	if err == nil {
		cfg.Path = abs
	}
	cfg.resolvePaths(filepath.Dir(cfg.Path))
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	cfg.normalize()
	return &cfg, nil
}

// unknownField is how the YAML decoder reports an unknown key.
var unknownField = regexp.MustCompile(`field (\S+) not found in type pipeline\.(\w+)`)

// sections are the structs a configuration's keys live in, by Go name.
var sections = func() map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for _, v := range []any{Config{}, Relay{}, HostLimits{}, RetryConfig{}, TimeoutsConfig{}, TLSConfig{}, LogConfig{}, MetricsConfig{}, ConsoleConfig{}, ConsoleUser{}, ConsoleTLS{}, SendmailConfig{}, NotifyConfig{}, NotifyDSN{}, NotifyWebhook{}, NATSConfig{}, NATSTLS{}, NATSEmbedded{}} {
		t := reflect.TypeOf(v)
		m[t.Name()] = t
	}
	return m
}()

// yamlMessage rewords a YAML decoding error for an operator: an unknown key
// is called that, with the nearest known key when one is close ("line 4:
// unknown key \"max_thread\" (did you mean max_threads?)"), not a Go type.
func yamlMessage(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	return unknownField.ReplaceAllStringFunc(msg, func(m string) string {
		sub := unknownField.FindStringSubmatch(m)
		key, out := sub[1], fmt.Sprintf("unknown key %q", sub[1])
		t, ok := sections[sub[2]]
		if !ok {
			return out
		}
		best, bestDist := "", 3 // suggest only keys within two edits
		for i := range t.NumField() {
			tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if tag == "" || tag == "-" {
				continue
			}
			if d := editDistance(key, tag); d < bestDist {
				best, bestDist = tag, d
			}
		}
		if best != "" {
			out += " (did you mean " + best + "?)"
		}
		return out
	})
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func mergeHosts(cfg *Config, text []byte) error {
	var doc struct {
		Hosts yaml.Node `yaml:"hosts"`
	}
	if err := yaml.Unmarshal(text, &doc); err != nil {
		return err
	}
	// Keys are taken as the Sender names hosts (HostKey): two keys for one
	// host are an error, not one silently winning.
	type entry struct {
		key, raw string
		node     *yaml.Node
	}
	var entries []entry
	byKey := map[string]entry{}
	if doc.Hosts.Kind == yaml.MappingNode {
		for i := 0; i+1 < len(doc.Hosts.Content); i += 2 {
			k, v := doc.Hosts.Content[i], doc.Hosts.Content[i+1]
			e := entry{key: hostsKey(k.Value), raw: k.Value, node: v}
			if prev, ok := byKey[e.key]; ok {
				return fmt.Errorf("line %d: hosts.%s and hosts.%s (line %d) are the same host: merge them", k.Line, e.raw, prev.raw, prev.node.Line)
			}
			byKey[e.key] = e
			entries = append(entries, e)
		}
	}
	base := Defaults().Hosts["default"]
	if e, ok := byKey["default"]; ok {
		if err := e.node.Decode(&base); err != nil {
			return err
		}
	}
	cfg.Hosts = map[string]HostLimits{"default": base}
	for _, e := range entries {
		if e.key == "default" {
			continue
		}
		l := base
		if err := e.node.Decode(&l); err != nil {
			return err
		}
		cfg.Hosts[e.key] = l
	}
	return nil
}

// hostsKey is the form of a hosts key that Limits looks up: the host as the
// Sender names it (stages.HostKey: lower case, no brackets, no final dot).
func hostsKey(k string) string {
	if strings.EqualFold(strings.TrimSpace(k), "default") {
		return "default"
	}
	return stages.HostKey(k)
}

func (c *Config) resolvePaths(dir string) {
	abs := func(p *string) {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	abs(&c.QueueDir)
	abs(&c.SentDir)
	abs(&c.UndeliverableDir)
	abs(&c.RecipientFile)
	abs(&c.TLS.CAFile)
	abs(&c.Log.Dir)
	abs(&c.Console.TLS.CertFile)
	abs(&c.Console.TLS.KeyFile)
	for i := range c.IdentityFile {
		abs(&c.IdentityFile[i])
	}
	for name, r := range c.Relays {
		abs(&r.PasswordFile)
		c.Relays[name] = r
	}
	for i := range c.Notify.Webhooks {
		abs(&c.Notify.Webhooks[i].SecretFile)
	}
	if n := c.NATS; n != nil {
		for _, p := range []*string{&n.CredsFile, &n.NKeyFile, &n.PasswordFile, &n.TLS.CAFile, &n.TLS.CertFile, &n.TLS.KeyFile} {
			abs(p)
		}
		if n.Embedded != nil {
			abs(&n.Embedded.StoreDir)
		}
	}
}

// Validate checks the configuration; each error names the setting.
// Enumerated values are checked as ParseTLSMode, ParseLogLevel and
// ParseLogFormat read them (any case); Validate changes nothing: New and
// Reload work on a normalised copy, LoadConfig returns one.
func (c *Config) Validate() error {
	var errs []error
	need := func(key, v string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", key))
		}
	}
	need("queue_dir", c.QueueDir)
	need("sent_dir", c.SentDir)
	if c.NATS != nil {
		errs = append(errs, c.NATS.validate()...)
	}
	need("undeliverable_dir", c.UndeliverableDir)
	if c.QueueDir != "" && (c.QueueDir == c.SentDir || c.QueueDir == c.UndeliverableDir) {
		errs = append(errs, errors.New("queue_dir must differ from sent_dir and undeliverable_dir"))
	}
	for name, r := range c.Relays {
		if r.Host == "" {
			errs = append(errs, fmt.Errorf("relays.%s.host is required", name))
		}
		if r.Port < 0 || r.Port > 65535 {
			errs = append(errs, fmt.Errorf("relays.%s.port %d out of range 1-65535", name, r.Port))
		}
		if _, err := queuefile.ParseTLSMode(string(r.TLS)); err != nil {
			errs = append(errs, fmt.Errorf("relays.%s.tls: %w", name, err))
		}
		if r.PasswordFile != "" && r.Username == "" {
			errs = append(errs, fmt.Errorf("relays.%s: password_file without username", name))
		}
	}
	allowed, err := parseAllowedHosts(c.AllowedHosts)
	if err != nil {
		errs = append(errs, err)
	} else if len(allowed) > 0 {
		for name, r := range c.Relays {
			host, port := relayAddr(r)
			if !allows(allowed, host, port) {
				errs = append(errs, fmt.Errorf("relays.%s: %s is not in allowed_hosts", name, net.JoinHostPort(host, strconv.Itoa(port))))
			}
		}
	}
	if c.DefaultRelay != "" {
		if _, ok := c.Relays[c.DefaultRelay]; !ok {
			errs = append(errs, fmt.Errorf("default_relay %q is not a profile under relays", c.DefaultRelay))
		}
	}
	if c.PickupCompat && c.DefaultRelay == "" {
		errs = append(errs, errors.New("pickup_compat needs default_relay"))
	}
	if c.MaxThreads < 1 {
		errs = append(errs, fmt.Errorf("max_threads %d must be at least 1", c.MaxThreads))
	}
	seen := map[string]string{}
	for host := range c.Hosts {
		k := hostsKey(host)
		if prev, ok := seen[k]; ok {
			a, b := min(prev, host), max(prev, host)
			errs = append(errs, fmt.Errorf("hosts.%s and hosts.%s are the same host: merge them", a, b))
		}
		seen[k] = host
	}
	for host, l := range c.Hosts {
		switch {
		case l.MaxConnections < 1:
			errs = append(errs, fmt.Errorf("hosts.%s.max_connections %d must be at least 1", host, l.MaxConnections))
		case l.Rate < 0:
			errs = append(errs, fmt.Errorf("hosts.%s.rate must not be negative", host))
		case l.Burst < 0:
			errs = append(errs, fmt.Errorf("hosts.%s.burst must not be negative", host))
		case l.MaxMessagesPerConnection < 1:
			errs = append(errs, fmt.Errorf("hosts.%s.max_messages_per_connection must be at least 1", host))
		}
	}
	if c.Retry.MaxAttempts < 1 {
		errs = append(errs, errors.New("retry.max_attempts must be at least 1"))
	}
	if c.Retry.MaxBackoff < c.Retry.MinBackoff {
		errs = append(errs, errors.New("retry.max_backoff is shorter than retry.min_backoff"))
	}
	errs = append(errs, c.validateNotify()...)
	if _, err := ParseLogLevel(c.Log.Level); err != nil {
		errs = append(errs, fmt.Errorf("log.level: %w", err))
	}
	if _, err := ParseLogFormat(c.Log.Format); err != nil {
		errs = append(errs, fmt.Errorf("log.format: %w", err))
	}
	errs = append(errs, c.Console.validate()...)
	return errors.Join(errs...)
}

// validate checks the console section: users with bcrypt hashes, a
// certificate with its key, and no plain HTTP off loopback unless insecure.
func (c *ConsoleConfig) validate() []error {
	var errs []error
	if c.Listen == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		errs = append(errs, fmt.Errorf("console.listen %q: want host:port, e.g. 127.0.0.1:8025", c.Listen))
	}
	if len(c.Users) == 0 {
		errs = append(errs, errors.New("console.users: at least one user is needed (password_hash from smtpq console passwd)"))
	}
	for _, name := range slices.Sorted(maps.Keys(c.Users)) {
		if name == "" || strings.ContainsAny(name, " \t\r\n:") {
			errs = append(errs, fmt.Errorf("console.users: user name %q: no spaces or colons", name))
		}
		if err := console.CheckHash(c.Users[name].PasswordHash); err != nil {
			errs = append(errs, fmt.Errorf("console.users.%s.password_hash: %w", name, err))
		}
	}
	tlsOn := c.TLS.CertFile != "" || c.TLS.KeyFile != ""
	if tlsOn && (c.TLS.CertFile == "" || c.TLS.KeyFile == "") {
		errs = append(errs, errors.New("console.tls: give both cert_file and key_file"))
	}
	if err == nil && !tlsOn && !c.Insecure && !isLoopbackHost(host) {
		errs = append(errs, fmt.Errorf("console.listen %s is not a loopback address: set console.tls (cert_file, key_file), or console.insecure: true to serve plain HTTP there", c.Listen))
	}
	return errs
}

// isLoopbackHost reports whether host (from host:port) names only loopback
// addresses: localhost or a loopback IP. An empty host is every interface.
func isLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// normalize rewrites every enumerated value into its constant and the hosts
// keys into the form Limits looks up, so that the code behind compares
// constants only. It must follow a Validate that passed (it skips what does
// not parse), on a Config whose maps are its own (see clone).
func (c *Config) normalize() {
	for name, r := range c.Relays {
		if m, err := queuefile.ParseTLSMode(string(r.TLS)); err == nil {
			r.TLS = m
			c.Relays[name] = r
		}
	}
	if v, err := ParseLogLevel(c.Log.Level); err == nil {
		c.Log.Level = v
	}
	if v, err := ParseLogFormat(c.Log.Format); err == nil {
		c.Log.Format = v
	}
	c.Notify.normalize()
	hosts := make(map[string]HostLimits, len(c.Hosts))
	for host, l := range c.Hosts {
		hosts[hostsKey(host)] = l
	}
	c.Hosts = hosts
	c.allowed, _ = parseAllowedHosts(c.AllowedHosts)
	c.AllowedHosts = nil
	for _, p := range c.allowed {
		c.AllowedHosts = append(c.AllowedHosts, p.String())
	}
}

// clone returns a copy of c that shares no map or slice with it.
func (c *Config) clone() *Config {
	n := *c
	n.IdentityFile = slices.Clone(c.IdentityFile)
	n.AllowedHosts = slices.Clone(c.AllowedHosts)
	n.allowed = slices.Clone(c.allowed)
	n.Relays = maps.Clone(c.Relays)
	n.Hosts = maps.Clone(c.Hosts)
	n.Notify = c.Notify.clone()
	n.Console.Users = maps.Clone(c.Console.Users)
	return &n
}

// normalized validates c and returns a normalised copy of it: what New and
// Reload keep, so that a caller's Config in any case works, and later
// changes to it do not reach the running pipeline.
func (c *Config) normalized() (*Config, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	n := c.clone()
	n.normalize()
	return n, nil
}

// Allows reports whether allowed_hosts lets the service connect to host
// (as the Sender names it) on port. It holds for every server when
// allowed_hosts is empty. The Config must come from LoadConfig, New or
// Reload (which parse the patterns); otherwise, AllowedHosts is parsed here.
func (c *Config) Allows(host string, port int) bool {
	pats := c.allowed
	if pats == nil && len(c.AllowedHosts) > 0 {
		var err error
		if pats, err = parseAllowedHosts(c.AllowedHosts); err != nil {
			return false
		}
	}
	return len(pats) == 0 || allows(pats, host, port)
}

func allows(pats []HostPattern, host string, port int) bool {
	for _, p := range pats {
		if p.Match(host, port) {
			return true
		}
	}
	return false
}

// relayAddr returns the host and port a relay profile connects to, as the
// Sender names them.
func relayAddr(r Relay) (string, int) {
	port := r.Port
	if port == 0 {
		port = queuefile.DefaultPort
		if m, _ := queuefile.ParseTLSMode(string(r.TLS)); m == queuefile.TLSImplicit {
			port = 465
		}
	}
	return stages.HostKey(r.Host), port
}

func parseAllowedHosts(list []string) ([]HostPattern, error) {
	var pats []HostPattern
	var errs []error
	for i, s := range list {
		p, err := ParseHostPattern(s)
		if err != nil {
			errs = append(errs, fmt.Errorf("allowed_hosts[%d]: %w", i, err))
			continue
		}
		pats = append(pats, p)
	}
	return pats, errors.Join(errs...)
}

// HostPattern is one entry of allowed_hosts: a host and a port, each exact
// or a wildcard. See ParseHostPattern.
type HostPattern struct {
	host string     // lower case, no final dot; "" for any host
	ip   netip.Addr // set for an IP address
	any  bool       // "*": any host
	sub  bool       // "*.example.org": any name under example.org (host is "example.org")
	port int        // 0: any port
}

// ParseHostPattern parses an allowed_hosts entry, host:port:
//
//	smtp.example.com:587   that name (any case, final dot ignored), port 587
//	*.example.org:*        any name under example.org (not example.org itself), any port
//	10.0.0.5:25            that IPv4 address
//	[::1]:25               that IPv6 address, in brackets
//	*:465                  any host, port 465
//
// The port is required: a number or "*". A name matches the host as the
// message names it, not the addresses it resolves to; an IP address matches
// that address however it is written.
func ParseHostPattern(s string) (HostPattern, error) {
	const want = "want host:port, such as smtp.example.com:587, *.example.org:*, 10.0.0.5:25 or [::1]:25"
	v := strings.TrimSpace(s)
	h, ps, err := net.SplitHostPort(v)
	if err != nil {
		return HostPattern{}, fmt.Errorf("%q: %s", s, want)
	}
	var p HostPattern
	if ps != "*" {
		n, err := strconv.Atoi(ps)
		if err != nil || n < 1 || n > 65535 {
			return HostPattern{}, fmt.Errorf("%q: port %q is not a number 1-65535 or *", s, ps)
		}
		p.port = n
	}
	bracketed := strings.HasPrefix(v, "[")
	if ip, err := netip.ParseAddr(h); err == nil {
		if ip.Zone() != "" {
			return HostPattern{}, fmt.Errorf("%q: an address with a zone is not supported", s)
		}
		if bracketed != ip.Is6() {
			return HostPattern{}, fmt.Errorf("%q: write IPv6 addresses, and only them, in brackets: [::1]:25", s)
		}
		p.ip = ip.Unmap()
		return p, nil
	}
	if bracketed {
		return HostPattern{}, fmt.Errorf("%q: %q in brackets is not an IPv6 address", s, h)
	}
	name := strings.TrimSuffix(strings.ToLower(h), ".")
	switch {
	case name == "*":
		p.any = true
		return p, nil
	case strings.HasPrefix(name, "*."):
		p.sub, name = true, name[2:]
	}
	if !isHostName(name) {
		return HostPattern{}, fmt.Errorf("%q: %q is not a host name (a * may only stand alone or begin the name, as in *.example.org)", s, h)
	}
	p.host = name
	return p, nil
}

// isHostName reports whether s is a DNS name: dot-separated labels of
// letters, digits, hyphens and underscores.
func isHostName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, label := range strings.Split(s, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// Match reports whether the pattern matches host (as the Sender names it:
// stages.HostKey) and port.
func (p HostPattern) Match(host string, port int) bool {
	if p.port != 0 && p.port != port {
		return false
	}
	host = stages.HostKey(host)
	ip, err := netip.ParseAddr(host)
	isIP := err == nil
	switch {
	case p.any:
		return true
	case p.ip.IsValid():
		return isIP && ip.Unmap() == p.ip
	case isIP:
		return false
	case p.sub:
		return strings.HasSuffix(host, "."+p.host)
	default:
		return host == p.host
	}
}

// String returns the pattern in its canonical form.
func (p HostPattern) String() string {
	var h string
	switch {
	case p.any:
		h = "*"
	case p.ip.Is6():
		h = "[" + p.ip.String() + "]"
	case p.ip.IsValid():
		h = p.ip.String()
	case p.sub:
		h = "*." + p.host
	default:
		h = p.host
	}
	if p.port == 0 {
		return h + ":*"
	}
	return h + ":" + strconv.Itoa(p.port)
}

// Limits returns the limits for an SMTP host: its own entry, else the
// default.
func (c *Config) Limits(host string) HostLimits {
	if l, ok := c.Hosts[stages.HostKey(host)]; ok {
		return l
	}
	return c.Hosts["default"]
}

// Masked returns the configuration as YAML for display. It holds no secrets:
// passwords live in password files, which are named but not read.
func (c *Config) Masked() ([]byte, error) {
	return yaml.Marshal(c)
}
