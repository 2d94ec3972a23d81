//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"filippo.io/age"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
)

// keys are the service's key pair, made once per run.
type keys struct {
	identity, recipient string
	recipients          []age.Recipient
}

func makeKeys(work string) (*keys, error) {
	k := &keys{identity: filepath.Join(work, "keys", "identity.txt"), recipient: filepath.Join(work, "keys", "recipient.txt")}
	if _, err := queuefile.GenerateKeys(k.identity, k.recipient); err != nil {
		return nil, err
	}
	rs, err := queuefile.LoadRecipients(k.recipient)
	if err != nil {
		return nil, err
	}
	k.recipients = rs
	return k, nil
}

// spoolDirs are one run's folders.
type spoolDirs struct {
	root, queue, sent, undeliverable string
}

func newSpoolDirs(work, name string) (spoolDirs, error) {
	root := filepath.Join(work, name)
	d := spoolDirs{root: root, queue: filepath.Join(root, "queue"), sent: filepath.Join(root, "sent"),
		undeliverable: filepath.Join(root, "undeliverable")}
	for _, dir := range []string{d.queue, d.sent, d.undeliverable} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return d, err
		}
	}
	return d, nil
}

// svcConfig is what a run sets in the service's configuration; the rest is
// smtpq's defaults.
type svcConfig struct {
	maxThreads int    // 0: default (16)
	maxConns   int    // hosts.default.max_connections; 0: default (4)
	hostsExtra string // more YAML under hosts:, indented by four spaces
	noSentCopy bool   // delete_after_send: true
	extra      string // more top-level YAML (the nats section)
}

// writeConfig writes the service configuration for d and returns its path
// and the metrics address it listens on.
func writeConfig(d spoolDirs, k *keys, c svcConfig) (path, metricsAddr string, err error) {
	metricsAddr = fmt.Sprintf("127.0.0.1:%d", freePort("127.0.0.1"))
	var b strings.Builder
	fmt.Fprintf(&b, "queue_dir: %s\nsent_dir: %s\nundeliverable_dir: %s\n", d.queue, d.sent, d.undeliverable)
	fmt.Fprintf(&b, "identity_file: %s\nrecipient_file: %s\nhelo: smtpq.bench\n", k.identity, k.recipient)
	if c.maxThreads > 0 {
		fmt.Fprintf(&b, "max_threads: %d\n", c.maxThreads)
	}
	if c.noSentCopy {
		b.WriteString("delete_after_send: true\n")
	}
	if c.maxConns > 0 || c.hostsExtra != "" {
		b.WriteString("hosts:\n")
		if c.maxConns > 0 {
			fmt.Fprintf(&b, "  default:\n    max_connections: %d\n", c.maxConns)
		}
		b.WriteString(c.hostsExtra)
	}
	b.WriteString(c.extra)
	fmt.Fprintf(&b, "metrics:\n  listen: %q\nlog:\n  level: info\n  format: console\n", metricsAddr)
	path = filepath.Join(d.root, "smtpq.yaml")
	return path, metricsAddr, os.WriteFile(path, []byte(b.String()), 0o644)
}

// freePort returns a TCP port that was free on ip a moment ago.
func freePort(ip string) int {
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// message returns a plain text message of exactly size bytes; extra header
// lines (each ending in CRLF) go after Subject.
func message(size int, extra string) []byte {
	m := []byte("From: App <app@example.com>\r\nTo: user@example.org\r\nSubject: smtpq benchmark\r\n" + extra +
		"Message-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	line := []byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n")
	for len(m) < size {
		m = append(m, line[:min(len(line), size-len(m))]...)
	}
	return m
}

const (
	envFrom = "app@example.com"
	envTo   = "user@example.org"
)

// batch is a set of identical queue files for one SMTP server.
type batch struct {
	host string
	port int
	n    int
	size int
	tag  string // in every file name: <time>-<tag><seq>+<route tag>.eml
}

// sealedFile returns a batch's queue file (seal and message) and the
// "+<route tag>" that Enqueue puts in its names.
func sealedFile(k *keys, bt batch) (file []byte, route string, err error) {
	msg := message(bt.size, "")
	sum := sha256.Sum256(msg)
	p := queuefile.Params{
		Host: bt.host, Port: bt.port, TLS: queuefile.TLSNone, From: envFrom, To: []string{envTo},
		Digest: hex.EncodeToString(sum[:]), Size: int64(len(msg)),
	}
	seal, err := queuefile.SealHeader(&p, "\r\n", k.recipients...)
	if err != nil {
		return nil, "", err
	}
	return append(seal, msg...), "+" + queuefile.RouteTag(k.recipients[0], &p), nil
}

// paddedFile is sealedFile with the seal padded to whole blocks, as
// Enqueue writes queue files (queuefile.PadSeal); a stream gets them
// unpadded.
func paddedFile(k *keys, bt batch) (file []byte, route string, err error) {
	file, route, err = sealedFile(k, bt)
	if err != nil {
		return nil, "", err
	}
	end := len(file) - len(message(bt.size, "")) // where the seal ends
	return append(queuefile.PadSeal(file[:end], "\r\n", queuefile.SealBlock), file[end:]...), route, nil
}

// fillQueue writes the batches' files straight into dir, as if enqueued
// over the last hours: each batch's message is sealed once and copied under
// n names (identical content is fine for a benchmark; Enqueue's two fsyncs
// per file would make a million files take an hour). It ends with sync(2),
// so that the write-back does not run during the measurement.
func fillQueue(ctx context.Context, dir string, k *keys, batches []batch) error {
	base := time.Now().Add(-3 * time.Hour).UTC()
	seq := 0
	for _, bt := range batches {
		file, route, err := paddedFile(k, bt)
		if err != nil {
			return err
		}
		const writers = 4
		var wg sync.WaitGroup
		errs := make([]error, writers)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < bt.n; i += writers {
					if i%4096 == 0 && ctx.Err() != nil {
						errs[w] = ctx.Err()
						return
					}
					t := base.Add(time.Duration(seq+i) * time.Microsecond)
					name := fmt.Sprintf("%s-%s%08d%s.eml", t.Format("20060102T150405.000000000Z"), bt.tag, i, route)
					if err := os.WriteFile(filepath.Join(dir, name), file, 0o640); err != nil { // as Enqueue
						errs[w] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				return err
			}
		}
		seq += bt.n
	}
	syscall.Sync()
	return nil
}

// countNames counts the queue-file names in dir that match (nil: all).
func countNames(dir string, match func(string) bool) int {
	n := 0
	spool.EachName(dir, func(name string) {
		if queuefile.IsQueueName(name) && (match == nil || match(name)) {
			n++
		}
	})
	return n
}

// lastChange returns the latest inode change time of the matching files in
// dir: when the last one was linked into Sent.
func lastChange(dir string, match func(string) bool) time.Time {
	var last time.Time
	spool.EachName(dir, func(name string) {
		if !queuefile.IsQueueName(name) || (match != nil && !match(name)) {
			return
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(dir, name), &st); err != nil {
			return
		}
		if t := time.Unix(st.Ctim.Sec, st.Ctim.Nsec); t.After(last) {
			last = t
		}
	})
	return last
}

var errTimedOut = errors.New("timed out")

// waitFiles polls dir every interval until it holds want matching files. It
// fails early if the service exits or files appear in undeliverable.
func waitFiles(ctx context.Context, svc *proc, d spoolDirs, match func(string) bool, want int, interval, timeout time.Duration) (int, error) {
	deadline := time.Now().Add(timeout)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n := countNames(d.sent, match)
		if n >= want {
			return n, nil
		}
		if u := countNames(d.undeliverable, nil); u > 0 {
			return n, fmt.Errorf("%d messages went to undeliverable (see %s)", u, d.undeliverable)
		}
		if svc != nil && !svc.running() {
			return n, fmt.Errorf("the service exited: %v\n%s", svc.err, tail(svc.log.Name(), 10))
		}
		if time.Now().After(deadline) {
			return n, fmt.Errorf("%w after %v with %d of %d in sent", errTimedOut, timeout, n, want)
		}
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-t.C:
		}
	}
}

// service is a running "bin/smtpq run".
type service struct {
	*proc
	dirs    spoolDirs
	metrics string
}

// startService writes the configuration and starts the service.
func startService(o *options, d spoolDirs, k *keys, c svcConfig) (*service, error) {
	cfg, maddr, err := writeConfig(d, k, c)
	if err != nil {
		return nil, err
	}
	var env []string
	if o.profile {
		// A CPU profile of each service run: bench/out/cpu-<run>.prof.
		// A node of the cluster suite has its folders one level deeper:
		// its run's name and its own.
		run := filepath.Base(d.root)
		if rel, err := filepath.Rel(o.work, d.root); err == nil {
			run = strings.ReplaceAll(rel, string(filepath.Separator), "-")
		}
		env = append(env, "SMTPQ_CPUPROFILE="+filepath.Join(filepath.Dir(o.work), "cpu-"+run+".prof"))
	}
	p, err := startProcEnv("smtpq", filepath.Join(d.root, "smtpq.log"), env, o.smtpq, "run", "--config", cfg)
	if err != nil {
		return nil, err
	}
	return &service{proc: p, dirs: d, metrics: maddr}, nil
}

// waitReady waits until the service answers on its metrics endpoint.
func (s *service) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := http.Get("http://" + s.metrics + "/healthz")
		if err == nil {
			resp.Body.Close()
			return nil
		}
		if !s.running() {
			return fmt.Errorf("the service exited: %v\n%s", s.err, tail(s.log.Name(), 10))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the service did not come up: %v", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

var metricLine = regexp.MustCompile(`^(smtpq_messages_total|smtpq_queue_messages)\{([^}]*)\} ([0-9.e+]+)$`)
var labelRe = regexp.MustCompile(`(\w+)="([^"]*)"`)

// scrape reads the service's counters: messages filed by result (summed over
// hosts, keyed "result:<r>" and "result:<r>:<host>") and spool depth by state
// ("state:<s>").
func (s *service) scrape() map[string]float64 {
	out := map[string]float64{}
	resp, err := http.Get("http://" + s.metrics + "/metrics")
	if err != nil {
		return out
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	for sc.Scan() {
		m := metricLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, _ := strconv.ParseFloat(m[3], 64)
		labels := map[string]string{}
		for _, l := range labelRe.FindAllStringSubmatch(m[2], -1) {
			labels[l[1]] = l[2]
		}
		if m[1] == "smtpq_messages_total" {
			out["result:"+labels["result"]] += v
			out["result:"+labels["result"]+":"+labels["host"]] += v
		} else {
			out["state:"+labels["state"]] = v
		}
	}
	return out
}
