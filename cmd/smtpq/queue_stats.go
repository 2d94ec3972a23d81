package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/spf13/cobra"
)

// smtpq queue stats: the command and what it prints.

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
	States map[spool.Place]*statCount            `json:"states"`
	Hosts  map[string]map[spool.Place]*statCount `json:"hosts"`
}

func newQueueStatsCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats [--json]",
		Short: "Count the messages per state and per SMTP host, with the oldest of each",
		Long: `Count the messages in each state, and per SMTP host (queued, active, deferred,
held and undeliverable: Sent copies keep no host), with the age of the oldest
(since enqueueing). Messages whose seal cannot be opened count under host "-".
With a nats section, the cluster's messages count too, from the records every
node keeps; a copy this node filed counts once.`,
		Args: usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			q, err := openQueueEnv(cmd)
			if err != nil {
				return err
			}
			_ = q.loadIdentities(false)
			st := queueStats{States: map[spool.Place]*statCount{}, Hosts: map[string]map[spool.Place]*statCount{}}
			for _, p := range spool.Places {
				st.States[p] = &statCount{}
			}
			count := func(place spool.Place, r *queueRow) {
				st.States[place].add(r.Queued, q.now)
				if place == spool.PlaceSent {
					return
				}
				h := r.Host
				if h == "" {
					h = "-"
				}
				if st.Hosts[h] == nil {
					st.Hosts[h] = map[spool.Place]*statCount{}
				}
				c := st.Hosts[h][place]
				if c == nil {
					c = &statCount{}
					st.Hosts[h][place] = c
				}
				c.add(r.Queued, q.now)
			}
			rs, rerr := q.clusterRecords(ctxOf(cmd), "")
			filed := newFiledCopies(rs)
			err = spool.Walk(ctxOf(cmd), q.dirs, spool.Places, func(e spool.Entry) error {
				if e.Place == spool.PlaceSent {
					filed.local(&queueRow{Path: e.Path})
					t, _ := spool.QueuedTime(e.Name)
					st.States[e.Place].add(t, q.now)
					return nil
				}
				count(e.Place, filed.local(q.row(e)))
				return nil
			})
			if err != nil {
				return err
			}
			if rerr != nil {
				return rerr
			}
			for _, r := range rs {
				if p := r.State; st.States[p] != nil && !filed.shown(r) {
					count(p, q.recordRow(r))
				}
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
	for _, p := range spool.Places {
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
	cols := []spool.Place{spool.PlaceQueued, spool.PlaceActive, spool.PlaceDeferred, spool.PlaceHeld, spool.PlaceUndeliverable}
	fmt.Fprintf(w, "\n%-32s %8s %8s %8s %8s %8s %8s\n", "HOST", "QUEUED", "ACTIVE", "DEFERRED", "HELD", "UNDELIV", "OLDEST")
	for _, h := range hosts {
		fmt.Fprintf(w, "%-32s", h)
		var old *statCount
		for _, p := range cols {
			c := st.Hosts[h][p]
			n := 0
			if c != nil {
				n = c.Count
				if p != spool.PlaceUndeliverable && !c.Oldest.IsZero() && (old == nil || c.Oldest.Before(old.Oldest)) {
					old = c
				}
			}
			fmt.Fprintf(w, " %8d", n)
		}
		fmt.Fprintf(w, " %8s\n", oldest(old))
	}
}
