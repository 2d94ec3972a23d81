//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"time"
)

// scaleSuite: the 10,000-message drain as a reference, then a backlog of
// o.scaleN files (1,000,000 by default): time to the first delivery, peak
// RSS, and the throughput over the first o.scaleWindow of draining, compared
// with the reference. Both use smtp-sink (the fake server would keep a
// million messages in memory).
func scaleSuite(ctx context.Context, o *options, rep *report) error {
	keys, err := makeKeys(o.work)
	if err != nil {
		return err
	}
	if !haveSmtpSink() {
		return fmt.Errorf("%s is needed for the scale suite (apt-get install postfix)", smtpSinkPath)
	}
	const refN = 10000
	logf("=== reference: %d messages, cap %d", refN, o.scaleCap)
	ref := smtpqDrain(ctx, o, keys, "smtp-sink", o.scaleCap, refN, false)
	logf("  %s", ref)
	rep.detail("Reference: " + ref.String())
	if ref.err != nil {
		return ref.err
	}

	logf("=== backlog of %d", o.scaleN)
	d, err := newSpoolDirs(o.work, "scale")
	if err != nil {
		return err
	}
	defer func() {
		start := time.Now()
		logf("removing the backlog (%s)", d.root)
		os.RemoveAll(d.root)
		logf("removed in %v", time.Since(start).Round(time.Second))
	}()
	sk, err := startSmtpSink(ctx, d.root, "127.0.0.1")
	if err != nil {
		return err
	}
	defer sk.close()
	start := time.Now()
	if err := fillQueue(ctx, d.queue, keys, []batch{{host: sk.host(), port: sk.port(), n: o.scaleN, size: 4096, tag: "m"}}); err != nil {
		return err
	}
	logf("  queued %d files in %v (written directly, then sync)", o.scaleN, time.Since(start).Round(time.Second))
	svc, err := startService(o, d, keys, svcConfig{maxThreads: o.scaleCap, maxConns: o.scaleCap})
	if err != nil {
		return err
	}
	defer svc.stop(time.Minute)
	t0 := svc.started

	// First delivery: smtp-sink's counter, polled every 10 ms.
	var first time.Duration
	for first == 0 {
		if sk.count() > 0 {
			first = time.Since(t0)
			break
		}
		if !svc.running() {
			return fmt.Errorf("the service exited: %v\n%s", svc.err, tail(svc.log.Name(), 10))
		}
		if time.Since(t0) > 5*time.Minute {
			return fmt.Errorf("no delivery within 5 minutes")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	logf("  first delivery after %v", first.Round(time.Millisecond))

	// Throughput: messages in Sent after the window (or at the end of the
	// backlog, if sooner), from the service's start.
	var sent int
	var at time.Time
	peakRSS := int64(0)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
		if !svc.running() {
			return fmt.Errorf("the service exited: %v\n%s", svc.err, tail(svc.log.Name(), 10))
		}
		sent, at = countNames(d.sent, nil), time.Now()
		if hwm := svc.status("VmHWM"); hwm > peakRSS {
			peakRSS = hwm
		}
		if sent >= o.scaleN || at.Sub(t0) >= o.scaleWindow {
			break
		}
	}
	el := at.Sub(t0)
	thr := float64(sent) / el.Seconds()
	m := svc.scrape()
	cpu := svc.cpu()
	stopDur := svc.stop(time.Minute)
	label := fmt.Sprintf("Backlog of %d files, cap %d", o.scaleN, o.scaleCap)
	rep.add(row{bench: label + ": peak RSS of the service", measured: mb(peakRSS), target: "< 200 MB", result: verdict(peakRSS < 200*1024)})
	rep.add(row{bench: label + ": time to the first delivery", measured: ms(first), target: "≤ 2 s", result: verdict(first <= 2*time.Second)})
	rep.add(row{bench: label + fmt.Sprintf(": throughput over the first %v, vs the %d backlog", el.Round(time.Second), refN),
		measured: rate(thr), baseline: rate(ref.rate()), ratio: ratio(thr, ref.rate()), target: "≥ 0.8x (within 20%)",
		result: verdict(thr >= 0.8*ref.rate())})
	rep.detail(fmt.Sprintf("Backlog of %d: %d in Sent after %v (%.0f msg/s); smtp-sink got %d; CPU %v; %.0f parked, spool at the end: %.0f queued, %.0f active, %.0f deferred; SIGTERM to exit: %v",
		o.scaleN, sent, el.Round(time.Millisecond), thr, sk.count(), cpu.Round(10*time.Millisecond),
		m["result:parked"], m["state:queued"], m["state:active"], m["state:deferred"], stopDur.Round(time.Millisecond)))
	logf("  %d sent in %v: %.0f msg/s (reference %.0f), peak RSS %s", sent, el.Round(time.Second), thr, ref.rate(), mb(peakRSS))
	return nil
}
