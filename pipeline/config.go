package pipeline

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/smtpq/smtpq/queuefile"
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
	Host         string `yaml:"host"`
	Port         int    `yaml:"port"`          // default 25 (465 with tls: implicit)
	TLS          string `yaml:"tls"`           // implicit, starttls, none; default by port
	Username     string `yaml:"username"`      // optional
	PasswordFile string `yaml:"password_file"` // optional: file holding the password (first line)
	HELO         string `yaml:"helo"`          // optional EHLO name
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
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // json or console
	Dir    string `yaml:"dir"`    // optional: also write smtpq.log there
}

// MetricsConfig controls the metrics endpoint.
type MetricsConfig struct {
	Listen string `yaml:"listen"` // e.g. "127.0.0.1:9465"; empty: off
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

	MaxThreads      int                   `yaml:"max_threads"`
	DeleteAfterSend bool                  `yaml:"delete_after_send"`
	Hosts           map[string]HostLimits `yaml:"hosts"` // "default" and per-host overrides
	Retry           RetryConfig           `yaml:"retry"`
	Timeouts        TimeoutsConfig        `yaml:"timeouts"`
	TLS             TLSConfig             `yaml:"tls"`
	Log             LogConfig             `yaml:"log"`
	Metrics         MetricsConfig         `yaml:"metrics"`
	ScanInterval    Duration              `yaml:"scan_interval"` // periodic rescan of the queue

	// Path is the file the configuration was read from (not a YAML key).
	Path string `yaml:"-"`
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
		Log:          LogConfig{Level: "info", Format: "console"},
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
// to resolve relative paths.
func ParseConfig(text []byte, path string) (*Config, error) {
	cfg := Defaults()
	userHosts := map[string]HostLimits{}
	dec := yaml.NewDecoder(bytes.NewReader(text))
	dec.KnownFields(true)
	cfg.Hosts = userHosts
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("config %s: %s", path, strings.TrimPrefix(err.Error(), "yaml: "))
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
	return &cfg, nil
}

func mergeHosts(cfg *Config, text []byte) error {
	var doc struct {
		Hosts map[string]yaml.Node `yaml:"hosts"`
	}
	if err := yaml.Unmarshal(text, &doc); err != nil {
		return err
	}
	base := Defaults().Hosts["default"]
	if n, ok := doc.Hosts["default"]; ok {
		if err := n.Decode(&base); err != nil {
			return err
		}
	}
	cfg.Hosts = map[string]HostLimits{"default": base}
	for host, n := range doc.Hosts {
		if host == "default" {
			continue
		}
		l := base
		if err := n.Decode(&l); err != nil {
			return err
		}
		cfg.Hosts[strings.ToLower(host)] = l
	}
	return nil
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
	for i := range c.IdentityFile {
		abs(&c.IdentityFile[i])
	}
	for name, r := range c.Relays {
		abs(&r.PasswordFile)
		c.Relays[name] = r
	}
}

// Validate checks the configuration; each error names the setting.
func (c *Config) Validate() error {
	var errs []error
	need := func(key, v string) {
		if v == "" {
			errs = append(errs, fmt.Errorf("%s is required", key))
		}
	}
	need("queue_dir", c.QueueDir)
	need("sent_dir", c.SentDir)
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
		if _, err := queuefile.ParseTLSMode(r.TLS); err != nil {
			errs = append(errs, fmt.Errorf("relays.%s.tls: %w", name, err))
		}
		if r.PasswordFile != "" && r.Username == "" {
			errs = append(errs, fmt.Errorf("relays.%s: password_file without username", name))
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
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level %q: want debug, info, warn or error", c.Log.Level))
	}
	switch c.Log.Format {
	case "json", "console":
	default:
		errs = append(errs, fmt.Errorf("log.format %q: want json or console", c.Log.Format))
	}
	return errors.Join(errs...)
}

// Limits returns the limits for an SMTP host: its own entry, else the
// default.
func (c *Config) Limits(host string) HostLimits {
	if l, ok := c.Hosts[strings.ToLower(host)]; ok {
		return l
	}
	return c.Hosts["default"]
}

// Masked returns the configuration as YAML for display. It holds no secrets:
// passwords live in password files, which are named but not read.
func (c *Config) Masked() ([]byte, error) {
	return yaml.Marshal(c)
}
