package main

import (
	"context"
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

// recordRow is a cluster record as list and status show a message.
func (q *queueEnv) recordRow(r stream.Record) *queueRow {
	row := &queueRow{
		ID: r.ID, Name: r.Name, State: r.State, Path: r.Path, Instance: r.Node,
		Host: r.Host, Port: r.Port, Sender: r.Sender, Recipients: r.Recipients, Size: r.Size,
		Queued: r.Queued, Attempts: r.Attempts, NextAttempt: r.NextAttempt, LastError: r.LastError,
	}
	row.env = envelope{known: r.Host != "", host: r.Host, port: r.Port, sender: r.Sender}
	if r.State == string(spool.PlaceSent) || r.State == string(spool.PlaceUndeliverable) {
		row.Filed = r.At
	}
	if !r.Queued.IsZero() {
		row.AgeSeconds = int64(q.now.Sub(r.Queued) / time.Second)
	}
	return row
}
