package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
)

// With a nats section the queue is the cluster's: the queue commands read
// the records every node writes (stream.Record) besides the local
// queue_dir, which then holds only files dropped here and not yet
// published.

// clusterRecords returns the cluster's records of messages whose id or
// name is key, or all of them for "" (none without a nats section).
func (q *queueEnv) clusterRecords(ctx context.Context, key string) ([]stream.Record, error) {
	if q.cfg.NATS == nil {
		return nil, nil
	}
	nc, js, err := pipeline.ConnectNATS(q.cfg.NATS, "")
	if err != nil {
		return nil, cli.OneLine(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	rs, err := stream.Records(ctx, js, q.cfg.NATS.Stream, key)
	if err != nil {
		return nil, cli.OneLine(err)
	}
	return rs, nil
}

// filedCopies are the filed copies (Sent, Undeliverable) that records
// name, by path. A node's own filed copies are both in its folders and in
// its records: list and stats show and count each once, from its folder,
// with the record's id (the folder's copy outlives its record,
// stream.RecordsTTL), and leave out the records of the copies seen.
type filedCopies struct {
	ids  map[string]string // path: id
	seen map[string]bool   // paths found in this node's folders
}

func newFiledCopies(rs []stream.Record) *filedCopies {
	f := &filedCopies{ids: map[string]string{}, seen: map[string]bool{}}
	for _, r := range rs {
		if r.Path != "" && (r.State == spool.PlaceSent || r.State == spool.PlaceUndeliverable) {
			f.ids[filepath.Clean(r.Path)] = r.ID
		}
	}
	return f
}

// local notes a row of this node's folders, giving it its record's id.
func (f *filedCopies) local(row *queueRow) *queueRow {
	p := filepath.Clean(row.Path)
	if id, ok := f.ids[p]; ok {
		f.seen[p] = true
		if row.ID == "" {
			row.ID = id
		}
	}
	return row
}

// shown reports whether a record's copy was shown from this node's folders.
func (f *filedCopies) shown(r stream.Record) bool {
	return r.Path != "" && f.seen[filepath.Clean(r.Path)]
}

// recordRow is a cluster record as list and status show a message.
func (q *queueEnv) recordRow(r stream.Record) *queueRow {
	row := &queueRow{
		ID: r.ID, Name: r.Name, State: r.State, Path: r.Path, Instance: r.Node,
		Host: r.Host, Port: r.Port, Sender: r.Sender, Recipients: r.Recipients, Size: r.Size,
		Queued: r.Queued, Attempts: r.Attempts, NextAttempt: r.NextAttempt, LastError: r.LastError,
	}
	row.env = envelope{known: r.Host != "", host: r.Host, port: r.Port, sender: r.Sender}
	if r.State == spool.PlaceSent || r.State == spool.PlaceUndeliverable {
		row.Filed = r.At
	}
	if !r.Queued.IsZero() {
		row.AgeSeconds = int64(q.now.Sub(r.Queued) / time.Second)
	}
	return row
}

// clusterMove holds, releases or retries the message of the cluster whose
// id enqueue printed. A hold is asked of the nodes: the one that has the
// message queued holds it at once, one that fetches it later (a deferred
// message, when its retry is due) holds it then; a message being sent
// when the hold comes is sent. Release and retry put a held message back
// on the stream, to be sent now; retry sends a deferred one now (see
// stream.RetryDeferred).
func (q *queueEnv) clusterMove(ctx context.Context, out io.Writer, op spool.Op, id string) error {
	nc, js, err := pipeline.ConnectNATS(q.cfg.NATS, "")
	if err != nil {
		return cli.OneLine(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	name := q.cfg.NATS.Stream
	if op == spool.OpHold {
		if err := stream.RequestHold(ctx, js, name, id); err != nil {
			return fmt.Errorf("asking the nodes to hold %s: %w", id, cli.OneLine(err))
		}
		fmt.Fprintf(out, "asked the nodes to hold %s: at once if it is queued, when a node takes it next if it is deferred (one being sent now is sent)\n", id)
		return nil
	}
	err = stream.Release(ctx, js, name, id)
	switch {
	case errors.Is(err, stream.ErrNotHeld) && op == spool.OpRetry:
		if err := stream.RetryDeferred(ctx, js, name, id); err != nil {
			return cli.OneLine(err)
		}
		fmt.Fprintf(out, "%s: sent again now; its deferred copy is dropped when it comes back\n", id)
		return nil
	case errors.Is(err, stream.ErrNotHeld):
		return fmt.Errorf("%s is not held", id)
	case err != nil:
		return cli.OneLine(err)
	}
	fmt.Fprintf(out, "%s: released to the stream: it will be tried now\n", id)
	return nil
}

// clusterRequeue requeues the cluster's undeliverable message whose id or
// name is key: here if this node filed it, else by asking the node that
// did. It reports false if the cluster knows no such message (the local
// folder is then looked at).
func (q *queueEnv) clusterRequeue(ctx context.Context, out io.Writer, key string) (bool, error) {
	if q.cfg.NATS == nil {
		return false, nil
	}
	rs, err := q.clusterRecords(ctx, key)
	if err != nil {
		return true, err
	}
	var found bool
	for _, r := range rs {
		if r.State != spool.PlaceUndeliverable {
			continue
		}
		found = true
		if r.Node == q.cfg.NATS.NodeName() {
			path, err := spool.RequeueMessage(q.dirs, r.Name, q.now)
			if err != nil {
				return true, err
			}
			fmt.Fprintf(out, "requeued %s\n", path)
			continue
		}
		nc, js, err := pipeline.ConnectNATS(q.cfg.NATS, "")
		if err != nil {
			return true, cli.OneLine(err)
		}
		err = stream.RequestRequeue(ctx, js, q.cfg.NATS.Stream, r.ID, r.Node, r.Name)
		nc.Close()
		if err != nil {
			return true, fmt.Errorf("asking node %s to requeue %s: %w", r.Node, r.ID, cli.OneLine(err))
		}
		fmt.Fprintf(out, "asked node %s, which filed it, to requeue %s (%s)\n", r.Node, r.ID, r.Name)
	}
	if !found && spool.IsID(key) && len(rs) > 0 {
		return true, fmt.Errorf("%s is %s, not undeliverable", key, rs[0].State)
	}
	return found, nil
}

// clusterPurge asks every node to purge its own folder as this one did.
func (q *queueEnv) clusterPurge(ctx context.Context, out io.Writer, place spool.Place, before time.Time) error {
	if q.cfg.NATS == nil {
		return nil
	}
	nc, js, err := pipeline.ConnectNATS(q.cfg.NATS, "")
	if err != nil {
		return cli.OneLine(err)
	}
	defer nc.Close()
	if err := stream.RequestPurge(ctx, js, q.cfg.NATS.Stream, place, before); err != nil {
		return fmt.Errorf("asking the other nodes to purge: %w", cli.OneLine(err))
	}
	fmt.Fprintln(out, "asked every node of the cluster to purge its own folder the same way")
	return nil
}

// clusterMoveAll is clusterMove for every message of the cluster (--all),
// or every one for a host (--host), as the records show them: hold takes
// the queued, active and deferred ones, release the held ones, retry the
// held and the deferred ones (a deferred one due within seconds is left
// to its retry).
func (q *queueEnv) clusterMoveAll(ctx context.Context, out io.Writer, op spool.Op, sel selection) error {
	if q.cfg.NATS == nil {
		return nil
	}
	rs, err := q.clusterRecords(ctx, "")
	if err != nil {
		return err
	}
	nc, js, err := pipeline.ConnectNATS(q.cfg.NATS, "")
	if err != nil {
		return cli.OneLine(err)
	}
	defer nc.Close()
	name := q.cfg.NATS.Stream
	var done, failed int
	for _, r := range rs {
		if sel.host != "" && r.Host != sel.host {
			continue
		}
		var err error
		switch {
		case op == spool.OpHold && (r.State == spool.PlaceQueued || r.State == spool.PlaceActive || r.State == spool.PlaceDeferred):
			err = stream.RequestHold(ctx, js, name, r.ID)
		case (op == spool.OpRelease || op == spool.OpRetry) && r.State == spool.PlaceHeld:
			err = stream.Release(ctx, js, name, r.ID)
		case op == spool.OpRetry && r.State == spool.PlaceDeferred:
			err = stream.RetryDeferred(ctx, js, name, r.ID)
		default:
			continue
		}
		if err != nil {
			failed++
			fmt.Fprintf(q.stderr, "smtpq: %s %s: %s\n", op, r.ID, cli.Flatten(err.Error()))
			continue
		}
		done++
	}
	verb := map[spool.Op]string{spool.OpHold: "asked the nodes to hold", spool.OpRelease: "released", spool.OpRetry: "sent again now"}[op]
	fmt.Fprintf(out, "cluster: %s %d messages", verb, done)
	if failed > 0 {
		fmt.Fprintf(out, "; %d could not be (see above)", failed)
	}
	fmt.Fprintln(out)
	return nil
}
