//go:build linux

package main

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"time"

	"github.com/smtpq/smtpq/pipeline/spool"
)

// drainResult is one drain of n messages.
type drainResult struct {
	what    string
	n       int
	dur     time.Duration // from the process start until the last message is in Sent (or the client exited)
	cpu     time.Duration // user + system CPU of the process, while draining
	peakKB  int64         // peak RSS
	sinkGot int
	parked  float64 // messages the service parked (sent back to .deferred/ for lack of room), from its metrics
	err     error
}

func (r drainResult) rate() float64 {
	if r.err != nil || r.dur <= 0 {
		return 0
	}
	return float64(r.n) / r.dur.Seconds()
}

func (r drainResult) String() string {
	if r.err != nil {
		return fmt.Sprintf("%s: failed: %v", r.what, r.err)
	}
	s := fmt.Sprintf("%s: %d in %v = **%.0f msg/s**", r.what, r.n, r.dur.Round(time.Millisecond), r.rate())
	if r.cpu > 0 {
		s += fmt.Sprintf("; CPU %v (%.0f µs/msg, %.0f%% of one core)", r.cpu.Round(10*time.Millisecond),
			float64(r.cpu.Microseconds())/float64(r.n), 100*r.cpu.Seconds()/r.dur.Seconds())
	}
	if r.peakKB > 0 {
		s += "; peak RSS " + mb(r.peakKB)
	}
	s += fmt.Sprintf("; sink got %d", r.sinkGot)
	if r.parked > 0 {
		s += fmt.Sprintf("; %.0f parked", r.parked)
	}
	return s
}

// median returns the run with the median rate (the lower one of the middle
// two); a failed run counts as the slowest.
func median(rs []drainResult) drainResult {
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b drainResult) int { return cmp.Compare(a.rate(), b.rate()) })
	return sorted[(len(sorted)-1)/2]
}

func drainTimeout(n int) time.Duration { return time.Minute + time.Duration(n)*10*time.Millisecond }

// smtpqDrain queues n messages for a fresh sink, starts the service and
// waits until all n are in Sent.
//
// With noSentCopy (delete_after_send, as Postfix keeps no copy either) it
// waits instead until the sink has n messages and the queue and the active
// folder are empty, polling every 50 ms.
func smtpqDrain(ctx context.Context, o *options, k *keys, sinkKind string, conns, n int, noSentCopy bool) drainResult {
	res := drainResult{what: fmt.Sprintf("smtpq, cap %d, %s", conns, sinkKind), n: n}
	if noSentCopy {
		res.what += ", delete_after_send"
	}
	d, sk, cleanup, err := drainSetup(ctx, o, k, fmt.Sprintf("drain-smtpq-%s-%d-%v", sinkKind, conns, noSentCopy), sinkKind, n)
	if err != nil {
		res.err = err
		return res
	}
	defer cleanup()
	svc, err := startService(o, d, k, svcConfig{maxThreads: conns, maxConns: conns, noSentCopy: noSentCopy})
	if err != nil {
		res.err = err
		return res
	}
	defer svc.stop(40 * time.Second)
	if noSentCopy {
		end, err := waitDrained(ctx, svc.proc, d, sk, n, drainTimeout(n))
		if err != nil {
			res.err = err
			return res
		}
		res.dur = end.Sub(svc.started)
	} else {
		if _, err := waitFiles(ctx, svc.proc, d, nil, n, 100*time.Millisecond, drainTimeout(n)); err != nil {
			res.err = err
			return res
		}
		res.dur = lastChange(d.sent, nil).Sub(svc.started)
	}
	res.cpu = svc.cpu()
	res.peakKB = svc.status("VmHWM")
	res.parked = svc.scrape()["result:parked"]
	svc.stop(40 * time.Second)
	res.sinkGot = sk.count()
	return res
}

// waitDrained waits until the sink has n messages and no queue file is left
// in the queue folder or an active folder; it returns when it saw that.
func waitDrained(ctx context.Context, svc *proc, d spoolDirs, sk sink, n int, timeout time.Duration) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	for {
		if sk.count() >= n {
			left := countNames(d.queue, nil)
			spool.EachName(filepath.Join(d.queue, ".active"), func(inst string) {
				left += countNames(filepath.Join(d.queue, ".active", inst), nil)
			})
			if left == 0 {
				return time.Now(), nil
			}
		}
		if u := countNames(d.undeliverable, nil); u > 0 {
			return time.Time{}, fmt.Errorf("%d messages went to undeliverable (see %s)", u, d.undeliverable)
		}
		if !svc.running() {
			return time.Time{}, fmt.Errorf("the service exited: %v\n%s", svc.err, tail(svc.log.Name(), 10))
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("%w after %v: the sink has %d of %d", errTimedOut, timeout, sk.count(), n)
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// drainSetup makes a run's folders and sink and queues n messages for it
// (none if n is 0); cleanup stops the sink and removes the folders.
func drainSetup(ctx context.Context, o *options, k *keys, name, sinkKind string, n int) (spoolDirs, sink, func(), error) {
	d, err := newSpoolDirs(o.work, name)
	if err != nil {
		return d, nil, nil, err
	}
	sk, err := startSink(ctx, sinkKind, d.root, "127.0.0.1")
	if err != nil {
		os.RemoveAll(d.root)
		return d, nil, nil, err
	}
	cleanup := func() { sk.close(); os.RemoveAll(d.root) }
	if n > 0 {
		if err := fillQueue(ctx, d.queue, k, []batch{{host: sk.host(), port: sk.port(), n: n, size: 4096, tag: "m"}}); err != nil {
			cleanup()
			return d, nil, nil, err
		}
	}
	return d, sk, cleanup, nil
}

// baselineDrain runs the bare client: mode "file" on a queue of n files,
// or "memory" with n sends of one message.
func baselineDrain(ctx context.Context, o *options, k *keys, bin, sinkKind string, conns, n int, mode string) drainResult {
	res := drainResult{what: fmt.Sprintf("bare client (%s), cap %d, %s", mode, conns, sinkKind), n: n}
	queued := n
	if mode != "file" {
		queued = 0 // "memory" sends one message n times
	}
	d, sk, cleanup, err := drainSetup(ctx, o, k, fmt.Sprintf("drain-baseline-%s-%s-%d", mode, sinkKind, conns), sinkKind, queued)
	if err != nil {
		res.err = err
		return res
	}
	defer cleanup()
	log := filepath.Join(d.root, "baseline.log")
	p, err := startProc("baseline", log, bin, "-mode", mode, "-queue", d.queue, "-sent", d.sent,
		"-addr", net.JoinHostPort(sk.host(), strconv.Itoa(sk.port())), "-conns", strconv.Itoa(conns),
		"-n", strconv.Itoa(n), "-from", envFrom, "-to", envTo)
	if err != nil {
		res.err = err
		return res
	}
	defer p.stop(5 * time.Second)
	select {
	case <-p.done:
	case <-ctx.Done():
		res.err = ctx.Err()
		return res
	case <-time.After(drainTimeout(n)):
		res.err = fmt.Errorf("timed out after %v", drainTimeout(n))
		return res
	}
	if p.err != nil {
		res.err = fmt.Errorf("%v: %s", p.err, tail(log, 5))
		return res
	}
	res.dur = p.exited.Sub(p.started)
	res.cpu = p.cpu()
	if m := peakRe.FindStringSubmatch(tail(log, 5)); m != nil {
		res.peakKB, _ = strconv.ParseInt(m[1], 10, 64)
	}
	res.sinkGot = sk.count()
	return res
}

var peakRe = regexp.MustCompile(`peak_rss_kb=(\d+)`)

// buildBaseline compiles the bare client once, so that no compilation runs
// during a measurement.
func buildBaseline(ctx context.Context, o *options) (string, error) {
	bin := filepath.Join(o.out, "bin", "baseline")
	_, err := runCmd(ctx, 5*time.Minute, "go", "build", "-o", bin, "./testdata/bench/baseline")
	return bin, err
}

// postfixReference is the figure, used when Postfix cannot be run.
const postfixReference = 250.0

func drainBench(ctx context.Context, o *options, k *keys, rep *report) error {
	var pf drainResult
	pfMeasured := false
	if o.want("postfix") {
		if why := postfixUnavailable(o); why != "" {
			rep.note("Postfix reference not measured: " + why + fmt.Sprintf("; the table uses the issue's reference figure of about %.0f msg/s.", postfixReference))
		} else {
			logf("postfix reference: relaying %d messages to smtp-sink at destination concurrency 2", o.n)
			pf = postfixDrain(ctx, o, o.n)
			logf("  %s", pf)
			rep.detail(pf.String())
			if pf.err == nil {
				pfMeasured = true
			} else {
				rep.note(fmt.Sprintf("Postfix reference failed (%v); the table uses the issue's reference figure of about %.0f msg/s.", pf.err, postfixReference))
			}
		}
	}
	if !o.want("drain") {
		return ctx.Err()
	}
	bin, err := buildBaseline(ctx, o)
	if err != nil {
		return err
	}
	sinks := []string{"smtptest"}
	if haveSmtpSink() {
		sinks = append(sinks, "smtp-sink")
	} else {
		rep.note("smtp-sink is not installed (apt-get install postfix): drains against it were skipped.")
	}
	for _, sinkKind := range sinks {
		for _, conns := range []int{2, 8} {
			// Each round runs smtpq and the two clients one after the
			// other; with BENCH_REPEAT > 1 the median round of each counts.
			var rs [3][]drainResult
			for range max(o.repeat, 1) {
				for i, run := range []func() drainResult{
					func() drainResult { return smtpqDrain(ctx, o, k, sinkKind, conns, o.n, false) },
					func() drainResult { return baselineDrain(ctx, o, k, bin, sinkKind, conns, o.n, "file") },
					func() drainResult { return baselineDrain(ctx, o, k, bin, sinkKind, conns, o.n, "memory") },
				} {
					if err := ctx.Err(); err != nil {
						return err
					}
					r := run()
					logf("  %s", r)
					rep.detail(r.String())
					rs[i] = append(rs[i], r)
				}
			}
			s, f, m := median(rs[0]), median(rs[1]), median(rs[2])
			label := fmt.Sprintf("Drain %d × 4 KiB, cap %d, %s", o.n, conns, sinkKind)
			measured := rate(s.rate())
			if s.err != nil {
				measured = "error (see notes)"
				rep.note(fmt.Sprintf("%s: %v", s.what, s.err))
			}
			rep.add(row{bench: label + ", vs bare client doing the same file work", measured: measured,
				baseline: rate(f.rate()), ratio: ratio(s.rate(), f.rate()), target: "≥ 0.8x",
				result: verdict(f.rate() > 0 && s.rate() >= 0.8*f.rate())})
			rep.add(row{bench: label + ", vs bare client with the message in memory", measured: measured,
				baseline: rate(m.rate()), ratio: ratio(s.rate(), m.rate()), target: "(DESIGN: close to it)", result: "info"})
			if conns == 2 && sinkKind == "smtp-sink" && o.want("postfix") {
				pfRate, pfLabel := pf.rate(), "Postfix "+rate(pf.rate())
				if !pfMeasured {
					pfRate, pfLabel = postfixReference, fmt.Sprintf("Postfix ≈%.0f msg/s (reference, not measured)", postfixReference)
				}
				rep.add(row{bench: label + ", vs Postfix relaying the same backlog at destination concurrency 2", measured: measured,
					baseline: pfLabel, ratio: ratio(s.rate(), pfRate), target: "≥ 4x", result: verdict(s.rate() >= 4*pfRate)})
				// Postfix keeps no copy of what it relayed: the same drain
				// with delete_after_send, for a like-for-like figure.
				nd := smtpqDrain(ctx, o, k, sinkKind, conns, o.n, true)
				logf("  %s", nd)
				rep.detail(nd.String())
				ndMeasured := rate(nd.rate())
				if nd.err != nil {
					ndMeasured = "error (see notes)"
					rep.note(fmt.Sprintf("%s: %v", nd.what, nd.err))
				}
				rep.add(row{bench: label + ", with delete_after_send (no Sent copy, as Postfix keeps none), vs Postfix", measured: ndMeasured,
					baseline: pfLabel, ratio: ratio(nd.rate(), pfRate), target: "(≥ 4x)", result: "info"})
			}
		}
	}
	return ctx.Err()
}
