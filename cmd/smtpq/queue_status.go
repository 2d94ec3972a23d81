package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// smtpq queue status: the command and what it prints.

// messageName takes a message name, its id (queue list shows it; the
// queue commands find a message still in the queue by it) or a path to it
// (in any folder; the path of its .xml log also works) and returns the
// name, or the id.
func messageName(arg string) (string, error) {
	if id := strings.ToLower(strings.TrimSpace(arg)); spool.IsID(id) {
		return id, nil // ids are lower case; one typed in capitals is the same id
	}
	name := filepath.Base(strings.TrimSpace(arg))
	if strings.HasSuffix(name, ".xml") {
		name = strings.TrimSuffix(name, ".xml") + queuefile.Ext
	}
	if !queuefile.IsQueueName(name) {
		return "", cli.Usagef("%s is not a message name (want <time>-<random>.eml as enqueue printed it, its id, or its path)", cli.QuoteIfNeeded(arg))
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
		Use:   "status NAME|ID|PATH [--json]",
		Short: "Say where a message is now and what happened to it",
		Long: `Say where the message is now: queued, active (claimed by a running service,
being sent or waiting for its host), deferred until when (attempts and last
error), held, sent (the Sent copy's path), or undeliverable (its path and the
failure from its XML log). NAME is the file name that enqueue printed, or any
path to the message; ID is the message's id (queue list shows it) while it is
in the queue; with a nats section, also the id enqueue printed, and the
message is looked for in the cluster's records too. A message that is nowhere (purged, or sent with
delete_after_send) is an error, exit status 1. The user name is shown, never a
password or token.`,
		Args: usageArgs(1, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			q, err := openQueueEnv(cmd)
			if err != nil {
				return err
			}
			name, err := messageName(args[0])
			if err != nil {
				return err
			}
			_ = q.loadIdentities(false)
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			rs, err := q.clusterRecords(ctxOf(cmd), name)
			if err != nil {
				return err
			}
			for _, r := range rs {
				s := &queueStatus{queueRow: q.recordRow(r)}
				if s.Instance != "" {
					s.Note = "on node " + s.Instance
				}
				if asJSON {
					if err := enc.Encode(s); err != nil {
						return err
					}
					continue
				}
				s.print(out, q.now)
			}
			if len(rs) > 0 && spool.IsID(name) {
				return nil
			}
			found, err := spool.LocateMessage(q.dirs, name)
			if errors.Is(err, spool.ErrMessageNotFound) && len(rs) > 0 {
				return nil // in the cluster, not (or no more) in this node's folders
			}
			if errors.Is(err, spool.ErrMessageNotFound) {
				hint := "purged?"
				if q.cfg.DeleteAfterSend {
					hint = "sent with delete_after_send, or purged?"
				}
				return fmt.Errorf("%s: not found in the queue, Sent or Undeliverable (%s)", name, hint)
			}
			if err != nil {
				return err
			}
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

func (q *queueEnv) status(e spool.Entry) *queueStatus {
	s := &queueStatus{queueRow: q.row(e)}
	env := s.env
	s.RecipientList, s.User, s.Expires = env.rcpts, env.user, env.expires
	if st := s.state; st != nil {
		s.Done, s.History = st.Done, st.History
		if e.Place == spool.PlaceHeld && !st.NextAttempt.IsZero() {
			s.Note = "was deferred until " + st.NextAttempt.UTC().Format(time.RFC3339) + "; release sends it at once"
		}
	}
	if e.Place == spool.PlaceUndeliverable {
		if s.log != nil {
			s.Log = spool.XMLLogPath(e.Path)
			for _, h := range s.log.History {
				t, _ := time.Parse(time.RFC3339, h.At)
				s.History = append(s.History, stages.AttemptNote{At: t, Result: h.Result})
			}
		}
		s.Note = "requeue puts it back in the queue"
	}
	if e.Place == spool.PlaceDeferred && s.Attempts == 0 && !env.notBefore.IsZero() && env.notBefore.After(q.now) {
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
	switch s.State {
	case spool.PlaceQueued:
		head = "queued, waiting for the service to take it"
	case spool.PlaceActive:
		head = "active: being sent, or waiting for its host, by the service instance " + s.Instance
	case spool.PlaceDeferred:
		head = "deferred until " + at(s.NextAttempt)
	case spool.PlaceHeld:
		head = "held (release sends it)"
	case spool.PlaceSent:
		head = "sent: " + s.Path
	case spool.PlaceUndeliverable:
		head = "undeliverable: " + s.Path
	}
	fmt.Fprintf(w, "%s: %s\n", sanitize(s.Name), sanitize(head))
	field := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "  %-12s %s\n", k+":", sanitize(v))
		}
	}
	field("id", s.ID)
	if s.State != spool.PlaceSent && s.State != spool.PlaceUndeliverable {
		field("path", s.Path)
	}
	field("note", s.Note)
	if s.State == spool.PlaceUndeliverable {
		field("failure", s.LastError)
		field("log", s.Log)
	}
	if s.Host != "" || s.Relay != "" {
		h := s.env.hostLabel()
		if s.Port != 0 {
			h = fmt.Sprintf("%s port %d", h, s.Port)
		}
		field("host", h)
	} else if s.State != spool.PlaceSent {
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
	if s.State != spool.PlaceSent {
		field("attempts", strconv.Itoa(s.Attempts))
	}
	if s.State != spool.PlaceUndeliverable {
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
