package pipeline_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
)

// sessionTracker counts the SMTP sessions in progress on several servers,
// from the Greeting step to the Quit step. The client holds its connection
// slot from before the TCP connect until after it has read the reply to
// QUIT, so every interval counted here lies inside the interval for which
// the client must account for the session: a maximum above a cap here is a
// cap the client really broke. (Server.MaxConcurrent counts until the server
// has closed its side, which happens slightly after the client has seen the
// 221, so a correct client can briefly overlap it.)
type sessionTracker struct {
	mu       sync.Mutex
	open     map[string]int
	max      map[string]int
	total    int
	maxTotal int
}

func newSessionTracker() *sessionTracker {
	return &sessionTracker{open: map[string]int{}, max: map[string]int{}}
}

// fault returns a Fault function for the server of host that tracks its
// sessions and makes each message take a moment, so that sessions overlap.
func (tr *sessionTracker) fault(host string) func(smtptest.FaultPoint) smtptest.Fault {
	return func(p smtptest.FaultPoint) smtptest.Fault {
		tr.mu.Lock()
		defer tr.mu.Unlock()
		switch p.Step {
		case smtptest.Greeting:
			tr.open[host]++
			tr.total++
			tr.max[host] = max(tr.max[host], tr.open[host])
			tr.maxTotal = max(tr.maxTotal, tr.total)
		case smtptest.Quit:
			tr.open[host]--
			tr.total--
		case smtptest.AfterDot:
			return smtptest.Fault{Stall: 15 * time.Millisecond}
		}
		return smtptest.Fault{}
	}
}

func TestHostAndThreadLimits(t *testing.T) {
	t.Parallel()
	const threads, perHost = 4, 20
	caps := map[string]int{"127.0.0.2": 2, "127.0.0.3": 1, "127.0.0.4": 3}
	hosts := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	tr := newSessionTracker()
	servers := map[string]*smtptest.Server{}
	for _, ip := range hosts {
		servers[ip] = startServer(t, ip, func(s *smtptest.Server) { s.Fault = tr.fault(ip) })
	}
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		c.MaxThreads = threads
		for ip, n := range caps {
			c.Hosts[ip] = hostLimits(n)
		}
	})
	// Queue everything first, so that all hosts compete from the start.
	for i := range perHost * len(hosts) {
		srv := servers[hosts[i%len(hosts)]]
		env.Enqueue(testMessage(i), srv.Params(fmt.Sprintf("user%d@example.org", i)))
	}
	env.Start(pipeline.Options{})

	wantAllSent(t, env, perHost*len(hosts))
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, ip := range hosts {
		if n := len(servers[ip].Messages()); n != perHost {
			t.Errorf("%s received %d messages, want %d", ip, n, perHost)
		}
		if tr.max[ip] > caps[ip] {
			t.Errorf("%s: %d sessions at once, max_connections is %d", ip, tr.max[ip], caps[ip])
		}
	}
	if tr.maxTotal > threads {
		t.Errorf("%d sessions at once over all hosts, max_threads is %d", tr.maxTotal, threads)
	}
	for _, ip := range hosts {
		// Informative only: see sessionTracker for why this count may
		// overlap by one without the client being at fault.
		t.Logf("%s: at most %d sessions (server's count: %d)", ip, tr.max[ip], servers[ip].MaxConcurrent())
	}
	t.Logf("at most %d sessions over all hosts", tr.maxTotal)
}

func TestSlowHostDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	release := newReleaser()
	stalled := newSignal()
	// The slow host takes every message in and then does not answer the
	// final dot until the test releases it.
	slow := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Fault = stallAt(smtptest.AfterDot, stalled, release)
	})
	fast := startServer(t, "127.0.0.3")
	env := pipelinetest.New(t, withHost("127.0.0.2", hostLimits(1)), func(c *pipeline.Config) {
		// The stall is the test's to end, not the client's.
		c.Timeouts.Data = pipeline.Duration(3 * pipelinetest.WaitTimeout)
	})
	var slowNames []string
	for i := range 5 {
		slowNames = append(slowNames, env.Enqueue(testMessage(i), slow.Params(fmt.Sprintf("slow%d@example.org", i))))
	}
	env.Start(pipeline.Options{})
	t.Cleanup(release.Open) // runs before the pipeline and the servers stop
	stalled.await(t, "the slow host to stall the first message")

	// Only now queue mail for the fast host: all of it must get through
	// while the slow host still holds its first message.
	for i := range 20 {
		env.Enqueue(testMessage(100+i), fast.Params(fmt.Sprintf("fast%d@example.org", i)))
	}
	if _, err := fast.WaitMessages(waitCtx(t), 20); err != nil {
		t.Fatalf("fast host, while the slow one stalls: %v", err)
	}
	if n := len(slow.Messages()); n != 0 {
		t.Fatalf("slow host accepted %d messages before it was released", n)
	}
	for _, name := range slowNames {
		if r := results(env, name); len(r) != 0 {
			t.Errorf("message %s for the slow host was filed (%v) while its host stalled", name, r)
		}
	}

	release.Open()
	wantAllSent(t, env, 25)
	if n := len(slow.Messages()); n != len(slowNames) {
		t.Errorf("slow host received %d messages, want %d", n, len(slowNames))
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	const n, rate = 10, 5.0
	srv := startServer(t, "127.0.0.2")
	l := hostLimits(2)
	l.Rate, l.Burst = rate, 1
	env := pipelinetest.New(t, withHost("127.0.0.2", l))
	for i := range n {
		env.Enqueue(testMessage(i), srv.Params(fmt.Sprintf("user%d@example.org", i)))
	}
	start := time.Now() // the rate limiter cannot have existed before this
	env.Start(pipeline.Options{})
	wantAllSent(t, env, n)
	var got []time.Time
	for _, m := range srv.Messages() {
		got = append(got, m.Received)
	}
	if len(got) != n {
		t.Fatalf("server received %d messages, want %d", len(got), n)
	}
	slices.SortFunc(got, func(a, b time.Time) int { return a.Compare(b) })
	// With a burst of 1 the k-th message (from 0) cannot be handed out
	// before k intervals have passed since the limiter was made, and it is
	// received after it was handed out. Lower bounds only: never flaky.
	interval := time.Duration(float64(time.Second) / rate)
	const slack = 5 * time.Millisecond // float rounding in the limiter
	for k, at := range got {
		if earliest := start.Add(time.Duration(k)*interval - slack); at.Before(earliest) {
			t.Errorf("message %d received %v after start, want at least %v", k+1, at.Sub(start), time.Duration(k)*interval)
		}
	}
	t.Logf("received over %v", got[n-1].Sub(got[0]))
}

func TestReusesConnections(t *testing.T) {
	t.Parallel()
	const n = 30
	srv := startServer(t, "127.0.0.2")
	env := pipelinetest.New(t, withHost("127.0.0.2", hostLimits(1)))
	for i := range n {
		env.Enqueue(testMessage(i), srv.Params(fmt.Sprintf("user%d@example.org", i)))
	}
	env.Start(pipeline.Options{})
	wantAllSent(t, env, n)
	if got := len(srv.Messages()); got != n {
		t.Fatalf("server received %d messages, want %d", got, n)
	}
	if s := srv.Sessions(); s > 3 {
		t.Errorf("%d sessions for %d messages to one host with max_connections 1: connections were not reused", s, n)
	}
}

func TestMaxMessagesPerConnection(t *testing.T) {
	t.Parallel()
	const n, perConn = 30, 5
	srv := startServer(t, "127.0.0.2")
	l := hostLimits(1)
	l.MaxMessagesPerConnection = perConn
	env := pipelinetest.New(t, withHost("127.0.0.2", l))
	for i := range n {
		env.Enqueue(testMessage(i), srv.Params(fmt.Sprintf("user%d@example.org", i)))
	}
	env.Start(pipeline.Options{})
	wantAllSent(t, env, n)
	msgs := srv.Messages()
	if len(msgs) != n {
		t.Fatalf("server received %d messages, want %d", len(msgs), n)
	}
	if s := srv.Sessions(); s < n/perConn {
		t.Errorf("%d sessions for %d messages with max_messages_per_connection %d, want at least %d", s, n, perConn, n/perConn)
	}
	perSession := map[int]int{}
	for _, m := range msgs {
		perSession[m.Session]++
	}
	for s, k := range perSession {
		if k > perConn {
			t.Errorf("session %d carried %d messages, want at most %d", s, k, perConn)
		}
	}
}
