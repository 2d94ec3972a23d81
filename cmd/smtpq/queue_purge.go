package main

import (
	"fmt"

	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
)

// smtpq queue purge: the command and what it prints.

func newQueuePurgeCmd() *cobra.Command {
	var state, olderThan string
	cmd := &cobra.Command{
		Use:   "purge --state sent|undeliverable --older-than DURATION",
		Short: "Remove messages filed in Sent or Undeliverable longer ago than DURATION",
		Long: `Remove the messages filed in sent_dir or undeliverable_dir (with their XML logs)
longer ago than DURATION (90m, 36h, 30d), by the time they were filed (the file's
modification time; in Undeliverable, its XML log's). History logs kept by requeue
go by their own time. Prints how many were removed. Nothing else is ever purged.
With a nats section, every node of the cluster is asked to purge its own
folder the same way (a node that is down does it within a day of starting).`,
		Args: usageArgs(0, 0),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state == "" || olderThan == "" {
				return cli.Usagef("queue purge: give --state sent|undeliverable and --older-than DURATION")
			}
			p, err := spool.ParsePlace(state)
			if err != nil {
				return cli.Usagef("--state: %v", err)
			}
			if p != spool.PlaceSent && p != spool.PlaceUndeliverable {
				return cli.Usagef("--state %s: purge removes only sent or undeliverable messages", p)
			}
			d, err := parseDuration(olderThan)
			if err != nil {
				return cli.Usagef("--older-than: %s is not a duration (90m, 36h, 30d)", cli.QuoteIfNeeded(olderThan))
			}
			if d < 0 {
				return cli.Usagef("--older-than: negative duration %s", olderThan)
			}
			q, err := openQueueEnv(cmd)
			if err != nil {
				return err
			}
			r, err := spool.Purge(ctxOf(cmd), q.dirs, p, q.now.Add(-d))
			out := cmd.OutOrStdout()
			if p == spool.PlaceSent {
				fmt.Fprintf(out, "purged %d messages from %s\n", r.Messages, q.dirs.Sent)
			} else {
				fmt.Fprintf(out, "purged %d messages and %d XML logs from %s\n", r.Messages, r.Logs, q.dirs.Undeliverable)
			}
			if err != nil {
				return err
			}
			return q.clusterPurge(ctxOf(cmd), out, p, q.now.Add(-d))
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "sent or undeliverable")
	cmd.Flags().StringVar(&olderThan, "older-than", "", "filed longer ago than this (90m, 36h, 30d)")
	return cmd
}
