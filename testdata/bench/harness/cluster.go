//go:build linux

package main

// The cluster suite (make bench-cluster, issue 12): the same backlog,
// published to a NATS JetStream stream beforehand, drained by 1, 2 and 3
// smtpq nodes (bin/smtpq run, each with its own folders, the keys shared)
// on one stream kept once (R1) or three times (R3), against the directory
// spool's drain of the same backlog in the same round, to the same kind of
// sink.
//
// The NATS servers are this program started again as "harness nats-server"
// (the server of github.com/nats-io/nats-server/v2 in that process): a
// process of their own, so that their CPU is measured apart from the
// nodes', and killed with the harness like every other child. The target's
// case, one node on an embedded R1 stream, is smtpq's own nats.embedded: the
// node runs the server, on a store that a harness server filled beforehand
// and left.

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
)

// natsServerMain is "harness nats-server": one NATS server with JetStream,
// until SIGTERM or SIGINT. It prints "ready" once it takes connections.
func natsServerMain(args []string) {
	fs := flag.NewFlagSet("nats-server", flag.ExitOnError)
	name := fs.String("name", "bench", "server name")
	listen := fs.String("listen", "127.0.0.1:4222", "client address")
	store := fs.String("store", "", "JetStream's folder")
	clusterName := fs.String("cluster", "", "cluster name (empty: no cluster)")
	clusterListen := fs.String("cluster_listen", "", "route address")
	routes := fs.String("routes", "", "route URLs of the cluster's servers, comma-separated")
	fs.Parse(args)
	host, port, err := hostPort(*listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats-server:", err)
		os.Exit(2)
	}
	opts := &server.Options{
		ServerName: *name, Host: host, Port: port,
		JetStream: true, StoreDir: *store, NoSigs: true,
	}
	if *clusterName != "" {
		ch, cp, err := hostPort(*clusterListen)
		if err != nil {
			fmt.Fprintln(os.Stderr, "nats-server:", err)
			os.Exit(2)
		}
		opts.Cluster = server.ClusterOpts{Name: *clusterName, Host: ch, Port: cp}
		opts.Routes = server.RoutesFromStr(*routes)
	}
	s, err := server.NewServer(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nats-server:", err)
		os.Exit(1)
	}
	s.ConfigureLogger()
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		fmt.Fprintln(os.Stderr, "nats-server: not ready within 30s")
		os.Exit(1)
	}
	fmt.Println("ready", s.ClientURL())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	s.Shutdown()
	s.WaitForShutdown()
}

func hostPort(addr string) (string, int, error) {
	h, p, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	return h, n, err
}

// natsServers are the harness's NATS server processes.
type natsServers struct {
	procs []*proc
	urls  []string
}

// startNATS starts n servers (a cluster if n > 1) with their stores under
// dir (store, if set, for a single server) and waits until JetStream
// answers through them.
func startNATS(ctx context.Context, dir, name, store string, n int) (*natsServers, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ns := &natsServers{}
	clientPorts := make([]int, n)
	routePorts := make([]int, n)
	var routes []string
	for i := range n {
		clientPorts[i] = freePort("127.0.0.1")
		routePorts[i] = freePort("127.0.0.1")
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", routePorts[i]))
	}
	for i := range n {
		srvName := name
		if n > 1 {
			srvName = fmt.Sprintf("%s-%d", name, i+1)
		}
		st := store
		if st == "" {
			st = filepath.Join(dir, srvName+"-store")
		}
		args := []string{self, "nats-server", "-name", srvName, "-store", st,
			"-listen", fmt.Sprintf("127.0.0.1:%d", clientPorts[i])}
		if n > 1 {
			args = append(args, "-cluster", "bench", "-cluster_listen", fmt.Sprintf("127.0.0.1:%d", routePorts[i]),
				"-routes", strings.Join(routes, ","))
		}
		p, err := startProc("nats-server", filepath.Join(dir, srvName+".log"), args...)
		if err != nil {
			ns.stop()
			return nil, err
		}
		ns.procs = append(ns.procs, p)
		ns.urls = append(ns.urls, fmt.Sprintf("nats://127.0.0.1:%d", clientPorts[i]))
	}
	if err := ns.waitJetStream(ctx); err != nil {
		ns.stop()
		return nil, err
	}
	return ns, nil
}

// waitJetStream waits until each server answers for JetStream (in a
// cluster: it has a meta leader).
func (ns *natsServers) waitJetStream(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	for i, url := range ns.urls {
		for {
			err := func() error {
				nc, err := nats.Connect(url, nats.Timeout(time.Second))
				if err != nil {
					return err
				}
				defer nc.Close()
				js, err := jetstream.New(nc)
				if err != nil {
					return err
				}
				actx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				_, err = js.AccountInfo(actx)
				return err
			}()
			if err == nil {
				break
			}
			if !ns.procs[i].running() {
				return fmt.Errorf("NATS server %s exited: %v\n%s", url, ns.procs[i].err, tail(ns.procs[i].log.Name(), 10))
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("NATS server %s: JetStream not ready: %v", url, err)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

// cpu is the servers' CPU time so far.
func (ns *natsServers) cpu() time.Duration {
	var t time.Duration
	for _, p := range ns.procs {
		t += p.cpu()
	}
	return t
}

func (ns *natsServers) stop() {
	for _, p := range ns.procs {
		p.stop(10 * time.Second)
	}
}

// publishBacklog sets up the stream (replicas copies) and publishes n
// copies of one sealed 4 KiB message for sk under distinct names and ids, as
// smtpq enqueue would, then checks that the stream holds n.
func publishBacklog(ctx context.Context, urls []string, replicas int, k *keys, sk sink, n int) error {
	nc, err := nats.Connect(strings.Join(urls, ","))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	str, _, err := stream.Setup(ctx, js, "", replicas)
	if err != nil {
		return err
	}
	file, route, err := sealedFile(k, batch{host: sk.host(), port: sk.port(), size: 4096})
	if err != nil {
		return err
	}
	base := time.Now().Add(-time.Hour).UTC()
	const publishers = 16
	var wg sync.WaitGroup
	errs := make([]error, publishers)
	for w := range publishers {
		wg.Go(func() {
			for i := w; i < n; i += publishers {
				t := base.Add(time.Duration(i) * time.Microsecond)
				name := fmt.Sprintf("%s-m%08d%s.eml", t.Format("20060102T150405.000000000Z"), i, route)
				pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				err := stream.PublishAs(pctx, js, "", spool.NewID(t), name, file)
				cancel()
				if err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	info, err := str.Info(ctx)
	if err != nil {
		return err
	}
	if info.State.Msgs != uint64(n) {
		return fmt.Errorf("the stream holds %d messages after publishing %d", info.State.Msgs, n)
	}
	return nil
}

// clusterCase is one configuration of the cluster suite.
type clusterCase struct {
	label    string // for the table
	slug     string // for folder and profile names
	nodes    int
	servers  int // NATS servers the harness runs: 0 (embedded in the single node), 1 or 3
	replicas int
}

func clusterCases() []clusterCase {
	return []clusterCase{
		{label: "embedded R1 (in the node), 1 node", slug: "emb-r1-1", nodes: 1, servers: 0, replicas: 1},
		{label: "R1, 1 node", slug: "r1-1", nodes: 1, servers: 1, replicas: 1},
		{label: "R1, 2 nodes", slug: "r1-2", nodes: 2, servers: 1, replicas: 1},
		{label: "R1, 3 nodes", slug: "r1-3", nodes: 3, servers: 1, replicas: 1},
		{label: "R3 (3 servers), 1 node", slug: "r3-1", nodes: 1, servers: 3, replicas: 3},
		{label: "R3 (3 servers), 2 nodes", slug: "r3-2", nodes: 2, servers: 3, replicas: 3},
		{label: "R3 (3 servers), 3 nodes", slug: "r3-3", nodes: 3, servers: 3, replicas: 3},
	}
}

// clusterResult is one drain by the nodes of a case. Its drainResult's cpu
// is the nodes' (with the embedded server's in the embedded case), peakKB
// the largest node's.
type clusterResult struct {
	drainResult
	natsCPU time.Duration // the harness's NATS servers, from the nodes' start to the end
	perNode []int         // messages filed in each node's Sent
}

func (r clusterResult) String() string {
	s := r.drainResult.String()
	if r.err == nil {
		s += fmt.Sprintf("; NATS servers' CPU %v (%.0f µs/msg); per node %v",
			r.natsCPU.Round(10*time.Millisecond), float64(r.natsCPU.Microseconds())/float64(r.n), r.perNode)
	}
	return s
}

func (r clusterResult) cpuPerMsg() float64 {
	if r.n == 0 {
		return 0
	}
	return float64((r.cpu + r.natsCPU).Microseconds()) / float64(r.n)
}

// clusterDrain publishes n messages for a fresh sink to the case's stream,
// starts its nodes together and waits until their Sent folders hold n in
// all. The clock runs from the first node's start to the last link into a
// Sent folder, as for the directory spool.
func clusterDrain(ctx context.Context, o *options, k *keys, sinkKind string, conns, n int, c clusterCase, round int) clusterResult {
	res := clusterResult{drainResult: drainResult{what: fmt.Sprintf("smtpq on the stream, %s, cap %d per node, %s", c.label, conns, sinkKind), n: n}}
	fail := func(err error) clusterResult { res.err = err; return res }
	root := filepath.Join(o.work, fmt.Sprintf("cluster-%s-%d", c.slug, round))
	if err := os.MkdirAll(root, 0o755); err != nil {
		return fail(err)
	}
	defer os.RemoveAll(root)
	sk, err := startSink(ctx, sinkKind, root, "127.0.0.1")
	if err != nil {
		return fail(err)
	}
	defer sk.close()

	var ns *natsServers
	var natsYAML func(node int) string
	if c.servers == 0 {
		// The node's own server will open this store: fill it with a
		// harness server under the same name, then stop that one.
		store := filepath.Join(root, "node1-nats")
		pre, err := startNATS(ctx, root, "node1", store, 1)
		if err != nil {
			return fail(err)
		}
		err = publishBacklog(ctx, pre.urls, 1, k, sk, n)
		pre.stop()
		if err != nil {
			return fail(err)
		}
		listen := fmt.Sprintf("127.0.0.1:%d", freePort("127.0.0.1"))
		natsYAML = func(int) string {
			return fmt.Sprintf("nats:\n  node: node1\n  embedded:\n    listen: %q\n    store_dir: %q\n", listen, store)
		}
	} else {
		if ns, err = startNATS(ctx, root, "nats", "", c.servers); err != nil {
			return fail(err)
		}
		defer ns.stop()
		if err := publishBacklog(ctx, ns.urls, c.replicas, k, sk, n); err != nil {
			return fail(err)
		}
		natsYAML = func(node int) string {
			return fmt.Sprintf("nats:\n  urls: [%s]\n  replicas: %d\n  node: node%d\n", strings.Join(ns.urls, ", "), c.replicas, node)
		}
	}
	// The publishing is done: let the servers write it out before the clock
	// starts, as fillQueue's sync does for the folders.
	syscall.Sync()

	var natsCPU0 time.Duration
	if ns != nil {
		natsCPU0 = ns.cpu()
	}
	var nodes []*service
	defer func() {
		for _, svc := range nodes {
			svc.stop(40 * time.Second)
		}
	}()
	for i := 1; i <= c.nodes; i++ {
		d, err := newSpoolDirs(root, fmt.Sprintf("node%d", i))
		if err != nil {
			return fail(err)
		}
		svc, err := startService(o, d, k, svcConfig{maxThreads: conns, maxConns: conns, extra: natsYAML(i)})
		if err != nil {
			return fail(err)
		}
		nodes = append(nodes, svc)
	}
	t0 := nodes[0].started
	deadline := time.Now().Add(drainTimeout(n))
	for {
		got := 0
		for _, svc := range nodes {
			got += countNames(svc.dirs.sent, nil)
			if u := countNames(svc.dirs.undeliverable, nil); u > 0 {
				return fail(fmt.Errorf("%d messages went to undeliverable (see %s)", u, svc.dirs.undeliverable))
			}
			if !svc.running() {
				return fail(fmt.Errorf("a node exited: %v\n%s", svc.err, tail(svc.log.Name(), 10)))
			}
		}
		if got >= n {
			break
		}
		if time.Now().After(deadline) {
			return fail(fmt.Errorf("%w after %v with %d of %d in sent", errTimedOut, drainTimeout(n), got, n))
		}
		select {
		case <-ctx.Done():
			return fail(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	var last time.Time
	for _, svc := range nodes {
		if t := lastChange(svc.dirs.sent, nil); t.After(last) {
			last = t
		}
		res.cpu += svc.cpu()
		res.peakKB = max(res.peakKB, svc.status("VmHWM"))
		res.perNode = append(res.perNode, countNames(svc.dirs.sent, nil))
	}
	res.dur = last.Sub(t0)
	if ns != nil {
		res.natsCPU = ns.cpu() - natsCPU0
	}
	for _, svc := range nodes {
		svc.stop(40 * time.Second)
	}
	res.sinkGot = sk.count()
	return res
}

// clusterSuite runs every case and the directory spool's drain, round after
// round, and reports the median of each against the directory spool.
func clusterSuite(ctx context.Context, o *options, rep *report) error {
	k, err := makeKeys(o.work)
	if err != nil {
		return err
	}
	sinkKind := "smtptest"
	if haveSmtpSink() {
		sinkKind = "smtp-sink"
	} else {
		rep.note("smtp-sink is not installed (apt-get install postfix): the drains ran against the harness's own smtptest sink.")
	}
	n, conns := o.clusterN, o.clusterCap
	var cases []clusterCase
	for _, c := range clusterCases() {
		if o.clusterCases == nil || o.clusterCases[c.slug] {
			cases = append(cases, c)
		}
	}
	var dirRuns []drainResult
	runs := make([][]clusterResult, len(cases))
	for round := range max(o.clusterRepeat, 1) {
		logf("=== round %d of %d", round+1, max(o.clusterRepeat, 1))
		if err := ctx.Err(); err != nil {
			return err
		}
		d := smtpqDrain(ctx, o, k, sinkKind, conns, n, false)
		logf("  %s", d)
		rep.detail(fmt.Sprintf("round %d: %s", round+1, d))
		dirRuns = append(dirRuns, d)
		for i, c := range cases {
			if err := ctx.Err(); err != nil {
				return err
			}
			start := time.Now()
			r := clusterDrain(ctx, o, k, sinkKind, conns, n, c, round)
			logf("  %s (%v in all)", r, time.Since(start).Round(100*time.Millisecond))
			line := fmt.Sprintf("round %d: %s", round+1, r)
			if r.err == nil && d.err == nil {
				line += fmt.Sprintf("; %.2fx the directory spool of this round", r.rate()/d.rate())
			}
			rep.detail(line)
			runs[i] = append(runs[i], r)
		}
	}

	// Rounds drift (other load on the machine, the disk's write-back): each
	// ratio is taken within its round, against that round's directory spool
	// (or 1-node run), and the median of the rounds' ratios is reported, with
	// the median of each figure beside it.
	dir := median(dirRuns)
	dirCPU := func(r int) float64 { return perMsg(dirRuns[r].cpu, dirRuns[r].n) }
	if dir.err != nil {
		rep.note(fmt.Sprintf("%s: %v", dir.what, dir.err))
	}
	label := fmt.Sprintf("Drain %d × 4 KiB, cap %d per node, %s", n, conns, sinkKind)
	rounds := max(o.clusterRepeat, 1)
	rep.add(row{bench: label + ", directory spool, one node (the baseline of each round)", measured: rate(dir.rate()),
		target: "", result: "info"})
	var tbl strings.Builder
	tbl.WriteString("## Cluster drain: throughput, CPU per message, scaling\n\n")
	fmt.Fprintf(&tbl, "%d messages of 4 KiB, cap %d per node (max_threads = max_connections), %s, %d rounds. ", n, conns, sinkKind, rounds)
	tbl.WriteString("Figures are medians over the rounds; ratios are the median of each round's ratio (against the directory spool, or the 1-node run on the same stream, of the same round). ")
	tbl.WriteString("CPU is user + system time per message of the smtpq processes (the embedded server's included, in the embedded case) and of the harness's NATS server processes from the nodes' start.\n\n")
	tbl.WriteString("| Run | msg/s | vs directory | vs 1 node, same stream | smtpq CPU µs/msg | NATS CPU µs/msg | CPU/msg vs directory | filed per node |\n")
	tbl.WriteString("|---|---|---|---|---|---|---|---|\n")
	dirCPUs := make([]float64, len(dirRuns))
	for r := range dirRuns {
		dirCPUs[r] = dirCPU(r)
	}
	fmt.Fprintf(&tbl, "| directory spool, 1 node | %.0f | 1.00x | — | %.0f | — | 1.00x | %d |\n", dir.rate(), medianOf(dirCPUs), dir.n)
	oneNode := map[int]int{} // replicas -> index of the 1-node case on the harness's servers
	for i, c := range cases {
		rs := runs[i]
		m := clusterMedian(rs)
		var vsDir, vsOne, cpuVsDir, nodeCPU, natsCPU []float64
		failed := false
		for r, x := range rs {
			if x.err != nil {
				failed = true
				continue
			}
			nodeCPU = append(nodeCPU, perMsg(x.cpu, x.n))
			natsCPU = append(natsCPU, perMsg(x.natsCPU, x.n))
			if d := dirRuns[r]; d.err == nil && d.rate() > 0 {
				vsDir = append(vsDir, x.rate()/d.rate())
				cpuVsDir = append(cpuVsDir, x.cpuPerMsg()/dirCPU(r))
			}
			if j, ok := oneNode[c.replicas]; ok && c.servers > 0 && runs[j][r].rate() > 0 {
				vsOne = append(vsOne, x.rate()/runs[j][r].rate())
			}
		}
		if c.servers > 0 && c.nodes == 1 {
			oneNode[c.replicas] = i
		}
		measured := rate(m.rate())
		if failed {
			for _, x := range rs {
				if x.err != nil {
					rep.note(fmt.Sprintf("%s: %v", x.what, x.err))
				}
			}
			if m.err != nil {
				measured = "error (see notes)"
			}
		}
		x := row{bench: fmt.Sprintf("%s, stream: %s, vs the directory spool", label, c.label), measured: measured,
			baseline: rate(dir.rate()), ratio: xs(vsDir), target: "(info)", result: "info"}
		if c.servers == 0 {
			x.target = "≥ 0.5x"
			x.result = verdict(len(vsDir) > 0 && medianOf(vsDir) >= 0.5)
		}
		if len(vsDir) > 1 {
			x.bench += " (rounds: " + xsList(vsDir) + ")"
		}
		rep.add(x)
		natsCol := fmt.Sprintf("%.0f", medianOf(natsCPU))
		if c.servers == 0 {
			natsCol = "(in the node)"
		}
		per := "—"
		if m.err == nil {
			per = strings.Trim(strings.ReplaceAll(fmt.Sprint(m.perNode), " ", " / "), "[]")
		}
		scale := xs(vsOne)
		if c.servers > 0 && c.nodes == 1 {
			scale = "1.00x"
		}
		fmt.Fprintf(&tbl, "| %s | %.0f | %s | %s | %.0f | %s | %s | %s |\n", c.label, m.rate(), xs(vsDir), scale,
			medianOf(nodeCPU), natsCol, xs(cpuVsDir), per)
	}
	rep.section(tbl.String())
	return ctx.Err()
}

func perMsg(d time.Duration, n int) float64 { return float64(d.Microseconds()) / float64(max(n, 1)) }

// medianOf returns the median of vs (the lower middle one), 0 if empty.
func medianOf(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// xs formats the median of ratios, "—" if there are none.
func xs(vs []float64) string {
	if len(vs) == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2fx", medianOf(vs))
}

func xsList(vs []float64) string {
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = fmt.Sprintf("%.2fx", v)
	}
	return strings.Join(parts, ", ")
}

// clusterMedian returns the run with the median rate, as median does.
func clusterMedian(rs []clusterResult) clusterResult {
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b clusterResult) int { return cmp.Compare(a.rate(), b.rate()) })
	return sorted[(len(sorted)-1)/2]
}
