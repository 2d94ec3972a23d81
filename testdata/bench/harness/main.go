//go:build linux

// Command harness runs smtpq's benchmarks (issue 5) and prints the results
// as a table, also written to bench/out/results.md (results-scale.md for the
// scale suite). "make bench" and "make bench-scale" run it; it expects
// bin/smtpq to be built and runs from the top of the checkout:
//
//	go run ./testdata/bench/harness -suite bench   # drain, pickup, slow host, big message, micro-benchmarks
//	go run ./testdata/bench/harness -suite scale   # the 1,000,000-file backlog
//	go run ./testdata/bench/harness -suite cluster # drains by 1-3 nodes on a NATS JetStream stream (cluster.go)
//
// Every process it starts (the service, the bare client, smtp-sink, a private
// Postfix, the cluster suite's NATS servers) is stopped by its PID when a step ends, and on SIGINT/SIGTERM;
// the service and the client also die with the harness (PR_SET_PDEATHSIG).
// Everything listens on loopback addresses only. Work files live under
// bench/out/work and are removed at the end (BENCH_KEEP=1 keeps them).
//
// Settings (environment variable, or the flag of the same name in lower
// case without the prefix, e.g. -n):
//
//	BENCH_N=10000        messages in each drain
//	BENCH_REPEAT=3       rounds of each drain (smtpq and the bare clients); the median round counts
//	BENCH_ONLY=...       comma-separated subset: drain,postfix,pickup,slow,big,micro
//	PICKUP_N=200         messages of the pickup-latency run, one every PICKUP_GAP=20ms
//	SLOW_N=100000        backlog for the rate-limited host; FAST_N=1000 for the other
//	SLOW_TIMEOUT=90s     give up waiting for the fast host after this
//	SLOW_REPEAT=3        rounds of the slow-host benchmark (with and without the backlog); the median ratio counts
//	BIG_MB=200           size of the big message
//	SCALE_N=1000000      backlog of the scale suite; SCALE_WINDOW=60s of draining measured
//	SCALE_CAP=2          connection cap of the scale suite (and its 10k reference)
//	POSTFIX=auto         auto: run the Postfix reference if postfix is installed and we are root; off: skip
//	CLUSTER_N=3000       messages in each drain of the cluster suite
//	CLUSTER_CAP=8        max_threads and max_connections of each node (and of the directory spool's drain)
//	CLUSTER_REPEAT=3     rounds of the cluster suite; the median of each case counts
//	CLUSTER_CASES=...    comma-separated subset of the cluster cases: emb-r1-1, r1-1, r1-2, r1-3, r3-1, r3-2, r3-3
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	suite       string
	root        string // top of the checkout
	out         string // bench/out
	work        string // bench/out/work
	smtpq       string // bin/smtpq
	n           int
	only        map[string]bool
	pickupN     int
	pickupGap   time.Duration
	slowN       int
	fastN       int
	slowTimeout time.Duration
	slowRepeat  int
	bigMB       int
	scaleN      int
	scaleWindow time.Duration
	scaleCap    int
	postfix     string
	keep        bool
	profile     bool // SMTPQ_CPUPROFILE for each service run
	repeat      int

	clusterN      int
	clusterCap    int
	clusterRepeat int
	clusterCases  map[string]bool // nil: all
}

func envInt(name string, def int) int {
	if v := os.Getenv(name); v != "" {
		if n, err := strconv.Atoi(strings.ReplaceAll(v, "_", "")); err == nil {
			return n
		}
		fmt.Fprintf(os.Stderr, "harness: %s=%q is not a number; using %d\n", name, v, def)
	}
	return def
}

func envDur(name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
		fmt.Fprintf(os.Stderr, "harness: %s=%q is not a duration; using %v\n", name, v, def)
	}
	return def
}

func envStr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func main() {
	// The cluster suite starts its NATS servers as this program again.
	if len(os.Args) > 1 && os.Args[1] == "nats-server" {
		natsServerMain(os.Args[2:])
		return
	}
	var o options
	var only string
	flag.StringVar(&o.suite, "suite", "bench", "bench (drain, pickup, slow host, big message, micro-benchmarks), scale (1M backlog) or cluster (drains on a NATS JetStream stream)")
	flag.IntVar(&o.n, "n", envInt("BENCH_N", 10000), "messages in each drain")
	flag.StringVar(&only, "only", envStr("BENCH_ONLY", ""), "comma-separated subset of drain,postfix,pickup,slow,big,micro")
	flag.IntVar(&o.pickupN, "pickup_n", envInt("PICKUP_N", 200), "messages of the pickup-latency run")
	flag.DurationVar(&o.pickupGap, "pickup_gap", envDur("PICKUP_GAP", 20*time.Millisecond), "time between two enqueues of the pickup run")
	flag.IntVar(&o.slowN, "slow_n", envInt("SLOW_N", 100000), "backlog for the rate-limited host")
	flag.IntVar(&o.fastN, "fast_n", envInt("FAST_N", 1000), "messages for the other host")
	flag.DurationVar(&o.slowTimeout, "slow_timeout", envDur("SLOW_TIMEOUT", 90*time.Second), "give up waiting for the fast host after this")
	flag.IntVar(&o.bigMB, "big_mb", envInt("BIG_MB", 200), "size of the big message in MiB")
	flag.IntVar(&o.scaleN, "scale_n", envInt("SCALE_N", 1000000), "backlog of the scale suite")
	flag.DurationVar(&o.scaleWindow, "scale_window", envDur("SCALE_WINDOW", 60*time.Second), "how long the scale suite's drain is measured")
	flag.IntVar(&o.scaleCap, "scale_cap", envInt("SCALE_CAP", 2), "connection cap of the scale suite")
	flag.StringVar(&o.postfix, "postfix", envStr("POSTFIX", "auto"), "auto or off")
	flag.IntVar(&o.slowRepeat, "slow_repeat", envInt("SLOW_REPEAT", 3), "rounds of the slow-host benchmark; the median ratio counts")
	flag.IntVar(&o.repeat, "repeat", envInt("BENCH_REPEAT", 3), "rounds of each drain; the median counts")
	flag.IntVar(&o.clusterN, "cluster_n", envInt("CLUSTER_N", 3000), "messages in each drain of the cluster suite")
	flag.IntVar(&o.clusterCap, "cluster_cap", envInt("CLUSTER_CAP", 8), "max_threads and max_connections of each node in the cluster suite")
	flag.IntVar(&o.clusterRepeat, "cluster_repeat", envInt("CLUSTER_REPEAT", 3), "rounds of the cluster suite; the median counts")
	var cases string
	flag.StringVar(&cases, "cluster_cases", envStr("CLUSTER_CASES", ""), "comma-separated subset of the cluster cases (emb-r1-1, r1-1, r1-2, r1-3, r3-1, r3-2, r3-3)")
	flag.BoolVar(&o.keep, "keep", os.Getenv("BENCH_KEEP") == "1", "keep bench/out/work")
	flag.BoolVar(&o.profile, "profile", os.Getenv("BENCH_PROFILE") == "1", "write a CPU profile of each service run to bench/out/cpu-<run>.prof")
	flag.Parse()
	if only != "" {
		o.only = map[string]bool{}
		for _, s := range strings.Split(only, ",") {
			o.only[strings.TrimSpace(s)] = true
		}
	}
	if cases != "" {
		o.clusterCases = map[string]bool{}
		for _, s := range strings.Split(cases, ",") {
			o.clusterCases[strings.TrimSpace(s)] = true
		}
	}
	if err := run(&o); err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		os.Exit(1)
	}
}

func (o *options) want(part string) bool { return o.only == nil || o.only[part] }

func run(o *options) error {
	var err error
	if o.root, err = os.Getwd(); err != nil {
		return err
	}
	o.out = filepath.Join(o.root, "bench", "out")
	o.work = filepath.Join(o.out, "work")
	o.smtpq = filepath.Join(o.root, "bin", "smtpq")
	if _, err := os.Stat(o.smtpq); err != nil {
		return fmt.Errorf("%s not found: run make build first (make bench does)", o.smtpq)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// A second signal is not caught: the default action ends the harness
	// (the service and the client die with it, see startProc).
	context.AfterFunc(ctx, stop)
	defer cleanupAll()

	if err := os.RemoveAll(o.work); err != nil {
		return err
	}
	if err := os.MkdirAll(o.work, 0o755); err != nil {
		return err
	}
	if !o.keep {
		defer func() {
			logf("removing %s", o.work)
			os.RemoveAll(o.work)
		}()
	}
	rep := newReport(o)
	// What is measured: the binary's version (the tree it was built from)
	// and the checkout's revision, taken now, before anything runs.
	if v, err := exec.Command(o.smtpq, "--version").Output(); err == nil {
		rep.binary = strings.TrimSpace(string(v))
	}
	if v, err := exec.Command("git", "describe", "--tags", "--always", "--dirty").Output(); err == nil {
		rep.revision = strings.TrimSpace(string(v))
	}
	var runErr error
	switch o.suite {
	case "bench":
		runErr = benchSuite(ctx, o, rep)
	case "scale":
		runErr = scaleSuite(ctx, o, rep)
	case "cluster":
		runErr = clusterSuite(ctx, o, rep)
	default:
		return fmt.Errorf("unknown -suite %q (bench, scale or cluster)", o.suite)
	}
	if runErr != nil {
		rep.note("The run stopped early: " + runErr.Error())
	}
	name := "results.md"
	if o.suite != "bench" {
		name = "results-" + o.suite + ".md"
	}
	text := rep.render()
	fmt.Print("\n" + text)
	path := filepath.Join(o.out, name)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return err
	}
	logf("results written to %s", path)
	return runErr
}

func benchSuite(ctx context.Context, o *options, rep *report) error {
	keys, err := makeKeys(o.work)
	if err != nil {
		return err
	}
	steps := []struct {
		part string
		fn   func() error
	}{
		{"drain", func() error { return drainBench(ctx, o, keys, rep) }},
		{"pickup", func() error { return pickupBench(ctx, o, keys, rep) }},
		{"slow", func() error { return slowBench(ctx, o, keys, rep) }},
		{"big", func() error { return bigBench(ctx, o, keys, rep) }},
		{"micro", func() error { return microBench(ctx, o, rep) }},
	}
	for _, s := range steps {
		if !o.want(s.part) && !(s.part == "drain" && o.want("postfix")) {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		logf("=== %s", s.part)
		if err := s.fn(); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			rep.note(fmt.Sprintf("%s: %v", s.part, err))
			logf("%s failed: %v", s.part, err)
		}
		logf("=== %s took %v", s.part, time.Since(start).Round(time.Second))
	}
	return ctx.Err()
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func hostInfo() string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d CPUs, Linux %s, %s", runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version())
}
