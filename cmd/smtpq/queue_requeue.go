package main

import (
	"fmt"
	"strings"

	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/spf13/cobra"
)

// smtpq queue requeue: the command and what it prints.

func newQueueRequeueCmd() *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "requeue NAME|--all",
		Short: "Put undeliverable messages back in the queue, as new",
		Long: `Move undeliverable messages back to queue_dir, as new: no attempts, no state.
Each one's XML log stays in undeliverable_dir as history, renamed
<name>.<UTC time>.xml, so that a new failure can write a new <name>.xml. A
message of the same name still in the queue is never overwritten: it is
refused. With a nats section, NAME may be the id enqueue printed, and a
message another node filed as undeliverable is requeued by that node, asked
through the cluster (--all acts on this node's folder only).`,
		Args: usageArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 1 {
				q, err := openQueueEnv(cmd)
				if err != nil {
					return err
				}
				if done, err := q.clusterRequeue(ctxOf(cmd), cmd.OutOrStdout(), strings.TrimSpace(args[0])); done || err != nil {
					return err
				}
			}
			sel, err := parseSelection(cmd, spool.OpRequeue, args, all, "", false)
			if err != nil {
				return err
			}
			q, err := openQueueEnv(cmd)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if sel.name != "" {
				path, err := spool.RequeueMessage(q.dirs, sel.name, q.now)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "requeued %s\n", path)
				return nil
			}
			r, err := spool.RequeueAll(ctxOf(cmd), q.dirs, q.now, nil)
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
