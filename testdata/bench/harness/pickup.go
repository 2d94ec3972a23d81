//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

var seqRe = regexp.MustCompile(`(?m)^X-Bench-Seq: (-?\d+)\r?$`)

// percentile returns the nearest-rank p-th percentile of sorted values.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// pickupBench: an idle service; messages enqueued one at a time through
// queuefile.Queue.Enqueue (fsyncs and all, as a producer does); latency from
// Enqueue's return until the fake server has the whole message.
func pickupBench(ctx context.Context, o *options, k *keys, rep *report) error {
	d, err := newSpoolDirs(o.work, "pickup")
	if err != nil {
		return err
	}
	defer os.RemoveAll(d.root)
	sk, err := startFakeSink("127.0.0.1")
	if err != nil {
		return err
	}
	defer sk.close()
	svc, err := startService(o, d, k, svcConfig{})
	if err != nil {
		return err
	}
	defer svc.stop(40 * time.Second)
	if err := svc.waitReady(ctx); err != nil {
		return err
	}
	q := &queuefile.Queue{Dir: d.queue, Recipients: k.recipients}
	params := queuefile.Params{Host: sk.host(), Port: sk.port(), TLS: queuefile.TLSNone, From: envFrom, To: []string{envTo}}
	var enqTotal time.Duration
	enqueue := func(seq int) (time.Time, error) {
		msg := message(4096, fmt.Sprintf("X-Bench-Seq: %d\r\n", seq))
		t := time.Now()
		_, err := q.Enqueue(bytes.NewReader(msg), params)
		done := time.Now()
		enqTotal += done.Sub(t)
		return done, err
	}
	wait := func(n int, timeout time.Duration) error {
		wctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		_, err := sk.srv.WaitMessages(wctx, n)
		return err
	}
	// Warm up: the first message opens the session the others reuse.
	if _, err := enqueue(-1); err != nil {
		return err
	}
	if err := wait(1, 15*time.Second); err != nil {
		return err
	}
	enqTotal = 0
	n := o.pickupN
	sent := make([]time.Time, n)
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * o.pickupGap)); d > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(d):
			}
		}
		if sent[i], err = enqueue(i); err != nil {
			return err
		}
	}
	if err := wait(n+1, 30*time.Second); err != nil {
		return err
	}
	var lat []time.Duration
	for _, m := range sk.srv.Messages() {
		sm := seqRe.FindSubmatch(m.Data)
		if sm == nil {
			continue
		}
		seq, _ := strconv.Atoi(string(sm[1]))
		if seq < 0 || seq >= n {
			continue
		}
		lat = append(lat, m.Received.Sub(sent[seq]))
	}
	if len(lat) != n {
		return fmt.Errorf("matched %d of %d messages", len(lat), n)
	}
	slices.Sort(lat)
	p50, p90, p99 := percentile(lat, 50), percentile(lat, 90), percentile(lat, 99)
	rep.add(row{bench: fmt.Sprintf("Pickup latency, idle service, %d messages %v apart: p50", n, o.pickupGap),
		measured: ms(p50), target: "< 10 ms", result: verdict(p50 < 10*time.Millisecond)})
	rep.add(row{bench: "Pickup latency: p99", measured: ms(p99), target: "< 100 ms", result: verdict(p99 < 100*time.Millisecond)})
	rep.detail(fmt.Sprintf("Pickup latency (from Enqueue's return to the whole message at the server), %d messages: min %s, p50 %s, p90 %s, p99 %s, max %s; Enqueue itself took %s on average (two fsyncs); %d SMTP sessions",
		n, ms(lat[0]), ms(p50), ms(p90), ms(p99), ms(lat[len(lat)-1]), ms(enqTotal/time.Duration(n)), sk.srv.Sessions()))
	logf("  pickup: p50 %s p90 %s p99 %s max %s", ms(p50), ms(p90), ms(p99), ms(lat[len(lat)-1]))
	return nil
}
