package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// smtpq queue hold, release, retry: the command and what it prints.

// selection is NAME, --all or --host H: exactly one.
type selection struct {
	name string
	all  bool
	host string
}

func parseSelection(cmd *cobra.Command, op spool.Op, args []string, all bool, host string, withHost bool) (selection, error) {
	s := selection{all: all, host: stages.HostKey(host)}
	if withHost && cmd.Flags().Changed("host") && s.host == "" {
		return s, cli.Usagef("--host: empty host name")
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
		return s, cli.Usagef("queue %s: give %s", op, what)
	case n > 1:
		return s, cli.Usagef("queue %s: give only one of %s", op, what)
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

var moveDocs = map[spool.Op][2]string{
	spool.OpHold: {"Set messages aside: held mail is not sent until released",
		`Move queued and deferred messages to queue_dir/.hold/, where the service never
takes them; their delivery state (attempts, last error) is kept. A message being
sent right now (active) cannot be held: for one NAME that is an error (exit
status 1); with --all or --host such messages are counted as skipped. Holding a
message that is already held does nothing. --host selects by SMTP host and
needs the service's private key.`},
	spool.OpRelease: {"Send held messages: back to the queue, now",
		`Move held messages back to queue_dir: they are sent at once, whatever next
attempt they had before they were held (their attempt count is kept).`},
	spool.OpRetry: {"Try deferred messages now, and lift the pause of their hosts in the running service",
		`Move deferred messages to queue_dir so that they are tried now (attempt counts
are unchanged), and ask the running service (through queue_dir/.control/) to
lift the pause of the host (--host H or the message's host; every host with
--all), so that mail it holds waiting for a paused host is tried now too.
Messages scheduled with --not-before stay deferred until their time. Held
messages are not retried: release them.`},
}

func newQueueMoveCmd(op spool.Op) *cobra.Command {
	var all bool
	var host string
	cmd := &cobra.Command{
		Use:   string(op) + " NAME|--all|--host H",
		Short: moveDocs[op][0],
		Long:  moveDocs[op][1],
		Args:  usageArgs(0, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if id, err := messageName(strings.Join(args, "")); len(args) == 1 && err == nil && spool.IsID(id) {
				q, err := openQueueEnv(cmd)
				if err != nil {
					return err
				}
				if q.cfg.NATS != nil {
					return q.clusterMove(ctxOf(cmd), cmd.OutOrStdout(), op, id)
				}
			}
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
			case op == spool.OpRetry && sel.name != "":
				// For the host whose pause to lift; moveOne says if it
				// cannot be read.
				q.ids, q.idErr = queuefile.LoadIdentities(q.cfg.IdentityFile...)
			case op == spool.OpRetry:
				// To leave scheduled (not-before) messages alone.
				_ = q.loadIdentities(false)
			}
			out := cmd.OutOrStdout()
			if sel.name != "" {
				return q.moveOne(out, op, sel.name)
			}
			if err := q.moveAll(ctxOf(cmd), out, op, sel); err != nil {
				return err
			}
			return q.clusterMoveAll(ctxOf(cmd), out, op, sel)
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

func describe(e spool.Entry) string {
	switch e.Place {
	case spool.PlaceDeferred:
		return "deferred until " + e.Due.UTC().Format(time.RFC3339)
	case spool.PlaceActive:
		return "active (instance " + e.Instance + ")"
	}
	return string(e.Place)
}

func (q *queueEnv) moveOne(out io.Writer, op spool.Op, name string) error {
	var pe *spool.PlaceError
	switch op {
	case spool.OpHold:
		from, err := spool.HoldMessage(q.dirs, name)
		if errors.As(err, &pe) && pe.Entry.Place == spool.PlaceHeld {
			fmt.Fprintf(out, "%s is already held\n", name)
			return nil
		}
		if errors.As(err, &pe) && pe.Entry.Place == spool.PlaceActive {
			// The service has it: ask it to set the message aside unless
			// its delivery is already under way.
			if cerr := spool.WriteControl(q.dirs.Queue, spool.Control{Op: stages.OpHold, Name: name}); cerr != nil {
				return fmt.Errorf("asking the service to hold %s: %w", name, cerr)
			}
			fmt.Fprintf(out, "%s is with the running service: asked it to hold the message unless it is being sent right now (smtpq queue status %s tells)\n", name, name)
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "held %s (it was %s)\n", name, describe(from))
	case spool.OpRelease:
		if _, err := spool.ReleaseMessage(q.dirs, name); err != nil {
			return err
		}
		fmt.Fprintf(out, "released %s: it is in the queue and will be sent now\n", name)
	case spool.OpRetry:
		found, err := spool.LocateMessage(q.dirs, name)
		if err != nil {
			return err
		}
		env := q.envelopeOf(found[0])
		if found[0].Place == spool.PlaceDeferred && env.notBefore.After(q.now) {
			return fmt.Errorf("%s is scheduled for %s (--not-before): retry does not send it earlier", name, env.notBefore.UTC().Format(time.RFC3339))
		}
		from, err := spool.RetryMessage(q.dirs, name)
		switch {
		case err == nil:
			fmt.Fprintf(out, "%s: moved from %s to the queue: it will be tried now\n", name, describe(from))
		case errors.As(err, &pe) && pe.Entry.Place == spool.PlaceQueued:
			fmt.Fprintf(out, "%s is in the queue already\n", name)
		case errors.As(err, &pe) && pe.Entry.Place == spool.PlaceActive:
			fmt.Fprintf(out, "%s is with the running service (instance %s): being sent or waiting for its host\n", name, pe.Entry.Instance)
		default:
			return err
		}
		if env.host == "" {
			fmt.Fprintf(q.stderr, "smtpq: warning: cannot read the host of %s (%s): no host pause lifted; use retry --host H\n", name, cli.Flatten(fmt.Sprint(env.err)))
			return nil
		}
		if err := spool.WriteControl(q.dirs.Queue, spool.Control{Op: stages.OpRetry, Host: env.host}); err != nil {
			return fmt.Errorf("asking the service to lift the pause of %s: %w", env.host, err)
		}
		fmt.Fprintf(out, "asked the running service to lift any pause of %s\n", env.host)
	}
	return nil
}

func (q *queueEnv) moveAll(ctx context.Context, out io.Writer, op spool.Op, sel selection) error {
	var scheduled int
	match := func(e spool.Entry) bool {
		if sel.host == "" && op != spool.OpRetry {
			return true
		}
		env := q.envelopeOf(e)
		if sel.host != "" && env.host != sel.host {
			return false
		}
		if op == spool.OpRetry && env.notBefore.After(q.now) {
			scheduled++
			return false
		}
		return true
	}
	var r spool.MoveResult
	var err error
	switch op {
	case spool.OpHold:
		r, err = spool.HoldAll(ctx, q.dirs, match)
	case spool.OpRelease:
		r, err = spool.ReleaseAll(ctx, q.dirs, match)
	case spool.OpRetry:
		r, err = spool.RetryAll(ctx, q.dirs, match)
	}
	what := "messages"
	if sel.host != "" {
		what = "messages for " + sel.host
	}
	switch op {
	case spool.OpHold:
		fmt.Fprintf(out, "held %d %s", r.Moved, what)
		if r.Active > 0 {
			c := spool.Control{Op: stages.OpHold, Host: sel.host, All: sel.host == ""}
			if cerr := spool.WriteControl(q.dirs.Queue, c); cerr != nil {
				return fmt.Errorf("asking the service to hold the messages it has: %w", cerr)
			}
			fmt.Fprintf(out, "; %d are with the running service: asked it to hold those not being sent right now", r.Active)
		}
	case spool.OpRelease:
		fmt.Fprintf(out, "released %d %s to the queue", r.Moved, what)
	case spool.OpRetry:
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
	if op == spool.OpRetry {
		c := spool.Control{Op: stages.OpRetry, Host: sel.host, All: sel.all}
		if err := spool.WriteControl(q.dirs.Queue, c); err != nil {
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
