package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"
	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// The queue commands work on the spool's folders directly, beside the
// running service (see stages/inspect.go for how they stay out of its way).
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
				return usagef("unknown subcommand %s for %s (see %s --help)", quoteIfNeeded(args[0]), cmd.CommandPath(), cmd.CommandPath())
			}
			return cmd.Help()
		},
	}
	cmd.AddCommand(newQueueListCmd(), newQueueStatusCmd(), newQueueStatsCmd(),
		newQueueMoveCmd("hold"), newQueueMoveCmd("release"), newQueueMoveCmd("retry"),
		newQueueRequeueCmd(), newQueuePurgeCmd())
	return cmd
}

// queueEnv is what every queue command works with.
type queueEnv struct {
	cfg    *pipeline.Config
	dirs   stages.Dirs
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
		dirs:   stages.Dirs{Queue: cfg.QueueDir, Sent: cfg.SentDir, Undeliverable: cfg.UndeliverableDir},
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
			return fmt.Errorf("--host needs the service's private key to read each message's host, and %v (run as the service's user)", oneLine(q.idErr))
		}
		q.warn()
	}
	return nil
}

func (q *queueEnv) warn() {
	if q.idErr != nil && !q.warned {
		q.warned = true
		fmt.Fprintf(q.stderr, "smtpq: warning: cannot open the seals (%s): host, sender and recipients are shown as \"-\"; run as the service's user\n", flatten(q.idErr.Error()))
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
func (q *queueEnv) envelopeOf(e stages.SpoolEntry) envelope {
	if e.Place == stages.PlaceSent {
		return envelope{err: errors.New("copies in Sent keep no envelope")}
	}
	p, kind, err := stages.PeekParams(e.Path, q.ids)
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
	ID            string    `json:"id,omitempty"`
	Name          string    `json:"name"`
	State         string    `json:"state"`
	Path          string    `json:"path"`
	Instance      string    `json:"instance,omitempty"`
	Host          string    `json:"host,omitempty"`
	Port          int       `json:"port,omitempty"`
	Relay         string    `json:"relay,omitempty"`
	Sender        string    `json:"sender,omitempty"`
	Recipients    int       `json:"recipients,omitempty"`
	Size          int64     `json:"size"`
	Queued        time.Time `json:"queued,omitzero"`
	AgeSeconds    int64     `json:"age_seconds"`
	Attempts      int       `json:"attempts"`
	NextAttempt   time.Time `json:"next_attempt,omitzero"`
	NotBefore     time.Time `json:"not_before,omitzero"`
	LastError     string    `json:"last_error,omitempty"`
	Filed         time.Time `json:"filed,omitzero"`
	EnvelopeError string    `json:"envelope_error,omitempty"`

	env   envelope
	state *stages.State
	log   *stages.XMLLog
}

// row gathers what is known of a message: its envelope, its state file (or
// for Undeliverable its XML log) and its file.
func (q *queueEnv) row(e stages.SpoolEntry) *queueRow {
	r := &queueRow{ID: e.ID, Name: e.Name, State: string(e.Place), Path: e.Path, Instance: e.Instance}
	fi, statErr := os.Lstat(e.Path)
	if statErr == nil {
		r.Size = fi.Size()
	}
	r.env = q.envelopeOf(e)
	switch e.Place {
	case stages.PlaceSent:
		if statErr == nil {
			r.Filed = fi.ModTime()
		}
	case stages.PlaceUndeliverable:
		if l, err := stages.ReadXMLLog(stages.XMLLogPath(e.Path)); err == nil {
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
		if st, err := stages.ReadState(q.dirs, e.ID); err == nil && st != nil {
			r.state = st
			r.Attempts, r.LastError = st.Attempts, st.LastError
			r.Queued = st.Queued
			if e.Place == stages.PlaceDeferred {
				r.NextAttempt = st.NextAttempt
			}
		}
		if e.Place == stages.PlaceDeferred && r.NextAttempt.IsZero() {
			r.NextAttempt = e.Due
		}
	}
	if r.Queued.IsZero() {
		if t, ok := stages.QueuedTime(e.Name); ok {
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
	if r.env.err != nil && e.Place != stages.PlaceSent {
		r.EnvelopeError = oneLine(r.env.err).Error()
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

// --- list ---

// parseStates reads --state: a comma-separated list of states, or "all".
func parseStates(s string) ([]stages.Place, error) {
	if s == "" {
		return stages.QueuePlaces, nil
	}
	if strings.EqualFold(strings.TrimSpace(s), "all") {
		return stages.Places, nil
	}
	var out []stages.Place
	for _, part := range strings.Split(s, ",") {
		p, err := stages.ParsePlace(part)
		if err != nil {
			return nil, usagef("--state: %v", err)
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

func newQueueListCmd() *cobra.Command {
	var state, host string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--state S[,S...]|all] [--host H] [--json]",
		Short: "List the messages in the queue, one line each",
		Long: `List messages, one line each: name, state, SMTP host (with the relay profile in
parentheses), envelope sender, number of recipients, size, age since enqueueing,
delivery attempts, next attempt, last error. Without --state: every message not
yet filed (queued, active, deferred, held); --state takes one or more of
queued, active, deferred, held, undeliverable, sent (comma-separated), or all.
--host shows only the messages for that SMTP host. --json prints one JSON object
per line instead.

Folders are read as they go, not sorted, so a queue of any size lists in bounded
memory. No password or token is ever shown, nor recipient addresses or user
names (see "queue status" for one message). Sent copies keep no envelope: their
host, sender and recipients show as "-".`,
		Args: usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			places, err := parseStates(state)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("host") && stages.HostKey(host) == "" {
				return usagef("--host: empty host name")
			}
			q, err := openQueueEnv(cmd)
			if err != nil {
				return err
			}
			if err := q.loadIdentities(host != ""); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			if !asJSON {
				fmt.Fprintf(out, listFormat, "NAME", "STATE", "HOST", "SENDER", "RCPTS", "SIZE", "AGE", "TRIES", "NEXT", "LAST-ERROR")
			}
			want := stages.HostKey(host)
			return stages.WalkSpool(ctxOf(cmd), q.dirs, places, func(e stages.SpoolEntry) error {
				r := q.row(e)
				if want != "" && r.Host != want {
					return nil
				}
				if asJSON {
					return enc.Encode(r)
				}
				_, err := fmt.Fprint(out, r.line(q.now))
				return err
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&state, "state", "", "queued, active, deferred, held, undeliverable, sent (comma-separated), or all")
	fl.StringVar(&host, "host", "", "only messages for this SMTP host")
	fl.BoolVar(&asJSON, "json", false, "one JSON object per line")
	return cmd
}

const listFormat = "%-51s %-13s %-24s %-28s %5s %9s %6s %5s %7s %s\n"

func (r *queueRow) line(now time.Time) string {
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	host, sender, rcpts := "-", "-", "-"
	if r.Host != "" || r.Relay != "" {
		host = r.env.hostLabel()
	}
	if r.Sender != "" {
		sender, rcpts = r.Sender, strconv.Itoa(r.Recipients)
	}
	age := "-"
	if !r.Queued.IsZero() {
		age = fmtAge(now.Sub(r.Queued))
	}
	tries, next := "-", "-"
	if r.State != string(stages.PlaceSent) {
		tries = strconv.Itoa(r.Attempts)
	}
	nextAt := r.NextAttempt
	if nextAt.IsZero() && r.State == string(stages.PlaceQueued) && r.NotBefore.After(now) {
		nextAt = r.NotBefore // scheduled: the service will park it until then
	}
	if !nextAt.IsZero() {
		if d := nextAt.Sub(now); d > 0 {
			next = "+" + fmtAge(d)
		} else {
			next = "due"
		}
	}
	return fmt.Sprintf(listFormat, sanitizeField(r.Name), r.State, sanitizeField(host), sanitizeField(sender), rcpts,
		strconv.FormatInt(r.Size, 10), age, tries, next, dash(sanitize(r.LastError)))
}

// sanitize keeps a text from the queue (untrusted: file names, sealed
// fields, server replies) on one line, without control characters that a
// terminal would act on.
func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r == '\n' || r == '\r' || r == '\t':
			return ' '
		case r < 0x20 || (r >= 0x7f && r <= 0x9f):
			return -1
		}
		return r
	}, s)
}

// sanitizeField is sanitize for a column of "queue list": no spaces either,
// so that the columns can be split on white space.
func sanitizeField(s string) string {
	return strings.ReplaceAll(sanitize(s), " ", "_")
}

// fmtAge prints a duration compactly: 45s, 12m, 3h12m, 2d3h.
func fmtAge(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 24*time.Hour:
		h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
		if m == 0 {
			return strconv.Itoa(h) + "h"
		}
		return fmt.Sprintf("%dh%dm", h, m)
	default:
		days, h := int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour)
		if h == 0 {
			return strconv.Itoa(days) + "d"
		}
		return fmt.Sprintf("%dd%dh", days, h)
	}
}

// --- status ---

// messageName takes a message name or a path to it (in any folder; the
// path of its .xml log also works) and returns the name.
func messageName(arg string) (string, error) {
	name := filepath.Base(strings.TrimSpace(arg))
	if strings.HasSuffix(name, ".xml") {
		name = strings.TrimSuffix(name, ".xml") + queuefile.Ext
	}
	if !queuefile.IsQueueName(name) {
		return "", usagef("%s is not a message name (want <time>-<random>.eml as enqueue printed it, or its path)", quoteIfNeeded(arg))
	}
	return name, nil
}

// queueStatus is "queue status" for one place a message is found in.
type queueStatus struct {
	*queueRow
	RecipientList []string             `json:"recipient_list,omitempty"`
	User          string               `json:"user,omitempty"`
	Expires       time.Time            `json:"expires,omitzero"`
	Done          []string             `json:"done,omitempty"`
	History       []stages.AttemptNote `json:"history,omitempty"`
	Log           string               `json:"log,omitempty"`
	Note          string               `json:"note,omitempty"`
}

func newQueueStatusCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status NAME|PATH [--json]",
		Short: "Say where a message is now and what happened to it",
		Long: `Say where the message is now: queued, active (claimed by a running service,
being sent or waiting for its host), deferred until when (attempts and last
error), held, sent (the Sent copy's path), or undeliverable (its path and the
failure from its XML log). NAME is the file name that enqueue printed, or any
path to the message. A message that is nowhere (purged, or sent with
delete_after_send) is an error, exit status 1. The user name is shown, never a
password or token.`,
		Args: usageArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, err := messageName(args[0])
			if err != nil {
				return err
			}
			q, err := openQueueEnv(cmd)
			if err != nil {
				return err
			}
			_ = q.loadIdentities(false)
			found, err := stages.LocateMessage(q.dirs, name)
			if errors.Is(err, stages.ErrMessageNotFound) {
				hint := "purged?"
				if q.cfg.DeleteAfterSend {
					hint = "sent with delete_after_send, or purged?"
				}
				return fmt.Errorf("%s: not found in the queue, Sent or Undeliverable (%s)", name, hint)
			}
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			for _, e := range found {
				s := q.status(e)
				if asJSON {
					if err := enc.Encode(s); err != nil {
						return err
					}
					continue
				}
				s.print(out, q.now)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (one object per place the message is found in)")
	return cmd
}

func (q *queueEnv) status(e stages.SpoolEntry) *queueStatus {
	s := &queueStatus{queueRow: q.row(e)}
	env := s.env
	s.RecipientList, s.User, s.Expires = env.rcpts, env.user, env.expires
	if st := s.state; st != nil {
		s.Done, s.History = st.Done, st.History
		if e.Place == stages.PlaceHeld && !st.NextAttempt.IsZero() {
			s.Note = "was deferred until " + st.NextAttempt.UTC().Format(time.RFC3339) + "; release sends it at once"
		}
	}
	if e.Place == stages.PlaceUndeliverable {
		if s.log != nil {
			s.Log = stages.XMLLogPath(e.Path)
			for _, h := range s.log.History {
				t, _ := time.Parse(time.RFC3339, h.At)
				s.History = append(s.History, stages.AttemptNote{At: t, Result: h.Result})
			}
		}
		s.Note = "requeue puts it back in the queue"
	}
	if e.Place == stages.PlaceDeferred && s.Attempts == 0 && !env.notBefore.IsZero() && env.notBefore.After(q.now) {
		s.Note = "scheduled: not before " + env.notBefore.UTC().Format(time.RFC3339)
	}
	return s
}

func (s *queueStatus) print(w io.Writer, now time.Time) {
	at := func(t time.Time) string {
		d := t.Sub(now)
		rel := fmtAge(-d) + " ago"
		if d > 0 {
			rel = "in " + fmtAge(d)
		}
		return t.UTC().Format(time.RFC3339) + " (" + rel + ")"
	}
	var head string
	switch stages.Place(s.State) {
	case stages.PlaceQueued:
		head = "queued, waiting for the service to take it"
	case stages.PlaceActive:
		head = "active: being sent, or waiting for its host, by the service instance " + s.Instance
	case stages.PlaceDeferred:
		head = "deferred until " + at(s.NextAttempt)
	case stages.PlaceHeld:
		head = "held (release sends it)"
	case stages.PlaceSent:
		head = "sent: " + s.Path
	case stages.PlaceUndeliverable:
		head = "undeliverable: " + s.Path
	}
	fmt.Fprintf(w, "%s: %s\n", sanitize(s.Name), sanitize(head))
	field := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "  %-12s %s\n", k+":", sanitize(v))
		}
	}
	field("id", s.ID)
	if s.State != string(stages.PlaceSent) && s.State != string(stages.PlaceUndeliverable) {
		field("path", s.Path)
	}
	field("note", s.Note)
	if s.State == string(stages.PlaceUndeliverable) {
		field("failure", s.LastError)
		field("log", s.Log)
	}
	if s.Host != "" || s.Relay != "" {
		h := s.env.hostLabel()
		if s.Port != 0 {
			h = fmt.Sprintf("%s port %d", h, s.Port)
		}
		field("host", h)
	} else if s.State != string(stages.PlaceSent) {
		field("host", "- ("+s.EnvelopeError+")")
	}
	if s.User != "" {
		field("user", s.User)
	}
	field("sender", s.Sender)
	if len(s.RecipientList) > 0 {
		list := s.RecipientList
		more := ""
		if len(list) > 20 {
			more = fmt.Sprintf(" ... and %d more", len(list)-20)
			list = list[:20]
		}
		field("recipients", strings.Join(list, ", ")+more)
	}
	if len(s.Done) > 0 {
		field("accepted", strings.Join(s.Done, ", ")+" (not sent again)")
	}
	field("size", strconv.FormatInt(s.Size, 10))
	if !s.Queued.IsZero() {
		field("queued", at(s.Queued))
	}
	if !s.Filed.IsZero() {
		field("filed", at(s.Filed))
	}
	if !s.NotBefore.IsZero() {
		field("not before", at(s.NotBefore))
	}
	if !s.Expires.IsZero() {
		field("expires", at(s.Expires))
	}
	if s.State != string(stages.PlaceSent) {
		field("attempts", strconv.Itoa(s.Attempts))
	}
	if s.State != string(stages.PlaceUndeliverable) {
		field("last error", s.LastError)
	}
	hist := s.History
	if len(hist) > 5 {
		hist = hist[len(hist)-5:]
	}
	for _, h := range hist {
		field("history", h.At.UTC().Format(time.RFC3339)+" "+h.Result)
	}
}

// --- stats ---

type statCount struct {
	Count            int       `json:"count"`
	Oldest           time.Time `json:"oldest,omitzero"`
	OldestAgeSeconds int64     `json:"oldest_age_seconds"`
}

func (c *statCount) add(t, now time.Time) {
	c.Count++
	if !t.IsZero() && (c.Oldest.IsZero() || t.Before(c.Oldest)) {
		c.Oldest = t
		c.OldestAgeSeconds = int64(now.Sub(t) / time.Second)
	}
}

type queueStats struct {
	States map[stages.Place]*statCount            `json:"states"`
	Hosts  map[string]map[stages.Place]*statCount `json:"hosts"`
}

func newQueueStatsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats [--json]",
		Short: "Count the messages per state and per SMTP host, with the oldest of each",
		Long: `Count the messages in each state, and per SMTP host (queued, active, deferred,
held and undeliverable: Sent copies keep no host), with the age of the oldest
(since enqueueing). Messages whose seal cannot be opened count under host "-".`,
		Args: usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := openQueueEnv(cmd)
			if err != nil {
				return err
			}
			_ = q.loadIdentities(false)
			st := queueStats{States: map[stages.Place]*statCount{}, Hosts: map[string]map[stages.Place]*statCount{}}
			for _, p := range stages.Places {
				st.States[p] = &statCount{}
			}
			err = stages.WalkSpool(ctxOf(cmd), q.dirs, stages.Places, func(e stages.SpoolEntry) error {
				if e.Place == stages.PlaceSent {
					t, _ := stages.QueuedTime(e.Name)
					st.States[e.Place].add(t, q.now)
					return nil
				}
				r := q.row(e)
				st.States[e.Place].add(r.Queued, q.now)
				h := r.Host
				if h == "" {
					h = "-"
				}
				if st.Hosts[h] == nil {
					st.Hosts[h] = map[stages.Place]*statCount{}
				}
				c := st.Hosts[h][e.Place]
				if c == nil {
					c = &statCount{}
					st.Hosts[h][e.Place] = c
				}
				c.add(r.Queued, q.now)
				return nil
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				return json.NewEncoder(out).Encode(st)
			}
			st.print(out)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func (st *queueStats) print(w io.Writer) {
	oldest := func(c *statCount) string {
		if c == nil || c.Oldest.IsZero() {
			return "-"
		}
		return fmtAge(time.Duration(c.OldestAgeSeconds) * time.Second)
	}
	fmt.Fprintf(w, "%-15s %8s %8s\n", "STATE", "COUNT", "OLDEST")
	for _, p := range stages.Places {
		fmt.Fprintf(w, "%-15s %8d %8s\n", p, st.States[p].Count, oldest(st.States[p]))
	}
	if len(st.Hosts) == 0 {
		return
	}
	hosts := make([]string, 0, len(st.Hosts))
	for h := range st.Hosts {
		hosts = append(hosts, h)
	}
	sort.Strings(hosts)
	cols := []stages.Place{stages.PlaceQueued, stages.PlaceActive, stages.PlaceDeferred, stages.PlaceHeld, stages.PlaceUndeliverable}
	fmt.Fprintf(w, "\n%-32s %8s %8s %8s %8s %8s %8s\n", "HOST", "QUEUED", "ACTIVE", "DEFERRED", "HELD", "UNDELIV", "OLDEST")
	for _, h := range hosts {
		fmt.Fprintf(w, "%-32s", h)
		var old *statCount
		for _, p := range cols {
			c := st.Hosts[h][p]
			n := 0
			if c != nil {
				n = c.Count
				if p != stages.PlaceUndeliverable && !c.Oldest.IsZero() && (old == nil || c.Oldest.Before(old.Oldest)) {
					old = c
				}
			}
			fmt.Fprintf(w, " %8d", n)
		}
		fmt.Fprintf(w, " %8s\n", oldest(old))
	}
}

// --- hold, release, retry ---

// selection is NAME, --all or --host H: exactly one.
type selection struct {
	name string
	all  bool
	host string
}

func parseSelection(cmd *cobra.Command, op string, args []string, all bool, host string, withHost bool) (selection, error) {
	s := selection{all: all, host: stages.HostKey(host)}
	if withHost && cmd.Flags().Changed("host") && s.host == "" {
		return s, usagef("--host: empty host name")
	}
	n := 0
	if len(args) > 0 {
		n++
	}
	if all {
		n++
	}
	if s.host != "" {
		n++
	}
	what := "a message NAME, --all or --host H"
	if !withHost {
		what = "a message NAME or --all"
	}
	switch {
	case n == 0:
		return s, usagef("queue %s: give %s", op, what)
	case n > 1:
		return s, usagef("queue %s: give only one of %s", op, what)
	}
	if len(args) > 0 {
		name, err := messageName(args[0])
		if err != nil {
			return s, err
		}
		s.name = name
	}
	return s, nil
}

var moveDocs = map[string][2]string{
	"hold": {"Set messages aside: held mail is not sent until released",
		`Move queued and deferred messages to queue_dir/.hold/, where the service never
takes them; their delivery state (attempts, last error) is kept. A message being
sent right now (active) cannot be held: for one NAME that is an error (exit
status 1); with --all or --host such messages are counted as skipped. Holding a
message that is already held does nothing. --host selects by SMTP host and
needs the service's private key.`},
	"release": {"Send held messages: back to the queue, now",
		`Move held messages back to queue_dir: they are sent at once, whatever next
attempt they had before they were held (their attempt count is kept).`},
	"retry": {"Try deferred messages now, and lift the pause of their hosts in the running service",
		`Move deferred messages to queue_dir so that they are tried now (attempt counts
are unchanged), and ask the running service (through queue_dir/.control/) to
lift the pause of the host (--host H or the message's host; every host with
--all), so that mail it holds waiting for a paused host is tried now too.
Messages scheduled with --not-before stay deferred until their time. Held
messages are not retried: release them.`},
}

func newQueueMoveCmd(op string) *cobra.Command {
	var all bool
	var host string
	cmd := &cobra.Command{
		Use:   op + " NAME|--all|--host H",
		Short: moveDocs[op][0],
		Long:  moveDocs[op][1],
		Args:  usageArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sel, err := parseSelection(cmd, op, args, all, host, true)
			if err != nil {
				return err
			}
			q, err := openQueueEnv(cmd)
			if err != nil {
				return err
			}
			switch {
			case sel.host != "":
				if err := q.loadIdentities(true); err != nil {
					return err
				}
			case op == "retry" && sel.name != "":
				// For the host whose pause to lift; moveOne says if it
				// cannot be read.
				q.ids, q.idErr = queuefile.LoadIdentities(q.cfg.IdentityFile...)
			case op == "retry":
				// To leave scheduled (not-before) messages alone.
				_ = q.loadIdentities(false)
			}
			out := cmd.OutOrStdout()
			if sel.name != "" {
				return q.moveOne(out, op, sel.name)
			}
			return q.moveAll(ctxOf(cmd), out, op, sel)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every message")
	cmd.Flags().StringVar(&host, "host", "", "the messages for this SMTP host")
	return cmd
}

// ctxOf is the command's context (cobra sets one in Execute).
func ctxOf(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

func describe(e stages.SpoolEntry) string {
	switch e.Place {
	case stages.PlaceDeferred:
		return "deferred until " + e.Due.UTC().Format(time.RFC3339)
	case stages.PlaceActive:
		return "active (instance " + e.Instance + ")"
	}
	return string(e.Place)
}

func (q *queueEnv) moveOne(out io.Writer, op, name string) error {
	var pe *stages.PlaceError
	switch op {
	case "hold":
		from, err := stages.HoldMessage(q.dirs, name)
		if errors.As(err, &pe) && pe.Entry.Place == stages.PlaceHeld {
			fmt.Fprintf(out, "%s is already held\n", name)
			return nil
		}
		if errors.As(err, &pe) && pe.Entry.Place == stages.PlaceActive {
			// The service has it: ask it to set the message aside unless
			// its delivery is already under way.
			if cerr := stages.WriteControl(q.dirs.Queue, stages.Control{Op: stages.OpHold, Name: name}); cerr != nil {
				return fmt.Errorf("asking the service to hold %s: %w", name, cerr)
			}
			fmt.Fprintf(out, "%s is with the running service: asked it to hold the message unless it is being sent right now (smtpq queue status %s tells)\n", name, name)
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "held %s (it was %s)\n", name, describe(from))
	case "release":
		if _, err := stages.ReleaseMessage(q.dirs, name); err != nil {
			return err
		}
		fmt.Fprintf(out, "released %s: it is in the queue and will be sent now\n", name)
	case "retry":
		found, err := stages.LocateMessage(q.dirs, name)
		if err != nil {
			return err
		}
		env := q.envelopeOf(found[0])
		if found[0].Place == stages.PlaceDeferred && env.notBefore.After(q.now) {
			return fmt.Errorf("%s is scheduled for %s (--not-before): retry does not send it earlier", name, env.notBefore.UTC().Format(time.RFC3339))
		}
		from, err := stages.RetryMessage(q.dirs, name)
		switch {
		case err == nil:
			fmt.Fprintf(out, "%s: moved from %s to the queue: it will be tried now\n", name, describe(from))
		case errors.As(err, &pe) && pe.Entry.Place == stages.PlaceQueued:
			fmt.Fprintf(out, "%s is in the queue already\n", name)
		case errors.As(err, &pe) && pe.Entry.Place == stages.PlaceActive:
			fmt.Fprintf(out, "%s is with the running service (instance %s): being sent or waiting for its host\n", name, pe.Entry.Instance)
		default:
			return err
		}
		if env.host == "" {
			fmt.Fprintf(q.stderr, "smtpq: warning: cannot read the host of %s (%s): no host pause lifted; use retry --host H\n", name, flatten(fmt.Sprint(env.err)))
			return nil
		}
		if err := stages.WriteControl(q.dirs.Queue, stages.Control{Op: stages.OpRetry, Host: env.host}); err != nil {
			return fmt.Errorf("asking the service to lift the pause of %s: %w", env.host, err)
		}
		fmt.Fprintf(out, "asked the running service to lift any pause of %s\n", env.host)
	}
	return nil
}

func (q *queueEnv) moveAll(ctx context.Context, out io.Writer, op string, sel selection) error {
	var scheduled int
	match := func(e stages.SpoolEntry) bool {
		if sel.host == "" && op != "retry" {
			return true
		}
		env := q.envelopeOf(e)
		if sel.host != "" && env.host != sel.host {
			return false
		}
		if op == "retry" && env.notBefore.After(q.now) {
			scheduled++
			return false
		}
		return true
	}
	var r stages.MoveResult
	var err error
	switch op {
	case "hold":
		r, err = stages.HoldAll(ctx, q.dirs, match)
	case "release":
		r, err = stages.ReleaseAll(ctx, q.dirs, match)
	case "retry":
		r, err = stages.RetryAll(ctx, q.dirs, match)
	}
	what := "messages"
	if sel.host != "" {
		what = "messages for " + sel.host
	}
	switch op {
	case "hold":
		fmt.Fprintf(out, "held %d %s", r.Moved, what)
		if r.Active > 0 {
			c := stages.Control{Op: stages.OpHold, Host: sel.host, All: sel.host == ""}
			if cerr := stages.WriteControl(q.dirs.Queue, c); cerr != nil {
				return fmt.Errorf("asking the service to hold the messages it has: %w", cerr)
			}
			fmt.Fprintf(out, "; %d are with the running service: asked it to hold those not being sent right now", r.Active)
		}
	case "release":
		fmt.Fprintf(out, "released %d %s to the queue", r.Moved, what)
	case "retry":
		fmt.Fprintf(out, "moved %d deferred %s to the queue", r.Moved, what)
		if scheduled > 0 {
			fmt.Fprintf(out, "; %d scheduled for later (--not-before) stay deferred", scheduled)
		}
	}
	if r.Raced > 0 {
		fmt.Fprintf(out, "; %d were taken by the service (or another command) meanwhile", r.Raced)
	}
	fmt.Fprintln(out)
	if err != nil {
		return err
	}
	if op == "retry" {
		c := stages.Control{Op: stages.OpRetry, Host: sel.host, All: sel.all}
		if err := stages.WriteControl(q.dirs.Queue, c); err != nil {
			return fmt.Errorf("asking the service to lift host pauses: %w", err)
		}
		if sel.all {
			fmt.Fprintln(out, "asked the running service to lift every host's pause")
		} else {
			fmt.Fprintf(out, "asked the running service to lift any pause of %s\n", sel.host)
		}
	}
	return nil
}

// --- requeue ---

func newQueueRequeueCmd() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "requeue NAME|--all",
		Short: "Put undeliverable messages back in the queue, as new",
		Long: `Move undeliverable messages back to queue_dir, as new: no attempts, no state.
Each one's XML log stays in undeliverable_dir as history, renamed
<name>.<UTC time>.xml, so that a new failure can write a new <name>.xml. A
message of the same name still in the queue is never overwritten: it is
refused.`,
		Args: usageArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			sel, err := parseSelection(cmd, "requeue", args, all, "", false)
			if err != nil {
				return err
			}
			q, err := openQueueEnv(cmd)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if sel.name != "" {
				path, err := stages.RequeueMessage(q.dirs, sel.name, q.now)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "requeued %s\n", path)
				return nil
			}
			r, err := stages.RequeueAll(ctxOf(cmd), q.dirs, q.now, nil)
			fmt.Fprintf(out, "requeued %d messages", r.Moved)
			if r.Clash > 0 {
				fmt.Fprintf(out, "; %d not requeued: a message of the same name is in the queue", r.Clash)
			}
			fmt.Fprintln(out)
			return err
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "every undeliverable message")
	return cmd
}

// --- purge ---

func newQueuePurgeCmd() *cobra.Command {
	var state, olderThan string
	cmd := &cobra.Command{
		Use:   "purge --state sent|undeliverable --older-than DURATION",
		Short: "Remove messages filed in Sent or Undeliverable longer ago than DURATION",
		Long: `Remove the messages filed in sent_dir or undeliverable_dir (with their XML logs)
longer ago than DURATION (90m, 36h, 30d), by the time they were filed (the file's
modification time; in Undeliverable, its XML log's). History logs kept by requeue
go by their own time. Prints how many were removed. Nothing else is ever purged.`,
		Args: usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state == "" || olderThan == "" {
				return usagef("queue purge: give --state sent|undeliverable and --older-than DURATION")
			}
			p, err := stages.ParsePlace(state)
			if err != nil {
				return usagef("--state: %v", err)
			}
			if p != stages.PlaceSent && p != stages.PlaceUndeliverable {
				return usagef("--state %s: purge removes only sent or undeliverable messages", p)
			}
			d, err := parseDuration(olderThan)
			if err != nil {
				return usagef("--older-than: %s is not a duration (90m, 36h, 30d)", quoteIfNeeded(olderThan))
			}
			if d < 0 {
				return usagef("--older-than: negative duration %s", olderThan)
			}
			q, err := openQueueEnv(cmd)
			if err != nil {
				return err
			}
			r, err := stages.Purge(ctxOf(cmd), q.dirs, p, q.now.Add(-d))
			out := cmd.OutOrStdout()
			if p == stages.PlaceSent {
				fmt.Fprintf(out, "purged %d messages from %s\n", r.Messages, q.dirs.Sent)
			} else {
				fmt.Fprintf(out, "purged %d messages and %d XML logs from %s\n", r.Messages, r.Logs, q.dirs.Undeliverable)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "sent or undeliverable")
	cmd.Flags().StringVar(&olderThan, "older-than", "", "filed longer ago than this (90m, 36h, 30d)")
	return cmd
}
