//go:build linux

package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// slowResult is one run of the slow-host benchmark.
type slowResult struct {
	slowN    int
	fastGot  int
	dur      time.Duration // until the fast host's last message was in Sent
	timedOut bool
	peakKB   int64
	parked   float64
	slowSent float64
	stopDur  time.Duration
	err      error
}

func (r slowResult) rate(fastN int) float64 {
	if r.err != nil || r.dur <= 0 {
		return 0
	}
	return float64(r.fastGot) / r.dur.Seconds()
}

// slowRun queues slowN messages for 127.0.0.2 (rate 1/s) and fastN for
// 127.0.0.3, and waits until the fast ones are all in Sent.
func slowRun(ctx context.Context, o *options, k *keys, slowN int) (r slowResult) {
	r.slowN = slowN
	d, err := newSpoolDirs(o.work, fmt.Sprintf("slow-%d", slowN))
	if err != nil {
		r.err = err
		return r
	}
	defer os.RemoveAll(d.root)
	slow, err := startFakeSink("127.0.0.2")
	if err != nil {
		r.err = err
		return r
	}
	defer slow.close()
	fast, err := startFakeSink("127.0.0.3")
	if err != nil {
		r.err = err
		return r
	}
	defer fast.close()
	var batches []batch
	if slowN > 0 {
		batches = append(batches, batch{host: slow.host(), port: slow.port(), n: slowN, size: 4096, tag: "s"})
	}
	batches = append(batches, batch{host: fast.host(), port: fast.port(), n: o.fastN, size: 4096, tag: "f"})
	start := time.Now()
	if err := fillQueue(ctx, d.queue, k, batches); err != nil {
		r.err = err
		return r
	}
	logf("  queued %d + %d messages in %v", slowN, o.fastN, time.Since(start).Round(time.Millisecond))
	svc, err := startService(o, d, k, svcConfig{maxThreads: 8, maxConns: 4,
		hostsExtra: "  \"127.0.0.2\":\n    rate: 1\n"})
	if err != nil {
		r.err = err
		return r
	}
	defer svc.stop(time.Minute)
	isFast := func(name string) bool { return strings.Contains(name, "-f") }
	r.fastGot, err = waitFiles(ctx, svc.proc, d, isFast, o.fastN, 100*time.Millisecond, o.slowTimeout)
	switch {
	case errors.Is(err, errTimedOut):
		r.timedOut = true
		r.dur = time.Since(svc.started)
	case err != nil:
		r.err = err
		return r
	default:
		r.dur = lastChange(d.sent, isFast).Sub(svc.started)
	}
	r.peakKB = svc.status("VmHWM")
	m := svc.scrape()
	r.parked = m["result:parked"]
	r.slowSent = m["result:sent:"+slow.host()]
	r.stopDur = svc.stop(time.Minute)
	return r
}

// slowBench runs the slow-host benchmark SLOW_REPEAT times, each round
// without and then with the backlog, and reports the round with the median
// ratio: the fast host's 1,000 messages take under half a second, so one
// round's ratio swings with the machine's noise.
func slowBench(ctx context.Context, o *options, k *keys, rep *report) error {
	type round struct{ a, b slowResult }
	var rounds []round
	for i := range max(1, o.slowRepeat) {
		a := slowRun(ctx, o, k, 0)
		if a.err != nil {
			return fmt.Errorf("without backlog: %w", a.err)
		}
		logf("  round %d without backlog: %d fast in %v (%.0f msg/s), peak RSS %s", i+1, a.fastGot, a.dur.Round(time.Millisecond), a.rate(o.fastN), mb(a.peakKB))
		b := slowRun(ctx, o, k, o.slowN)
		if b.err != nil {
			return fmt.Errorf("with backlog: %w", b.err)
		}
		logf("  round %d with %d for the slow host: %d fast in %v (%.0f msg/s), peak RSS %s, %.0f parked", i+1, o.slowN, b.fastGot, b.dur.Round(time.Millisecond), b.rate(o.fastN), mb(b.peakKB), b.parked)
		rounds = append(rounds, round{a, b})
	}
	ratioOf := func(r round) float64 {
		if r.a.rate(o.fastN) == 0 {
			return 0
		}
		return r.b.rate(o.fastN) / r.a.rate(o.fastN)
	}
	ratios := make([]string, len(rounds))
	for i, r := range rounds {
		ratios[i] = fmt.Sprintf("%.2fx", ratioOf(r))
	}
	slices.SortFunc(rounds, func(x, y round) int { return cmp.Compare(ratioOf(x), ratioOf(y)) })
	a, b := rounds[(len(rounds)-1)/2].a, rounds[(len(rounds)-1)/2].b
	rep.detail(fmt.Sprintf("Slow host: the ratio in each of %d rounds: %s (the median round is reported)", len(rounds), strings.Join(ratios, ", ")))
	label := fmt.Sprintf("Slow host: %d for a host at 1 msg/s and %d for another", o.slowN, o.fastN)
	measured := rate(b.rate(o.fastN))
	if b.timedOut {
		measured = fmt.Sprintf("%d of %d after %v (%s)", b.fastGot, o.fastN, o.slowTimeout, rate(b.rate(o.fastN)))
	}
	rep.add(row{bench: label + ": the other host's rate, vs the same without the backlog", measured: measured,
		baseline: rate(a.rate(o.fastN)), ratio: ratio(b.rate(o.fastN), a.rate(o.fastN)), target: "≥ 0.8x",
		result: verdict(!b.timedOut && b.rate(o.fastN) >= 0.8*a.rate(o.fastN))})
	rep.add(row{bench: label + ": peak RSS", measured: mb(b.peakKB), baseline: mb(a.peakKB) + " without the backlog",
		ratio: ratio(float64(b.peakKB), float64(a.peakKB)), target: "bounded (< 200 MB)", result: verdict(b.peakKB > 0 && b.peakKB < 200*1024)})
	for _, x := range []slowResult{a, b} {
		s := fmt.Sprintf("Slow host, %d queued for the slow host: the other host's %d of %d in %v", x.slowN, x.fastGot, o.fastN, x.dur.Round(time.Millisecond))
		if x.timedOut {
			s += " (timed out)"
		}
		rep.detail(s + fmt.Sprintf("; peak RSS %s; %.0f parked (moved to .deferred/ for lack of room); %.0f sent to the slow host; SIGTERM to exit: %v",
			mb(x.peakKB), x.parked, x.slowSent, x.stopDur.Round(time.Millisecond)))
	}
	return nil
}
