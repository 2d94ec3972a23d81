package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// The queue commands work on the spool's folders directly, beside the
// running service (see pipeline/spool/admin.go for how they stay out of its way).
// They must run as the service's user: they move the service's files, and
// they open seals with its private key.

func newQueueCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "queue",
		Short: "Inspect and control the queue: list, status, stats, hold, release, retry, requeue, purge",
		Long: `Inspect and control the queue while the service runs (or not). Run these as the
service's user: they move its files, and they read the SMTP host, sender and
recipients sealed in each message with its private key.

States: queued (waiting in queue_dir), active (claimed by a running service:
being sent or waiting for its host), deferred (waiting for a retry or its
not-before time), held (set aside with "hold"), undeliverable, sent.`,
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return cli.Usagef("unknown subcommand %s for %s (see %s --help)", cli.QuoteIfNeeded(args[0]), cmd.CommandPath(), cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	cmd.AddCommand(newQueueListCmd(), newQueueStatusCmd(), newQueueStatsCmd(),
		newQueueMoveCmd(spool.OpHold), newQueueMoveCmd(spool.OpRelease), newQueueMoveCmd(spool.OpRetry),
		newQueueRequeueCmd(), newQueuePurgeCmd())
	return cmd
}

// queueEnv is what every queue command works with.
type queueEnv struct {
	cfg    *pipeline.Config
	dirs   spool.Dirs
	now    time.Time
	stderr io.Writer

	ids    []age.Identity
	idErr  error // why the identities could not be loaded
	warned bool
}

func openQueueEnv(cmd *cobra.Command) (*queueEnv, error) {
	cfg, err := loadConfig(configFlag(cmd))
	if err != nil {
		return nil, err
	}
	return &queueEnv{
		cfg:    cfg,
		dirs:   spool.Dirs{Queue: cfg.QueueDir, Sent: cfg.SentDir, Undeliverable: cfg.UndeliverableDir},
		now:    time.Now(),
		stderr: cmd.ErrOrStderr(),
	}, nil
}

// loadIdentities loads the service's private keys to open seals. Without
// them, sealed fields show as "-" (warn prints why, once); hostRequired
// makes it an error instead (a --host selection cannot be made).
func (q *queueEnv) loadIdentities(hostRequired bool) error {
	q.ids, q.idErr = queuefile.LoadIdentities(q.cfg.IdentityFile...)
	if q.idErr != nil {
		if hostRequired {
			return fmt.Errorf("--host needs the service's private key to read each message's host, and %v (run as the service's user)", cli.OneLine(q.idErr))
		}
		q.warn()
	}
	return nil
}

func (q *queueEnv) warn() {
	if q.idErr != nil && !q.warned {
		q.warned = true
		fmt.Fprintf(q.stderr, "smtpq: warning: cannot open the seals (%s): host, sender and recipients are shown as \"-\"; run as the service's user\n", cli.Flatten(q.idErr.Error()))
	}
}

// envelope is what can be shown of a message's sealed parameters: never a
// password or token.
type envelope struct {
	known     bool
	host      string // as the service routes it: lower case, no brackets or final dot
	port      int
	relay     string // relay profile, if the message names one
	sender    string // "<>" for the null sender
	rcpts     []string
	user      string
	size      int64 // of the message as sent (without the sealed header)
	notBefore time.Time
	expires   time.Time
	err       error // why it is not known
}

// envelopeOf opens the seal of a message (its header only). Sent copies
// have no seal.
func (q *queueEnv) envelopeOf(e spool.Entry) envelope {
	if e.Place == spool.PlaceSent {
		return envelope{err: errors.New("copies in Sent keep no envelope")}
	}
	p, kind, err := spool.PeekParams(e.Path, q.ids)
	if err != nil {
		if q.idErr != nil && kind == stages.KindSealed && !errors.Is(err, queuefile.ErrNoSeal) {
			err = errors.New("no private key")
		}
		return envelope{err: err}
	}
	env := envelope{known: true, sender: p.From, rcpts: p.To, user: p.Username, size: p.Size,
		notBefore: p.NotBefore, expires: p.Expires}
	if env.sender == "" {
		env.sender = "<>"
	}
	relay, host, port, tls := p.Relay, p.Host, p.Port, p.TLS
	if kind == stages.KindPickup {
		relay = ""
		if q.cfg.PickupCompat {
			relay = q.cfg.DefaultRelay
		}
		if relay == "" {
			env.err = errors.New("pickup file, but pickup_compat is off")
		}
	}
	if relay != "" {
		env.relay = relay
		r, ok := q.cfg.Relays[relay]
		if !ok {
			env.err = fmt.Errorf("unknown relay profile %q", relay)
			return env
		}
		// As the service resolves it: the profile's server, port and login.
		host, port, tls, env.user = r.Host, r.Port, queuefile.TLSMode(r.TLS), r.Username
	}
	env.host = stages.HostKey(host)
	if port == 0 && env.host != "" {
		port = queuefile.DefaultPort
		if tls == queuefile.TLSImplicit {
			port = 465
		}
	}
	env.port = port
	return env
}

// hostLabel shows a message's host, with its relay profile.
func (env envelope) hostLabel() string {
	h := env.host
	if h == "" {
		h = "-"
		if env.relay != "" {
			h = "?"
		}
	}
	if env.relay != "" {
		h += "(" + env.relay + ")"
	}
	return h
}

// queueRow is one message as list and status show it. It holds no secret:
// no password or token, and (in list) no user name or recipient address.
type queueRow struct {
	ID            string      `json:"id,omitempty"`
	Name          string      `json:"name"`
	State         spool.Place `json:"state"`
	Path          string      `json:"path"`
	Instance      string      `json:"instance,omitempty"`
	Host          string      `json:"host,omitempty"`
	Port          int         `json:"port,omitempty"`
	Relay         string      `json:"relay,omitempty"`
	Sender        string      `json:"sender,omitempty"`
	Recipients    int         `json:"recipients,omitempty"`
	Size          int64       `json:"size"`
	Queued        time.Time   `json:"queued,omitzero"`
	AgeSeconds    int64       `json:"age_seconds"`
	Attempts      int         `json:"attempts"`
	NextAttempt   time.Time   `json:"next_attempt,omitzero"`
	NotBefore     time.Time   `json:"not_before,omitzero"`
	LastError     string      `json:"last_error,omitempty"`
	Filed         time.Time   `json:"filed,omitzero"`
	EnvelopeError string      `json:"envelope_error,omitempty"`

	env   envelope
	state *stages.State
	log   *stages.XMLLog
}

// row gathers what is known of a message: its envelope, its state file (or
// for Undeliverable its XML log) and its file.
func (q *queueEnv) row(e spool.Entry) *queueRow {
	r := &queueRow{ID: e.ID, Name: e.Name, State: e.Place, Path: e.Path, Instance: e.Instance}
	fi, statErr := os.Lstat(e.Path)
	if statErr == nil {
		r.Size = fi.Size()
	}
	r.env = q.envelopeOf(e)
	switch e.Place {
	case spool.PlaceSent:
		if statErr == nil {
			r.Filed = fi.ModTime()
		}
	case spool.PlaceUndeliverable:
		if l, err := spool.ReadXMLLog(spool.XMLLogPath(e.Path)); err == nil {
			r.log = l
			r.Attempts = l.Attempts
			r.LastError = failureText(l.Failure)
			if t, err := time.Parse(time.RFC3339, l.Failed); err == nil {
				r.Filed = t
			}
			if t, err := time.Parse(time.RFC3339, l.Queued); err == nil {
				r.Queued = t
			}
			if !r.env.known && l.Host != "" {
				// The log names host and envelope: no key needed.
				r.env.host, r.env.port, r.env.sender, r.env.rcpts = stages.HostKey(l.Host), l.Port, l.From, l.To
				if r.env.sender == "" {
					r.env.sender = "<>"
				}
			}
		}
	default:
		if st, err := spool.ReadState(q.dirs, e.ID); err == nil && st != nil {
			r.state = st
			r.Attempts, r.LastError = st.Attempts, st.LastError
			r.Queued = st.Queued
			if e.Place == spool.PlaceDeferred {
				r.NextAttempt = st.NextAttempt
			}
		}
		if e.Place == spool.PlaceDeferred && r.NextAttempt.IsZero() {
			r.NextAttempt = e.Due
		}
	}
	if r.Queued.IsZero() {
		if t, ok := spool.QueuedTime(e.Name); ok {
			r.Queued = t
		} else if statErr == nil {
			r.Queued = fi.ModTime()
		}
	}
	if !r.Queued.IsZero() {
		r.AgeSeconds = int64(q.now.Sub(r.Queued) / time.Second)
	}
	if r.env.host != "" || r.env.relay != "" {
		r.Host, r.Port, r.Relay = r.env.host, r.env.port, r.env.relay
	}
	if r.env.sender != "" {
		r.Sender = r.env.sender
		r.Recipients = len(r.env.rcpts)
	}
	r.NotBefore = r.env.notBefore
	if r.env.known && r.env.size > 0 {
		r.Size = r.env.size
	}
	if r.env.err != nil && e.Place != spool.PlaceSent {
		r.EnvelopeError = cli.OneLine(r.env.err).Error()
	}
	return r
}

func failureText(f stages.XMLFailure) string {
	var b strings.Builder
	b.WriteString(f.Class)
	if f.Step != "" {
		b.WriteString(": " + f.Step)
	}
	b.WriteString(": ")
	if f.Code != 0 {
		b.WriteString(strconv.Itoa(f.Code) + " ")
	}
	if f.Enhanced != "" {
		b.WriteString(f.Enhanced + " ")
	}
	b.WriteString(f.Text)
	return strings.TrimSpace(b.String())
}
