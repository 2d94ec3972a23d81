package pipeline

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// StuckAfter is how long the pipeline may hold waiting mail without filing
// anything before the health endpoint calls it stuck.
const StuckAfter = 5 * time.Minute

// PanicShownFor is how long the health endpoint reports unhealthy after a
// Sender worker recovered from a panic: the worker went on and the message
// will be retried, but a panic is a bug (perhaps one a server's replies
// bring out) that an operator should see, with its stack in the log.
const PanicShownFor = 10 * time.Minute

// metrics are the service's Prometheus metrics and health state. Each
// pipeline has its own registry.
type metrics struct {
	reg          *prometheus.Registry
	filed        *prometheus.CounterVec
	sessions     *prometheus.GaugeVec
	sessionTime  *prometheus.HistogramVec
	attemptTime  *prometheus.HistogramVec
	dispatchWait *prometheus.HistogramVec
	panics       prometheus.Counter
	spool        *spoolCollector

	lastProgress  atomic.Int64 // unix nanoseconds of the last filing
	lastFilingErr atomic.Int64
	filingErrMu   sync.Mutex
	filingErrText string

	panicMu   sync.Mutex
	panicN    int       // panics recovered since start
	panicAt   time.Time // of the last
	panicText string    // file and panic of the last
}

func newMetrics(dirs spool.Dirs, now func() time.Time) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		filed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "smtpq_messages_total",
			Help: "Messages filed, by SMTP host, result (sent, deferred, failed, parked, returned) and failure class.",
		}, []string{"host", "result", "class"}),
		sessions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "smtpq_smtp_sessions",
			Help: "SMTP connections open now, by host.",
		}, []string{"host"}),
		sessionTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "smtpq_smtp_session_duration_seconds",
			Help:    "How long SMTP connections stayed open, by host.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 9),
		}, []string{"host"}),
		attemptTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "smtpq_delivery_attempt_duration_seconds",
			Help:    "Duration of one delivery attempt (one message on a session), by host.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
		}, []string{"host"}),
		dispatchWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "smtpq_dispatch_wait_seconds",
			Help:    "Time a parsed message waited in the dispatcher for a session (connection cap, rate limit, paused host), by host.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"host"}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "smtpq_sender_panics_total",
			Help: "Panics Sender workers recovered from (the message at hand was deferred, the worker went on).",
		}),
		spool: &spoolCollector{dirs: dirs, now: now},
	}
	m.reg.MustRegister(m.filed, m.sessions, m.sessionTime, m.attemptTime, m.dispatchWait, m.panics, m.spool,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.lastProgress.Store(now().UnixNano())
	return m
}

// observe records a filing.
func (m *metrics) observe(f stages.Filed, now time.Time) {
	j := f.Job
	host := j.Host()
	if host == "" {
		host = "-"
	}
	m.filed.WithLabelValues(host, f.Verdict.String(), string(j.Outcome.Class)).Inc()
	if j.Outcome.Attempted {
		m.attemptTime.WithLabelValues(host).Observe(j.Outcome.Duration.Seconds())
		if !j.ReadyAt.IsZero() {
			wait := now.Sub(j.ReadyAt) - j.Outcome.Duration
			m.dispatchWait.WithLabelValues(host).Observe(max(wait, 0).Seconds())
		}
	}
	if f.Err != nil {
		m.lastFilingErr.Store(now.UnixNano())
		m.filingErrMu.Lock()
		m.filingErrText = f.Err.Error()
		m.filingErrMu.Unlock()
		return
	}
	m.lastProgress.Store(now.UnixNano())
}

// panicked records a panic a Sender worker recovered from (Sender.Panicked).
func (m *metrics) panicked(now time.Time, file, text string) {
	m.panics.Inc()
	m.panicMu.Lock()
	defer m.panicMu.Unlock()
	m.panicN++
	m.panicAt = now
	m.panicText = text
	if file != "" {
		m.panicText = file + ": " + text
	}
}

// dial wraps a dial function so that connections are counted and timed.
func (m *metrics) dial(next stages.DialFunc) stages.DialFunc {
	if next == nil {
		d := &net.Dialer{}
		next = d.DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := next(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		host, _, _ := net.SplitHostPort(addr)
		g := m.sessions.WithLabelValues(host)
		g.Inc()
		return &countedConn{Conn: c, start: time.Now(), done: func(d time.Duration) {
			g.Dec()
			m.sessionTime.WithLabelValues(host).Observe(d.Seconds())
		}}, nil
	}
}

type countedConn struct {
	net.Conn
	start time.Time
	once  sync.Once
	done  func(time.Duration)
}

func (c *countedConn) Close() error {
	c.once.Do(func() { c.done(time.Since(c.start)) })
	return c.Conn.Close()
}

// health reports problems, or none.
func (m *metrics) health(now time.Time) []string {
	var problems []string
	for _, d := range []string{
		filepath.Join(m.spool.dirs.Queue, queuefile.TmpDir),
		filepath.Join(m.spool.dirs.Sent, queuefile.TmpDir),
		filepath.Join(m.spool.dirs.Undeliverable, queuefile.TmpDir),
	} {
		if err := probeWrite(d); err != nil {
			problems = append(problems, "spool not writable: "+err.Error())
		}
	}
	if t := m.lastFilingErr.Load(); t != 0 && now.Sub(time.Unix(0, t)) < time.Minute {
		m.filingErrMu.Lock()
		problems = append(problems, "filing failed in the last minute: "+m.filingErrText)
		m.filingErrMu.Unlock()
	}
	m.panicMu.Lock()
	if m.panicN > 0 && now.Sub(m.panicAt) < PanicShownFor {
		problems = append(problems, fmt.Sprintf("a Sender worker recovered from a panic %s ago (%d since start; the message was deferred, see the log for the stack): %s",
			now.Sub(m.panicAt).Round(time.Second), m.panicN, m.panicText))
	}
	m.panicMu.Unlock()
	if c := m.spool.counts(); c.waiting > 0 {
		if idle := now.Sub(time.Unix(0, m.lastProgress.Load())); idle > StuckAfter {
			problems = append(problems, fmt.Sprintf("stuck: %d messages waiting and nothing filed for %s", c.waiting, idle.Round(time.Second)))
		}
	}
	return problems
}

func probeWrite(dir string) error {
	f, err := os.CreateTemp(dir, ".probe-*")
	if err != nil {
		return err
	}
	name := f.Name()
	_, err = f.Write([]byte("ok"))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(name); err == nil {
		err = rerr
	}
	return err
}

// handler serves /metrics and /healthz.
func (m *metrics) handler(now func() time.Time) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if problems := m.health(now()); len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "unhealthy")
			for _, p := range problems {
				fmt.Fprintln(w, "- "+p)
			}
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// serveMetrics listens on addr and serves until ctx is done.
func (m *metrics) serve(ctx context.Context, ln net.Listener, now func() time.Time) error {
	return serveUntil(ctx, &http.Server{Handler: m.handler(now), ReadHeaderTimeout: 10 * time.Second}, ln)
}

// serveUntil serves srv on ln until ctx is done, then shuts it down
// within 5 seconds.
func serveUntil(ctx context.Context, srv *http.Server, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	})
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// spoolCollector counts the spool's folders when scraped, at most every
// spoolCountEvery (a large queue is not listed on every scrape).
type spoolCollector struct {
	dirs spool.Dirs
	now  func() time.Time

	mu   sync.Mutex
	at   time.Time
	last spoolCounts
}

const spoolCountEvery = 10 * time.Second

type spoolCounts struct {
	byState map[string]int
	oldest  time.Time // of queued, deferred and held messages
	waiting int       // queued + active + deferred-and-due
}

var (
	depthDesc  = prometheus.NewDesc("smtpq_queue_messages", "Messages in the spool by state (sent is not counted: see smtpq_messages_total).", []string{"state"}, nil)
	oldestDesc = prometheus.NewDesc("smtpq_oldest_message_age_seconds", "Age of the oldest message not yet sent or given up (queued, active, deferred or held).", nil, nil)
)

func (c *spoolCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- depthDesc
	ch <- oldestDesc
}

func (c *spoolCollector) Collect(ch chan<- prometheus.Metric) {
	sc := c.counts()
	for _, st := range []string{"queued", "active", "deferred", "held", "undeliverable"} {
		ch <- prometheus.MustNewConstMetric(depthDesc, prometheus.GaugeValue, float64(sc.byState[st]), st)
	}
	age := 0.0
	if !sc.oldest.IsZero() {
		age = c.now().Sub(sc.oldest).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(oldestDesc, prometheus.GaugeValue, age)
}

func (c *spoolCollector) counts() spoolCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if c.last.byState != nil && now.Sub(c.at) < spoolCountEvery {
		return c.last
	}
	sc := spoolCounts{byState: map[string]int{}}
	count := func(dir, state string, track bool) {
		spool.EachName(dir, func(name string) {
			if !queuefile.IsQueueName(name) {
				return
			}
			sc.byState[state]++
			if track {
				if t, ok := queuefile.NameTime(name); ok && (sc.oldest.IsZero() || t.Before(sc.oldest)) {
					sc.oldest = t
				}
			}
		})
	}
	q := c.dirs.Queue
	count(q, "queued", true)
	spool.EachName(filepath.Join(q, spool.ActiveDir), func(inst string) {
		count(filepath.Join(q, spool.ActiveDir, inst), "active", true)
	})
	spool.EachName(filepath.Join(q, spool.DeferredDir), func(bucket string) {
		count(filepath.Join(q, spool.DeferredDir, bucket), "deferred", true)
	})
	count(filepath.Join(q, spool.HoldDir), "held", true)
	count(c.dirs.Undeliverable, "undeliverable", false)
	sc.waiting = sc.byState["queued"] + sc.byState["active"]
	c.at, c.last = now, sc
	return sc
}
