package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// passwordEnv is the environment variable that may hold the SMTP password for
// --host with --user. There is deliberately no flag that takes a password: a
// command line is visible to every user of the machine.
const passwordEnv = "SMTPQ_PASSWORD"

type enqueueFlags struct {
	relay, host, tls, user, passwordFile, tokenFile, helo, from string
	port                                                        int
	to                                                          []string
	notBefore, expires                                          string
}

func newEnqueueCmd() *cobra.Command {
	var f enqueueFlags
	cmd := &cobra.Command{
		Use:   "enqueue [flags] [MESSAGE_FILE | -]",
		Short: "Seal a message with its send-time parameters and put it into the queue",
		Long: `Seal an RFC 5322 message (from MESSAGE_FILE, or standard input for "-" or no
argument) with the SMTP server and envelope, and put it into the queue. The
queued file's full path is printed on standard output; with a nats section,
the message's id on the stream (what "queue status" takes).

The SMTP server is a relay profile of the configuration (--relay NAME, else
default_relay), or given directly with --host and its --port, --tls, --user and
--password-file. The password is read from the first line of --password-file,
else from $SMTPQ_PASSWORD (only with --user); no flag takes a password.

Without --to, the recipients are the To, Cc and Bcc addresses of the message and
its Bcc fields are removed. Without --from, the sender is the Sender, else the
first From address. --not-before and --expires take an RFC 3339 time or a
duration from now (90m, 36h, 2d).`,
		Args: usageArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runEnqueue(cmd, &f, args)
		},
	}
	fl := cmd.Flags()
	fl.SortFlags = false
	fl.StringVar(&f.relay, "relay", "", "send through this relay profile of the configuration (default: default_relay)")
	fl.StringVar(&f.host, "host", "", "send through this SMTP server instead of a relay profile")
	fl.IntVar(&f.port, "port", 0, "SMTP port with --host (default: 465 with --tls implicit, else 25)")
	fl.StringVar(&f.tls, "tls", "", "TLS mode with --host: implicit, starttls or none (default: implicit on port 465, else starttls)")
	fl.StringVar(&f.user, "user", "", "SMTP user name with --host")
	fl.StringVar(&f.passwordFile, "password-file", "", "file whose first line is the SMTP password (with --user; else $"+passwordEnv+")")
	fl.StringVar(&f.tokenFile, "oauth2-token-file", "", "file whose first line is an OAuth2 access token for XOAUTH2 (with --user), instead of a password")
	fl.StringVar(&f.helo, "helo", "", "name to send in EHLO (default: the relay's or the service's)")
	fl.StringVar(&f.from, "from", "", "envelope sender (default: the Sender, else the first From address of the message)")
	fl.StringArrayVar(&f.to, "to", nil, "envelope recipient; repeat for more (default: To, Cc and Bcc of the message, Bcc fields removed)")
	fl.StringVar(&f.notBefore, "not-before", "", "do not send before this time (RFC 3339, or a duration from now: 90m, 36h, 2d)")
	fl.StringVar(&f.expires, "expires", "", "give up after this time (RFC 3339, or a duration from now)")
	return cmd
}

func runEnqueue(cmd *cobra.Command, f *enqueueFlags, args []string) error {
	changed := cmd.Flags().Changed
	now := time.Now()

	// Command-line checks that need nothing else: usage errors.
	if f.relay != "" && f.host != "" {
		return cli.Usagef("--relay and --host: choose one")
	}
	if changed("relay") && f.relay == "" {
		return cli.Usagef("--relay: empty profile name")
	}
	if changed("host") && f.host == "" {
		return cli.Usagef("--host: empty host name")
	}
	if f.host == "" {
		for _, name := range []string{"port", "tls", "user", "password-file", "oauth2-token-file"} {
			if changed(name) {
				return cli.Usagef("--%s needs --host (a relay profile brings its own)", name)
			}
		}
	}
	if changed("port") && (f.port < 1 || f.port > 65535) {
		return cli.Usagef("--port %d out of range 1-65535", f.port)
	}
	tlsMode, err := queuefile.ParseTLSMode(f.tls)
	if err != nil {
		return cli.Usagef("--tls: %v", err)
	}
	if changed("tls") && tlsMode == queuefile.TLSDefault {
		return cli.Usagef("--tls: empty mode (allowed: implicit, starttls, none)")
	}
	if f.passwordFile != "" && f.tokenFile != "" {
		return cli.Usagef("--password-file and --oauth2-token-file: choose one")
	}
	if f.passwordFile != "" && f.user == "" {
		return cli.Usagef("--password-file needs --user")
	}
	if f.tokenFile != "" && f.user == "" {
		return cli.Usagef("--oauth2-token-file needs --user")
	}
	if changed("from") && f.from == "" {
		return cli.Usagef("--from: empty address (the null sender is not supported)")
	}
	p := queuefile.Params{
		Host: f.host, Port: f.port, TLS: tlsMode, Username: f.user, HELO: f.helo,
		From: f.from, To: slices.Clone(f.to),
	}
	if p.Host != "" && p.Port == 0 && p.TLS == queuefile.TLSImplicit {
		p.Port = 465 // SMTPS; otherwise the service's default, 25
	}
	if f.notBefore != "" {
		if p.NotBefore, err = parseWhen(f.notBefore, now); err != nil {
			return cli.Usagef("--not-before: %v", err)
		}
	}
	if f.expires != "" {
		if p.Expires, err = parseWhen(f.expires, now); err != nil {
			return cli.Usagef("--expires: %v", err)
		}
		if !p.Expires.After(now) {
			return cli.Usagef("--expires %s is in the past", f.expires)
		}
	}
	if !p.NotBefore.IsZero() && !p.Expires.IsZero() && !p.Expires.After(p.NotBefore) {
		return cli.Usagef("--expires %s is not after --not-before %s", f.expires, f.notBefore)
	}
	for _, to := range p.To {
		if err := queuefile.CheckAddress(to); err != nil {
			return cli.Usagef("--to: %v", err)
		}
	}
	// The rest of Params.Validate (host syntax, HELO, sender, times) with a
	// stand-in recipient when the recipients come from the message.
	probe := p
	probe.Relay = "probe"
	if probe.Host != "" {
		probe.Relay = ""
	}
	if len(probe.To) == 0 {
		probe.To = []string{"probe@example.invalid"}
	}
	if err := probe.Validate(); err != nil {
		return cli.Usagef("%v", err)
	}

	cfg, err := loadConfig(configFlag(cmd))
	if err != nil {
		return err
	}
	if f.host == "" {
		relay, err := pickRelay(cfg, f.relay)
		if err != nil {
			return err
		}
		p.Relay = relay
	}

	// Credentials: read after every command-line check, never printed.
	switch {
	case f.passwordFile != "":
		pw, err := readFirstLine(f.passwordFile, "password file")
		if err != nil {
			return err
		}
		p.Password = queuefile.NewSecret(pw)
	case f.tokenFile != "":
		tok, err := readFirstLine(f.tokenFile, "OAuth2 token file")
		if err != nil {
			return err
		}
		p.OAuth2Token = queuefile.NewSecret(tok)
	case f.user != "":
		if pw := os.Getenv(passwordEnv); pw != "" {
			pw = strings.TrimRight(pw, "\r\n")
			if strings.ContainsAny(pw, "\r\n\x00") {
				return fmt.Errorf("$%s contains a line break or NUL character", passwordEnv)
			}
			p.Password = queuefile.NewSecret(pw)
		}
	}

	q, closeQueue, err := producerQueue(cfg)
	if err != nil {
		return err
	}
	defer closeQueue()

	msg, closeMsg, err := openMessage(cmd, args)
	if err != nil {
		return err
	}
	defer closeMsg()
	name, err := q.Enqueue(msg, p)
	if err != nil {
		return cli.OneLine(err)
	}
	if q.PublishFrom != nil {
		fmt.Fprintln(cmd.OutOrStdout(), name) // the message's id on the stream
		return nil
	}
	fmt.Fprintln(cmd.OutOrStdout(), filepath.Join(q.Dir, name))
	return nil
}

// pickRelay returns the relay profile to use: name if given (it must exist),
// else the configuration's default_relay.
func pickRelay(cfg *pipeline.Config, name string) (string, error) {
	if name == "" {
		if cfg.DefaultRelay == "" {
			return "", cli.Usagef("no SMTP server: give --relay or --host, or set default_relay in %s", cfg.Path)
		}
		return cfg.DefaultRelay, nil
	}
	if _, ok := cfg.Relays[name]; !ok {
		names := make([]string, 0, len(cfg.Relays))
		for n := range cfg.Relays {
			names = append(names, n)
		}
		sort.Strings(names)
		known := "none configured"
		if len(names) > 0 {
			known = "configured: " + strings.Join(names, ", ")
		}
		return "", cli.Usagef("unknown relay profile %s (%s)", cli.QuoteIfNeeded(name), known)
	}
	return name, nil
}

// producerQueue returns the queue with the service's public key loaded,
// and what closes it. With a nats section, messages are published to the
// stream (queue_dir only holds the temporary file of the one being sealed).
func producerQueue(cfg *pipeline.Config) (*queuefile.Queue, func(), error) {
	if cfg.RecipientFile == "" {
		return nil, nil, fmt.Errorf("recipient_file is not set in %s: nothing to seal to", cfg.Path)
	}
	rs, err := queuefile.LoadRecipients(cfg.RecipientFile)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("%v (create the keys with smtpq keygen)", err)
		}
		return nil, nil, cli.OneLine(err)
	}
	q := &queuefile.Queue{Dir: cfg.QueueDir, Recipients: rs}
	if cfg.NATS == nil {
		return q, func() {}, nil
	}
	publish, closeNATS, err := pipeline.PublisherFrom(cfg)
	if err != nil {
		return nil, nil, cli.OneLine(err)
	}
	q.PublishFrom = publish
	return q, closeNATS, nil
}

// openMessage opens the message named by args: a file, or standard input for
// "-" or no argument.
func openMessage(cmd *cobra.Command, args []string) (io.Reader, func(), error) {
	if len(args) == 0 || args[0] == "-" {
		return cmd.InOrStdin(), func() {}, nil
	}
	fh, err := os.Open(args[0])
	if err != nil {
		return nil, nil, fmt.Errorf("message: %w", err)
	}
	if fi, err := fh.Stat(); err != nil {
		fh.Close()
		return nil, nil, fmt.Errorf("message: %w", err)
	} else if fi.IsDir() {
		fh.Close()
		return nil, nil, fmt.Errorf("message %s: is a directory", args[0])
	}
	return fh, func() { fh.Close() }, nil
}
