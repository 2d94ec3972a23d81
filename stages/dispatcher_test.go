package stages_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// dispatcherRig runs a Dispatcher with hand-driven workers: the test sends
// each Request itself and looks at each Assignment.
type dispatcherRig struct {
	t        *testing.T
	in       chan *stages.Job
	requests chan *stages.Request
	out      chan *stages.Job
	cancel   context.CancelFunc
	done     chan struct{}
}

func newDispatcherRig(t *testing.T, workers int, lim stages.Limits, opts ...func(*stages.Dispatcher)) *dispatcherRig {
	t.Helper()
	r := &dispatcherRig{
		t:        t,
		in:       make(chan *stages.Job),
		requests: make(chan *stages.Request),
		out:      make(chan *stages.Job, 1024),
		done:     make(chan struct{}),
	}
	d := &stages.Dispatcher{
		Limits:  func(string) stages.Limits { return lim },
		Workers: workers,
		Clock:   stages.SystemClock{},
		Log:     zap.NewNop(),
	}
	for _, o := range opts {
		o(d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.done)
		d.Run(ctx, r.in, r.requests, r.out)
	}()
	return r
}

func rigJob(i int, host string) *stages.Job {
	return &stages.Job{
		Name:    fmt.Sprintf("20261127T153826.%09dZ-rig.eml", i),
		Route:   stages.Route{Host: host, Port: 25, TLS: queuefile.TLSNone},
		Pending: []string{"user@example.org"},
	}
}

// ask sends a worker's Request and waits for the Assignment.
func (r *dispatcherRig) ask(req *stages.Request) stages.Assignment {
	r.t.Helper()
	reply := make(chan stages.Assignment, 1)
	req.Reply = reply
	select {
	case r.requests <- req:
	case <-time.After(5 * time.Second):
		r.t.Fatal("the Dispatcher does not take requests")
	}
	select {
	case a := <-reply:
		return a
	case <-time.After(5 * time.Second):
		r.t.Fatal("no assignment within 5 s")
		return stages.Assignment{}
	}
}

// stop shuts the Dispatcher down and asks for work as each worker until
// told to stop. The Dispatcher may still answer a request with work before
// it sees the shutdown: the worker then gives that work back unsent, as a
// Sender does, and it goes to out as returned.
func (r *dispatcherRig) stop(workers int) {
	r.t.Helper()
	r.cancel()
	close(r.in)
	for w := range workers {
		var unsent []*stages.Job
		for range 100 {
			a := r.ask(&stages.Request{Worker: w, Unsent: unsent})
			if a.Stop {
				unsent = nil
				break
			}
			unsent = nil
			if a.Job != nil {
				unsent = append([]*stages.Job{a.Job}, a.More...)
			}
		}
		if unsent != nil {
			r.t.Fatalf("worker %d is never told to stop", w)
		}
	}
	<-r.done
}

func names(a stages.Assignment) []string {
	var n []string
	for _, j := range append([]*stages.Job{a.Job}, a.More...) {
		n = append(n, j.Name)
	}
	return n
}

// A backlog goes out in batches of the same route, each worker its share,
// in queue order; jobs a worker gives back unsent come first next time.
func TestDispatcherBatches(t *testing.T) {
	defer goleak.VerifyNone(t)
	r := newDispatcherRig(t, 2, stages.Limits{MaxConnections: 2, IdleTimeout: time.Minute})
	const n = 40
	for i := range n {
		r.in <- rigJob(i, "10.0.0.1")
	}
	a := r.ask(&stages.Request{Worker: 0})
	got := names(a)
	if len(got) != 16 {
		t.Fatalf("first batch has %d jobs, want 16 (the most one batch carries): %v", len(got), got)
	}
	for i, name := range got {
		if want := rigJob(i, "").Name; name != want {
			t.Fatalf("batch[%d] = %s, want %s (queue order)", i, name, want)
		}
	}
	// The worker sent three, then its session broke: the rest comes back.
	conn := a.Job.Route
	unsent := append([]*stages.Job{a.Job}, a.More...)[3:]
	b := r.ask(&stages.Request{Worker: 0, Unsent: unsent, Report: &stages.HostReport{Host: conn.Host, OK: true}})
	if got := names(b); got[0] != unsent[0].Name {
		t.Fatalf("after giving back %d jobs, the next batch starts with %s, want %s", len(unsent), got[0], unsent[0].Name)
	}
	// 40 - 3 sent = 37 queued before this batch: its share is capped at 16;
	// the second worker gets the next jobs, none twice.
	seen := map[string]bool{}
	for _, name := range names(b) {
		seen[name] = true
	}
	c := r.ask(&stages.Request{Worker: 1})
	for _, name := range names(c) {
		if seen[name] {
			t.Fatalf("%s assigned to both workers", name)
		}
	}
	r.stop(2)
	// Whatever was still queued at shutdown went back, as Returned.
	returned := 0
	for len(r.out) > 0 {
		if j := <-r.out; j.Outcome.Verdict == stages.Returned {
			returned++
		}
	}
	if want := n - 3 - len(names(b)) - len(names(c)); returned != want {
		t.Fatalf("%d jobs returned at shutdown, want %d", returned, want)
	}
}

// A short queue is shared: a batch takes no more than its host's fair share
// among its connections, so that the other worker is not left idle.
func TestDispatcherBatchFairShare(t *testing.T) {
	defer goleak.VerifyNone(t)
	r := newDispatcherRig(t, 2, stages.Limits{MaxConnections: 2, IdleTimeout: time.Minute})
	for i := range 6 {
		r.in <- rigJob(i, "10.0.0.1")
	}
	a := r.ask(&stages.Request{Worker: 0})
	b := r.ask(&stages.Request{Worker: 1})
	// Half of the 6 to the first, half of the other 3 to the second.
	if len(names(a)) != 3 || len(names(b)) != 2 {
		t.Fatalf("6 jobs on 2 connections went %d and %d, want 3 and 2", len(names(a)), len(names(b)))
	}
	r.stop(2)
	if len(r.out) != 1 {
		t.Fatalf("%d jobs returned at shutdown, want the 1 not assigned", len(r.out))
	}
}

// A rate-limited host never gets more jobs in a batch than its rate allows.
func TestDispatcherBatchKeepsRate(t *testing.T) {
	defer goleak.VerifyNone(t)
	r := newDispatcherRig(t, 1, stages.Limits{MaxConnections: 1, Rate: 1, Burst: 4, IdleTimeout: time.Minute})
	for i := range 20 {
		r.in <- rigJob(i, "10.0.0.1")
	}
	a := r.ask(&stages.Request{Worker: 0})
	if got := len(names(a)); got != 4 {
		t.Fatalf("batch of %d jobs for a host at 1/s with a burst of 4, want 4", got)
	}
	r.stop(1)
}

// fakeClock is a clock that moves only when told; its timers never fire.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(time.Duration) <-chan time.Time { return nil }

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// A host that took a hundred jobs in its first second is fast: when its
// queue is full just after that second, the next job waits for room (kept
// back) rather than being parked for later, even though no full window has
// measured the host's rate yet.
func TestDispatcherKeepsBackForAFastNewHost(t *testing.T) {
	defer goleak.VerifyNone(t)
	clock := &fakeClock{now: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)}
	r := newDispatcherRig(t, 1, stages.Limits{MaxConnections: 1, IdleTimeout: time.Hour}, func(d *stages.Dispatcher) {
		d.Clock = clock
		d.MaxQueuedPerHost = 100
	})
	for i := range 100 {
		r.in <- rigJob(i, "10.0.0.1")
	}
	var conn *stages.Route
	for taken := 0; taken < 100; {
		a := r.ask(&stages.Request{Worker: 0, Conn: conn})
		route := a.Job.Route
		conn = &route
		taken += len(names(a))
	}
	for i := 100; i < 200; i++ {
		r.in <- rigJob(i, "10.0.0.1")
	}
	clock.advance(time.Second + time.Millisecond)
	r.in <- rigJob(200, "10.0.0.1") // the queue is full
	r.ask(&stages.Request{Worker: 0, Conn: conn})
	if len(r.out) != 0 {
		j := <-r.out
		t.Fatalf("a job for a host taking 100 jobs a second was %v (due in %v), want it kept back",
			j.Outcome.Verdict, j.Outcome.Due.Sub(clock.Now()))
	}
	r.stop(1)
}

// A rate-limited host keeps at most ten seconds of its rate queued (at
// least 16): the surplus is parked and the Scanner is told to hold the
// host's route tags until then, once, not per parked job.
func TestDispatcherParksRateLimitedSurplusAndHoldsItsTags(t *testing.T) {
	defer goleak.VerifyNone(t)
	holds := make(chan stages.RouteHold, 4)
	r := newDispatcherRig(t, 1, stages.Limits{MaxConnections: 1, Rate: 1, Burst: 1, IdleTimeout: time.Minute}, func(d *stages.Dispatcher) {
		d.Holds = holds
		d.Tags = func(j *stages.Job) []string { return []string{"beef"} }
	})
	for i := range 18 {
		r.in <- rigJob(i, "10.0.0.1")
	}
	r.ask(&stages.Request{Worker: 0}) // a round trip: the last is admitted by now
	if len(r.out) != 2 {
		t.Fatalf("%d jobs out after 18 for a host at 1/s, want the 17th and 18th parked", len(r.out))
	}
	j := <-r.out
	if j.Outcome.Verdict != stages.Parked || j.Outcome.Due.Before(time.Now()) {
		t.Fatalf("17th job: %v due %v, want parked for later", j.Outcome.Verdict, j.Outcome.Due)
	}
	if len(holds) != 1 {
		t.Fatalf("%d holds sent for two parked jobs, want 1", len(holds))
	}
	h := <-holds
	if len(h.Tags) != 1 || h.Tags[0] != "beef" || !h.Until.Equal(j.Outcome.Due) {
		t.Fatalf("hold %+v, want tag beef until the parked job is due (%v)", h, j.Outcome.Due)
	}
	r.stop(1)
	if _, ok := <-holds; ok {
		t.Fatal("Run returned without closing Holds")
	}
}

// queue retry for a held host ends the hold at once: the deferred files
// the command moves back to the queue folder are to be sent now.
func TestDispatcherRetryReleasesRouteHold(t *testing.T) {
	defer goleak.VerifyNone(t)
	holds := make(chan stages.RouteHold, 4)
	controls := make(chan stages.HostControl)
	r := newDispatcherRig(t, 1, stages.Limits{MaxConnections: 1, Rate: 1, Burst: 1, IdleTimeout: time.Minute}, func(d *stages.Dispatcher) {
		d.Holds = holds
		d.Controls = controls
		d.Tags = func(j *stages.Job) []string { return []string{"beef"} }
	})
	for i := range 17 {
		r.in <- rigJob(i, "10.0.0.1")
	}
	r.ask(&stages.Request{Worker: 0})
	if h := <-holds; h.Until.IsZero() {
		t.Fatalf("first hold %+v, want one with an end", h)
	}
	controls <- stages.HostControl{Op: stages.OpRetry, Host: "10.0.0.1"}
	r.ask(&stages.Request{Worker: 0}) // a round trip: the control is handled by now
	select {
	case h := <-holds:
		if len(h.Tags) != 1 || h.Tags[0] != "beef" || !h.Until.IsZero() {
			t.Fatalf("after retry: %+v, want the release of beef", h)
		}
	default:
		t.Fatal("retry sent no release of the host's hold")
	}
	r.stop(1)
}

// waitingWorkers sends a Request for each of ids, without waiting for the
// answers, and returns the channels the answers come on.
func (r *dispatcherRig) waitingWorkers(ids ...int) map[int]chan stages.Assignment {
	r.t.Helper()
	replies := map[int]chan stages.Assignment{}
	for _, id := range ids {
		replies[id] = make(chan stages.Assignment, 1)
		select {
		case r.requests <- &stages.Request{Worker: id, Reply: replies[id]}:
		case <-time.After(5 * time.Second):
			r.t.Fatal("the Dispatcher does not take requests")
		}
	}
	return replies
}

// answer waits for the answer to a worker's Request.
func (r *dispatcherRig) answer(id int, reply chan stages.Assignment) stages.Assignment {
	r.t.Helper()
	select {
	case a := <-reply:
		return a
	case <-time.After(5 * time.Second):
		r.t.Fatalf("worker %d got no answer within 5 s", id)
		return stages.Assignment{}
	}
}

// shutdown cancels the Dispatcher and asks for work as each of the live
// workers, giving back what they are handed, until each is told to stop;
// the Dispatcher must then return.
func (r *dispatcherRig) shutdown(live ...int) {
	r.t.Helper()
	r.cancel()
	close(r.in)
	for _, w := range live {
		var unsent []*stages.Job
		for a := r.ask(&stages.Request{Worker: w}); !a.Stop; a = r.ask(&stages.Request{Worker: w, Unsent: unsent}) {
			unsent = append([]*stages.Job{a.Job}, a.More...)
		}
	}
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		r.t.Fatal("the Dispatcher did not return once every live worker was stopped")
	}
}

// max_threads lowered while workers are idle stops the surplus at once:
// they are not handed the next jobs first. (They used to be stopped only
// when they next asked, that is after a batch of work each.)
func TestDispatcherLoweredThreadsStopIdleWorkers(t *testing.T) {
	defer goleak.VerifyNone(t)
	controls := make(chan stages.HostControl)
	r := newDispatcherRig(t, 4, stages.Limits{MaxConnections: 4, IdleTimeout: time.Minute}, func(d *stages.Dispatcher) {
		d.Controls = controls
	})
	replies := r.waitingWorkers(0, 1, 2, 3)
	controls <- stages.HostControl{Op: stages.OpThreads, Workers: 1}
	for i := range 4 {
		r.in <- rigJob(i, "10.0.0.1")
	}
	var working []int
	for id, reply := range replies {
		if a := r.answer(id, reply); !a.Stop {
			working = append(working, id)
		}
	}
	if len(working) != 1 {
		t.Fatalf("after max_threads 1, workers %v were handed work, want one", working)
	}
	r.shutdown(working[0])
}

// max_threads raised again after it was lowered: the Dispatcher counts in
// the workers missing and says how many to start; while it shuts down, it
// says none.
func TestDispatcherRaisedThreadsAsksForNewWorkers(t *testing.T) {
	defer goleak.VerifyNone(t)
	controls := make(chan stages.HostControl)
	r := newDispatcherRig(t, 2, stages.Limits{MaxConnections: 4, IdleTimeout: time.Minute}, func(d *stages.Dispatcher) {
		d.Controls = controls
	})
	threads := func(n int) int {
		t.Helper()
		started := make(chan int, 1)
		controls <- stages.HostControl{Op: stages.OpThreads, Workers: n, Started: started}
		select {
		case k := <-started:
			return k
		case <-time.After(5 * time.Second):
			t.Fatal("no answer to threads")
			return 0
		}
	}
	replies := r.waitingWorkers(0, 1)
	if k := threads(1); k != 0 {
		t.Fatalf("lowering to 1 asks for %d new workers", k)
	}
	// One idle worker is stopped; the other stays waiting.
	live := -1
	select {
	case a := <-replies[0]:
		live = 1
		if !a.Stop {
			t.Fatalf("worker 0 was answered %+v, want stop", a)
		}
	case a := <-replies[1]:
		live = 0
		if !a.Stop {
			t.Fatalf("worker 1 was answered %+v, want stop", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no idle worker was stopped after lowering to 1")
	}
	if k := threads(3); k != 2 {
		t.Fatalf("raising from 1 to 3 asks for %d new workers, want 2", k)
	}
	if k := threads(3); k != 0 {
		t.Fatalf("3 again asks for %d new workers, want 0", k)
	}
	// The two new workers (ids 2 and 3) take work beside the one left.
	for i := range 3 {
		r.in <- rigJob(i, "10.0.0.1")
	}
	if a := r.answer(live, replies[live]); a.Stop || a.Job == nil {
		t.Fatalf("worker %d was answered %+v, want a job", live, a)
	}
	for id, reply := range r.waitingWorkers(2, 3) {
		if a := r.answer(id, reply); a.Stop || a.Job == nil {
			t.Fatalf("new worker %d was answered %+v, want a job", id, a)
		}
	}
	r.cancel()
	if k := threads(8); k != 0 {
		t.Fatalf("while shutting down, raising asks for %d new workers, want 0", k)
	}
	r.shutdown(live, 2, 3)
}

// A host's circuit breaker is shared through Paused and OpPause: this
// Dispatcher says when it pauses a host, and a pause from another node keeps
// the host's jobs here until it is lifted.
func TestDispatcherSharesPauses(t *testing.T) {
	paused := make(chan time.Time, 4)
	controls := make(chan stages.HostControl)
	r := newDispatcherRig(t, 1, stages.Limits{MaxConnections: 1}, func(d *stages.Dispatcher) {
		d.Controls = controls
		d.Paused = func(host string, until time.Time) {
			if host == "10.0.0.1" {
				paused <- until
			}
		}
	})
	for i := range 3 {
		r.in <- rigJob(i, "10.0.0.1")
	}
	var report *stages.HostReport
	var unsent []*stages.Job
	for range 3 {
		// Each session fails to open: its batch but the first job goes
		// back with the report.
		a := r.ask(&stages.Request{Worker: 0, Report: report, Unsent: unsent})
		report, unsent = &stages.HostReport{Host: "10.0.0.1", Down: true}, a.More
	}
	controls <- stages.HostControl{Op: stages.OpPause, Host: "10.0.0.2", Until: time.Now().Add(time.Hour)}
	r.in <- rigJob(9, "10.0.0.2")
	replies := map[int]chan stages.Assignment{0: make(chan stages.Assignment, 1)}
	r.requests <- &stages.Request{Worker: 0, Report: report, Unsent: unsent, Reply: replies[0]}
	select {
	case until := <-paused:
		if !until.After(time.Now()) {
			t.Errorf("paused until %v, in the past", until)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("three failures in a row, and Paused was not told")
	}
	select {
	case a := <-replies[0]:
		t.Fatalf("a job of a host paused by another node was handed out: %v", names(a))
	case <-time.After(300 * time.Millisecond):
	}
	controls <- stages.HostControl{Op: stages.OpPause, Host: "10.0.0.2"} // lifted
	if a := r.answer(0, replies[0]); a.Job == nil || a.Job.Host() != "10.0.0.2" {
		t.Fatalf("after the pause was lifted: %+v", a)
	}
	r.stop(1)
}

// An idle session of one route of a host at its cap is closed as soon as a
// job of another route of that host (another port) waits for the slot, not
// at its idle timeout.
func TestDispatcherClosesIdleSessionForAnotherRoute(t *testing.T) {
	r := newDispatcherRig(t, 1, stages.Limits{MaxConnections: 1, IdleTimeout: time.Hour, MaxMessagesPerConn: 100})
	r.in <- rigJob(1, "10.0.0.1")
	a := r.ask(&stages.Request{Worker: 0})
	route := a.Job.Route
	// The worker sent it and waits, its session open and idle.
	reply := make(chan stages.Assignment, 1)
	r.requests <- &stages.Request{Worker: 0, Conn: &route, Reply: reply}
	other := rigJob(2, "10.0.0.1")
	other.Route.Port = 587
	r.in <- other
	if got := r.answer(0, reply); !got.Close {
		t.Fatalf("with a job of port 587 waiting for the host's one slot, the idle port-25 session got %+v, want Close", got)
	}
	a = r.ask(&stages.Request{Worker: 0}) // closed
	if a.Job == nil || a.Job.Route.Port != 587 {
		t.Fatalf("after the close: %+v, want the port-587 job", a)
	}
	r.stop(1)
}
