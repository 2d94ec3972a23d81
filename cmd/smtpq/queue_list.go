package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// smtpq queue list: the command and what it prints.

// parseStates reads --state: a comma-separated list of states, or "all".
func parseStates(s string) ([]spool.Place, error) {
	if s == "" {
		return spool.QueuePlaces, nil
	}
	if strings.EqualFold(strings.TrimSpace(s), "all") {
		return spool.Places, nil
	}
	var out []spool.Place
	for _, part := range strings.Split(s, ",") {
		p, err := spool.ParsePlace(part)
		if err != nil {
			return nil, cli.Usagef("--state: %v", err)
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
		Long: `List messages, one line each: name, id (what the other queue commands take
when several messages share a name; "-" for a file not yet claimed and for filed
copies), state, SMTP host (with the relay profile in
parentheses), envelope sender, number of recipients, size, age since enqueueing,
delivery attempts, next attempt, last error. Without --state: every message not
yet filed (queued, active, deferred, held); --state takes one or more of
queued, active, deferred, held, undeliverable, sent (comma-separated), or all.
--host shows only the messages for that SMTP host. --json prints one JSON object
per line instead.

Folders are read as they go, not sorted, so a queue of any size lists in bounded
memory. With a nats section, the cluster's messages follow, from the records
every node keeps (the node that holds or filed one is its instance); a copy
this node filed is listed once, from its folder, with its id. No password or
token is ever shown, nor recipient addresses or user names (see "queue
status" for one message). Sent copies keep no envelope: their
host, sender and recipients show as "-".`,
		Args: usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			places, err := parseStates(state)
			if err != nil {
				return err
			}
			if cmd.Flags().Changed("host") && stages.HostKey(host) == "" {
				return cli.Usagef("--host: empty host name")
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
				fmt.Fprintf(out, listFormat, "NAME", "ID", "STATE", "HOST", "SENDER", "RCPTS", "SIZE", "AGE", "TRIES", "NEXT", "LAST-ERROR")
			}
			want := stages.HostKey(host)
			show := func(r *queueRow) error {
				if want != "" && r.Host != want {
					return nil
				}
				if asJSON {
					return enc.Encode(r)
				}
				_, err := fmt.Fprint(out, r.line(q.now))
				return err
			}
			// The records first, for the ids of this node's filed
			// copies; its folders are listed even if the cluster cannot
			// be read.
			rs, rerr := q.clusterRecords(ctxOf(cmd), "")
			filed := newFiledCopies(rs)
			err = spool.Walk(ctxOf(cmd), q.dirs, places, func(e spool.Entry) error { return show(filed.local(q.row(e))) })
			if err != nil {
				return err
			}
			if rerr != nil {
				return rerr
			}
			for _, r := range rs {
				if slices.Contains(places, r.State) && !filed.shown(r) {
					if err := show(q.recordRow(r)); err != nil {
						return err
					}
				}
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&state, "state", "", "queued, active, deferred, held, undeliverable, sent (comma-separated), or all")
	fl.StringVar(&host, "host", "", "only messages for this SMTP host")
	fl.BoolVar(&asJSON, "json", false, "one JSON object per line")
	return cmd
}

const listFormat = "%-51s %-16s %-13s %-24s %-28s %5s %9s %6s %5s %7s %s\n"

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
	if r.State != spool.PlaceSent {
		tries = strconv.Itoa(r.Attempts)
	}
	nextAt := r.NextAttempt
	if nextAt.IsZero() && r.State == spool.PlaceQueued && r.NotBefore.After(now) {
		nextAt = r.NotBefore // scheduled: the service will park it until then
	}
	if !nextAt.IsZero() {
		if d := nextAt.Sub(now); d > 0 {
			next = "+" + fmtAge(d)
		} else {
			next = "due"
		}
	}
	return fmt.Sprintf(listFormat, sanitizeField(r.Name), dash(r.ID), r.State, sanitizeField(host), sanitizeField(sender), rcpts,
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
