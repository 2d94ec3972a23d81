package stages

import (
	"context"
	"math"
	"math/rand/v2"
	"time"

	"go.uber.org/zap"
	"golang.org/x/time/rate"
)

// Limits are the limits the Dispatcher keeps towards one SMTP host.
type Limits struct {
	MaxConnections     int           // sessions at once; at least 1
	Rate               float64       // messages per second; 0 means unlimited
	Burst              int           // messages above the rate at once; at least 1 when Rate > 0
	MaxMessagesPerConn int           // a session is closed after this many messages; 0 means unlimited
	IdleTimeout        time.Duration // an unused open session is closed after this
}

// Request is a Sender worker asking for work. It carries the route of the
// worker's open session (nil if it has none) and what the worker learnt
// about the host of its last attempt.
type Request struct {
	Worker int
	Conn   *Route
	Report *HostReport
	// Unsent are jobs of the worker's last Assignment that it did not try
	// because its session failed first; they go back to the front of their
	// queue.
	Unsent []*Job
	Reply  chan<- Assignment // buffered (1); the worker waits on it
}

// HostReport tells the Dispatcher how a host behaved.
type HostReport struct {
	Host string
	Down bool // connection refused or timed out, TLS or greeting failure, 421
	OK   bool // a session was established and answered
	Busy bool // no session opened: the host's sessions are all open on other nodes (SessionSlots)
}

// Assignment is the Dispatcher's answer to a Request: a job to send (on the
// open session if its route matches, else on a new one), or an instruction to
// close the open session, or to stop.
//
// When a host has a backlog, one Assignment carries a batch: Job and then
// More, all of the same route, sent one after the other on one session (a
// new one if the session reaches its message cap). A worker then asks the
// Dispatcher once per batch rather than once per message, which keeps the
// session busy: a round trip through the Dispatcher costs little CPU but,
// on a busy machine, a scheduling delay comparable to sending a message.
type Assignment struct {
	Job   *Job
	More  []*Job
	Limit int  // the session's message cap (Limits.MaxMessagesPerConn)
	Conns int  // the host's session cap (Limits.MaxConnections), for a count across nodes
	Close bool // close the open session (idle too long) and ask again
	Stop  bool // close the open session and return
}

// ControlOp names an operator's instruction to the running service: in a
// HostControl to the Dispatcher, and in a Control file of the queue
// commands (retry and hold only).
type ControlOp string

const (
	// OpRetry lifts the pause of Host, or of every host with All, so that
	// waiting mail is tried now.
	OpRetry ControlOp = "retry"
	// OpHold sends the queued jobs named by Name, Host or All to the
	// Archiver to be held.
	OpHold ControlOp = "hold"
	// OpReload reads Limits again for every host.
	OpReload ControlOp = "reload"
	// OpThreads keeps Workers workers: surplus ones are stopped, idle ones
	// at once, busy ones when they next ask for work; missing ones are
	// counted in, and their number is sent on Started.
	OpThreads ControlOp = "threads"
	// OpPause pauses Host until Until, as if it had failed here (another
	// node of a cluster paused it), unless it is paused longer already; a
	// zero Until lifts its pause, as OpRetry does for it.
	OpPause ControlOp = "pause"
)

// HostControl is an operator's instruction to a running Dispatcher.
type HostControl struct {
	Op      ControlOp
	Host    string
	All     bool
	Name    string    // for "hold": one message, by its id or its name
	Until   time.Time // for "pause"
	Workers int
	// Started, for "threads", receives (buffered, 1) how many new Sender
	// workers the caller must start now. The Dispatcher counts them before
	// it answers and does not return before each has asked for work and
	// been told to stop; when it is shutting down it answers 0. Whoever
	// gets no answer (the Dispatcher has returned) must start none.
	Started chan<- int
}

// Dispatcher holds parsed jobs in per-host queues and hands them to Sender
// workers while keeping, at the same time, the global cap (the number of
// workers is max_threads: one SMTP session each at most) and each host's
// connection cap and message rate. A host that is saturated, rate-limited or
// paused never holds up another host's mail: queues are per host and
// workers take whichever host can go now.
//
// Memory is bounded: at most MaxQueued jobs are held, and at most
// MaxQueuedPerHost for one host; beyond that a job is parked (sent back to
// the deferred folder, attempts unchanged) until its host's backlog is
// likely to have drained.
//
// When a host refuses connections, times out or answers 421, its connection
// cap is halved for a while; after three such failures in a row it is paused
// (circuit open) with a growing delay, then one probe session is allowed
// (half-open) before it is opened again. Waiting messages are not counted as
// attempts meanwhile.
type Dispatcher struct {
	Limits  func(host string) Limits
	Workers int // how many Sender workers send Requests; "threads" controls change it
	// Controls, if set, brings operator instructions (queue retry, config
	// reload) while running.
	Controls         <-chan HostControl
	MaxQueued        int // default 4096
	MaxQueuedPerHost int // default 1024
	// Holds and Tags, if set, keep a parked host's other files unopened in
	// the queue until its parked jobs are due: a RouteHold for the Scanner,
	// with the route tags (Tags) the host's files carry. A hold that finds
	// the channel full is dropped (see Scanner.Holds). Run closes Holds when
	// it returns.
	Holds chan<- RouteHold
	Tags  func(*Job) []string
	// Paused, if set, is told when this Dispatcher pauses a host after
	// repeated failures (until when) or an operator's retry lifts a pause
	// (zero time), so that the nodes of a cluster share a host's circuit
	// breaker (they pass it back as OpPause). It is called from Run's
	// goroutine: it must not block.
	Paused func(host string, until time.Time)
	Clock  Clock
	Log    *zap.Logger

	hosts   map[string]*hostState
	ring    []*hostState // hosts with queued work, for round robin
	next    int
	total   int
	workers map[int]*workerState // the live workers
	target  int                  // at most this many live workers (max_threads)
	stopped int                  // workers told to stop; Workers-stopped are live
}

type hostState struct {
	name    string
	lim     Limits
	limiter *rate.Limiter
	routes  []*routeQueue
	n       int // queued jobs
	conns   int // sessions open or being opened
	inRing  bool

	// throughput, measured over windows of at least a second: how fast the
	// host takes messages, to tell a backlog that drains soon from one that
	// does not
	winStart time.Time
	winCount int
	rate     float64 // messages per second handed out in the last window; 0 unknown

	heldUntil time.Time // end of the last RouteHold sent for it
	heldTags  []string  // and its tags

	// circuit breaker
	failures   int
	capacity   int // effective connection cap
	restoreAt  time.Time
	openUntil  time.Time
	halfOpen   bool
	pauseLevel int
}

type routeQueue struct {
	route Route
	jobs  []*Job
	head  int
}

func (q *routeQueue) len() int { return len(q.jobs) - q.head }

func (q *routeQueue) pop() *Job {
	j := q.jobs[q.head]
	q.jobs[q.head] = nil
	q.head++
	if q.head > 64 && q.head*2 > len(q.jobs) {
		q.jobs = append([]*Job(nil), q.jobs[q.head:]...)
		q.head = 0
	}
	return j
}

type workerState struct {
	id        int
	route     *Route
	host      *hostState
	waiting   *Request
	idleSince time.Time
	closing   *hostState // a host whose session the worker was told to close
}

// Run dispatches until in is closed and every worker has been told to stop.
// When ctx is done it stops assigning: queued jobs and jobs still arriving go
// to out as Returned (back to the queue), and each worker is told to stop when
// it next asks. Parked jobs also go to out. Run does not close out.
func (d *Dispatcher) Run(ctx context.Context, in <-chan *Job, requests <-chan *Request, out chan<- *Job) {
	if d.Holds != nil {
		defer close(d.Holds)
	}
	if d.MaxQueued <= 0 {
		d.MaxQueued = 4096
	}
	if d.MaxQueuedPerHost <= 0 {
		d.MaxQueuedPerHost = 1024
	}
	d.hosts = map[string]*hostState{}
	d.workers = map[int]*workerState{}
	d.target = d.Workers
	d.stopped = 0
	var (
		held        *Job // received, not yet queued: see admit
		inClosed    bool
		shutdown    bool
		done        = ctx.Done()
		timerAt     time.Time
		timerC      <-chan time.Time
		stopWaiting = func() {
			for _, w := range d.workers {
				if w.waiting != nil {
					d.stop(w, w.waiting)
				}
			}
		}
	)
	for !(inClosed && d.stopped == d.Workers) {
		now := d.Clock.Now()
		if !shutdown {
			wake := d.schedule(now)
			if held != nil && (wake.IsZero() || wake.After(now.Add(250*time.Millisecond))) {
				wake = now.Add(250 * time.Millisecond) // look at the kept-back job again
			}
			if inClosed && d.total == 0 {
				stopWaiting()
				if d.stopped == d.Workers {
					continue // all stopped: do not wait for another event
				}
			}
			if !wake.IsZero() && !wake.Equal(timerAt) {
				timerAt, timerC = wake, d.Clock.After(wake.Sub(now))
			}
		}
		if held != nil && !shutdown {
			// A job kept back because its host's queue was full: queue it
			// once there is room, or park it if the host turned slow.
			if d.admit(held, now, out) {
				held = nil
			}
		}
		inCh := in
		if inClosed || held != nil {
			inCh = nil
		}
		select {
		case job, ok := <-inCh:
			if !ok {
				inClosed = true
				continue
			}
			if shutdown {
				job.Outcome = Outcome{Verdict: Returned}
				out <- job
				continue
			}
			if !d.admit(job, now, out) {
				held = job
			}
		case c := <-d.Controls:
			switch c.Op {
			case OpHold:
				d.hold(c, out)
			case OpThreads:
				// A cancelled context is a shutdown even before its turn in
				// this select: no worker may start that nothing would answer.
				d.threads(c, shutdown || ctx.Err() != nil)
			default:
				d.control(c, now)
			}
		case req := <-requests:
			w := d.worker(req.Worker)
			d.requeue(req.Unsent, shutdown, out)
			d.report(req, w, now)
			if shutdown || (inClosed && d.total == 0) || d.Workers-d.stopped > d.target {
				d.stop(w, req)
				continue
			}
			w.waiting = req
			w.idleSince = now
		case <-timerC:
			timerAt, timerC = time.Time{}, nil
		case <-done:
			done = nil
			shutdown = true
			if held != nil {
				held.Outcome = Outcome{Verdict: Returned}
				out <- held
				held = nil
			}
			for _, h := range d.hosts {
				for _, q := range h.routes {
					for q.len() > 0 {
						j := q.pop()
						j.Outcome = Outcome{Verdict: Returned}
						out <- j
					}
				}
				h.routes, h.n = nil, 0
			}
			d.total, d.ring = 0, nil
			stopWaiting()
		}
	}
}

// hold takes the queued jobs that c names out of their queues and sends
// them to be held.
func (d *Dispatcher) hold(c HostControl, out chan<- *Job) {
	for _, h := range d.hosts {
		if !c.All && c.Name == "" && h.name != HostKey(c.Host) {
			continue
		}
		for _, q := range h.routes {
			kept := q.jobs[:q.head]
			for _, j := range q.jobs[q.head:] {
				if c.All || c.Name == "" || j.Name == c.Name || j.ID == c.Name {
					j.Outcome = Outcome{Verdict: Held}
					out <- j
					h.n--
					d.total--
					continue
				}
				kept = append(kept, j)
			}
			q.jobs = kept
		}
		routes := h.routes[:0]
		for _, q := range h.routes {
			if q.len() > 0 {
				routes = append(routes, q)
			}
		}
		h.routes = routes
	}
}

// stop tells a worker to close its session and return, and forgets it.
func (d *Dispatcher) stop(w *workerState, req *Request) {
	req.Reply <- Assignment{Stop: true}
	if w.route != nil {
		w.host.conns--
		w.route, w.host = nil, nil
	}
	w.waiting = nil
	delete(d.workers, w.id)
	d.stopped++
}

// threads keeps c.Workers workers (max_threads changed by a reload):
// surplus idle workers are stopped now, busy ones when they next ask; if
// workers are missing, they are counted in and the caller, told how many
// on c.Started, starts them. Stopped workers are gone for good: raising
// the count again needs new ones. While shutting down, none are started.
func (d *Dispatcher) threads(c HostControl, shutdown bool) {
	d.target = max(c.Workers, 1)
	start := 0
	if live := d.Workers - d.stopped; !shutdown && live < d.target {
		start = d.target - live
		d.Workers += start
	}
	if c.Started != nil {
		c.Started <- start
	}
	for _, w := range d.workers {
		if d.Workers-d.stopped <= d.target {
			break
		}
		if w.waiting != nil {
			d.stop(w, w.waiting)
		}
	}
}

func (d *Dispatcher) control(c HostControl, now time.Time) {
	switch c.Op {
	case OpRetry:
		for _, h := range d.hosts {
			if c.All || h.name == HostKey(c.Host) {
				if d.Paused != nil && !h.openUntil.IsZero() {
					d.Paused(h.name, time.Time{})
				}
				d.unpause(h)
			}
		}
	case OpPause:
		h := d.host(HostKey(c.Host), now)
		switch {
		case c.Until.IsZero():
			d.unpause(h)
		case c.Until.After(h.openUntil) && c.Until.After(now):
			// Then one probe session, as after a pause of its own.
			h.openUntil, h.halfOpen = c.Until, false
			h.failures = max(h.failures, 1)
			d.Log.Info("host paused by another node", zap.String("host", h.name), zap.Time("until", c.Until))
		}
	case OpReload:
		for _, h := range d.hosts {
			lim := d.Limits(h.name)
			lim.MaxConnections = max(lim.MaxConnections, 1)
			if h.capacity >= h.lim.MaxConnections {
				h.capacity = lim.MaxConnections
			}
			h.capacity = min(h.capacity, lim.MaxConnections)
			switch {
			case lim.Rate <= 0:
				h.limiter = nil
			case h.limiter == nil:
				h.limiter = rate.NewLimiter(rate.Limit(lim.Rate), max(lim.Burst, 1))
			default:
				h.limiter.SetLimitAt(now, rate.Limit(lim.Rate))
				h.limiter.SetBurstAt(now, max(lim.Burst, 1))
			}
			h.lim = lim
		}
	}
}

// unpause lifts h's pause and restores its connection cap.
func (d *Dispatcher) unpause(h *hostState) {
	h.failures, h.pauseLevel, h.halfOpen = 0, 0, false
	h.openUntil, h.restoreAt = time.Time{}, time.Time{}
	h.capacity = h.lim.MaxConnections
	d.releaseRoutes(h)
}

func (d *Dispatcher) worker(id int) *workerState {
	w, ok := d.workers[id]
	if !ok {
		w = &workerState{id: id}
		d.workers[id] = w
	}
	return w
}

func (d *Dispatcher) host(name string, now time.Time) *hostState {
	h, ok := d.hosts[name]
	if ok {
		return h
	}
	lim := d.Limits(name)
	lim.MaxConnections = max(lim.MaxConnections, 1)
	h = &hostState{name: name, lim: lim, capacity: lim.MaxConnections, winStart: now}
	if lim.Rate > 0 {
		h.limiter = rate.NewLimiter(rate.Limit(lim.Rate), max(lim.Burst, 1))
		// Start with a full bucket at the injected clock's time.
		h.limiter.SetLimitAt(now, rate.Limit(lim.Rate))
	}
	d.hosts[name] = h
	return h
}

// keepBackFor is the longest a full host queue may take to make room for one
// more job for the Dispatcher to wait for it rather than park the job.
const keepBackFor = 20 * time.Millisecond

// admit queues a job for its host and reports true, or, when memory bounds
// are hit, parks it (true) or keeps it back (false). When a fast host's queue
// is full (it takes a job every keepBackFor or faster), the job is kept back:
// the Dispatcher stops reading new jobs until that host takes one, which
// costs other hosts milliseconds and is much cheaper than parking (a rename
// and a state file write) for a busy but fast host. A slow, rate-limited or
// paused host's surplus is parked, so that it never holds up other hosts.
func (d *Dispatcher) admit(job *Job, now time.Time, out chan<- *Job) bool {
	h := d.host(job.Host(), now)
	if d.total >= d.MaxQueued || h.n >= d.MaxQueuedPerHost || h.n >= rateBacklog(h) {
		if d.slotTime(h, now) <= keepBackFor {
			return false
		}
		job.Outcome = Outcome{Verdict: Parked, Due: now.Add(d.parkDelay(h, now))}
		d.holdRoutes(h, job, now)
		out <- job
		return true
	}
	d.enqueue(h, job)
	return true
}

// holdRoutes asks the Scanner to leave h's other files unopened until its
// parked job is due; once per hold, not per parked job.
func (d *Dispatcher) holdRoutes(h *hostState, job *Job, now time.Time) {
	if d.Holds == nil || d.Tags == nil || now.Before(h.heldUntil) {
		return // no Scanner to tell, or the hold asked for last still runs
	}
	tags := d.Tags(job)
	select {
	case d.Holds <- RouteHold{Tags: tags, Until: job.Outcome.Due}:
		h.heldUntil, h.heldTags = job.Outcome.Due, tags
		d.Log.Info("host saturated: its surplus is parked and its other queued files are left unopened until then",
			zap.String("host", h.name), zap.Int("queued", h.n), zap.Time("until", job.Outcome.Due))
	default:
	}
}

// releaseRoutes ends h's hold, if any (queue retry: the deferred files it
// moves back to the queue folder are to be sent now).
func (d *Dispatcher) releaseRoutes(h *hostState) {
	if d.Holds == nil || h.heldTags == nil {
		return
	}
	select {
	case d.Holds <- RouteHold{Tags: h.heldTags}:
		h.heldUntil, h.heldTags = time.Time{}, nil
	default: // the hold ends by itself
	}
}

// rateBacklog is how many jobs a rate-limited host may have queued in
// memory: ten seconds of its rate, at least its burst and at least 16.
// Beyond that its jobs are parked (and its other files left unopened, see
// RouteHold): there is no point holding a thousand messages for a host
// that takes one a second while other hosts' mail waits behind them.
func rateBacklog(h *hostState) int {
	if h.limiter == nil {
		return math.MaxInt
	}
	return max(16, h.lim.Burst, int(h.lim.Rate*10))
}

// slotTime estimates how long h takes to take the next job from its queue:
// the inverse of its measured rate (or of its configured rate).
func (d *Dispatcher) slotTime(h *hostState, now time.Time) time.Duration {
	if now.Before(h.openUntil) {
		return h.openUntil.Sub(now)
	}
	perSecond := h.rate
	if el := now.Sub(h.winStart); el >= time.Second {
		// The current window is long enough to count: a host that stalled
		// after a good start must not look fast for ever. In the first
		// window (rate not yet known) it is all there is.
		cur := float64(h.winCount) / el.Seconds()
		if perSecond == 0 || cur < perSecond {
			perSecond = cur
		}
	}
	if h.limiter != nil && (perSecond == 0 || h.lim.Rate < perSecond) {
		perSecond = h.lim.Rate
	}
	if perSecond == 0 {
		if now.Sub(h.winStart) < time.Second {
			return 0 // not measured yet: assume it is fast
		}
		return time.Hour // nothing went out for a second or more
	}
	return time.Duration(float64(time.Second) / perSecond)
}

// enqueue adds a job to its host's queue.
func (d *Dispatcher) enqueue(h *hostState, job *Job) {
	q := d.routeQueue(h, job.Route)
	q.jobs = append(q.jobs, job)
	d.queued(h)
}

// routeQueue returns h's queue for r, adding it if there is none.
func (d *Dispatcher) routeQueue(h *hostState, r Route) *routeQueue {
	for _, q := range h.routes {
		if q.route == r {
			return q
		}
	}
	q := &routeQueue{route: r}
	h.routes = append(h.routes, q)
	return q
}

// queued accounts for one more job queued for h.
func (d *Dispatcher) queued(h *hostState) {
	h.n++
	d.total++
	if !h.inRing {
		h.inRing = true
		d.ring = append(d.ring, h)
	}
}

// count records a job handed out, for the host's measured rate.
func (h *hostState) count(now time.Time) {
	h.winCount++
	if el := now.Sub(h.winStart); el >= time.Second {
		h.rate = float64(h.winCount) / el.Seconds()
		h.winStart, h.winCount = now, 0
	}
}

// parkDelay estimates when a saturated host's backlog will have room again.
func (d *Dispatcher) parkDelay(h *hostState, now time.Time) time.Duration {
	delay := time.Second
	if h.limiter != nil {
		delay = max(delay, time.Duration(float64(h.n)/h.lim.Rate*float64(time.Second)))
	}
	if h.openUntil.After(now) {
		delay = max(delay, h.openUntil.Sub(now))
	}
	delay = min(delay, 10*time.Minute)
	// Jitter, so that parked messages do not all come back in one second.
	return delay + time.Duration(rand.Int64N(int64(delay/4)+1))
}

// report accounts for a worker's session and its host report.
func (d *Dispatcher) report(req *Request, w *workerState, now time.Time) {
	if w.closing != nil {
		w.closing.conns--
		w.closing = nil
	}
	if w.route != nil && (req.Conn == nil || *req.Conn != *w.route) {
		// The worker's session closed (error, cap, or on our instruction).
		w.host.conns--
		w.route, w.host = nil, nil
	}
	if req.Conn != nil && w.route == nil {
		// A session we did not account for (should not happen): adopt it.
		h := d.host(req.Conn.Host, now)
		r := *req.Conn
		w.route, w.host = &r, h
		h.conns++
	}
	if r := req.Report; r != nil {
		h := d.host(r.Host, now)
		switch {
		case r.Down:
			h.failures++
			h.capacity = max(1, h.capacity/2)
			h.restoreAt = now.Add(time.Minute)
			if h.failures >= 3 || h.halfOpen {
				h.pauseLevel++
				pause := min(5*time.Second<<min(h.pauseLevel-1, 6), 5*time.Minute)
				h.openUntil = now.Add(pause)
				h.halfOpen = false
				d.Log.Warn("host paused after repeated failures",
					zap.String("host", h.name), zap.Int("failures", h.failures), zap.Duration("pause", pause))
				if d.Paused != nil {
					d.Paused(h.name, h.openUntil)
				}
			}
		case r.Busy:
			// Other nodes hold the host's other sessions: this node's
			// share is what it has open now, for a second, after which
			// canOpen doubles it again.
			h.capacity = max(1, h.conns)
			h.restoreAt = now.Add(time.Second)
		case r.OK:
			if h.halfOpen || h.failures > 0 {
				h.halfOpen = false
				h.failures = 0
				h.pauseLevel = 0
			}
		}
	}
}

// canOpen reports whether a new session to h may be opened now.
func (d *Dispatcher) canOpen(h *hostState, now time.Time) bool {
	if !h.restoreAt.IsZero() && !now.Before(h.restoreAt) && h.capacity < h.lim.MaxConnections {
		h.capacity = min(h.lim.MaxConnections, h.capacity*2)
		h.restoreAt = now.Add(time.Minute)
	}
	if now.Before(h.openUntil) {
		return false
	}
	if !h.openUntil.IsZero() && h.failures > 0 {
		// Half-open: one probe session at a time.
		h.halfOpen = true
		return h.conns == 0
	}
	return h.conns < h.capacity
}

func rateAllows(h *hostState, now time.Time) bool {
	return h.limiter == nil || h.limiter.TokensAt(now) >= 1
}

// take removes the next job of h (of route r if given) if the rate allows.
func (d *Dispatcher) take(h *hostState, r *Route, now time.Time) *Job {
	if h.n == 0 || !rateAllows(h, now) {
		return nil
	}
	for _, q := range h.routes {
		if q.len() == 0 || (r != nil && q.route != *r) {
			continue
		}
		if h.limiter != nil {
			h.limiter.AllowN(now, 1)
		}
		h.count(now)
		j := q.pop()
		h.n--
		d.total--
		if q.len() == 0 {
			d.dropRoute(h, q)
		}
		return j
	}
	return nil
}

func (d *Dispatcher) dropRoute(h *hostState, q *routeQueue) {
	for i, rq := range h.routes {
		if rq == q {
			h.routes = append(h.routes[:i], h.routes[i+1:]...)
			break
		}
	}
}

// maxBatch is the most jobs one Assignment carries.
const maxBatch = 16

// assign gives j to the waiting worker w, whose session (open or to be
// opened) is for j's route, with a batch of more jobs of that route when the
// host has a backlog: its fair share among the host's sessions, at most
// maxBatch in all, and no more than its rate allows now.
func (d *Dispatcher) assign(w *workerState, j *Job, now time.Time) {
	a := Assignment{Job: j, Limit: w.host.lim.MaxMessagesPerConn, Conns: w.host.lim.MaxConnections}
	c := max(w.host.capacity, 1)
	share := min(maxBatch, (w.host.n+1+c-1)/c) // j counts: it was queued
	for len(a.More)+1 < share {
		m := d.take(w.host, w.route, now)
		if m == nil {
			break
		}
		a.More = append(a.More, m)
	}
	w.waiting.Reply <- a
	w.waiting = nil
}

// requeue puts jobs that a worker gave back unsent at the front of their
// queues, in order, or returns them to the queue folder when shutting down.
func (d *Dispatcher) requeue(jobs []*Job, shutdown bool, out chan<- *Job) {
	if shutdown {
		for _, j := range jobs {
			j.Outcome = Outcome{Verdict: Returned}
			out <- j
		}
		return
	}
	for i := len(jobs) - 1; i >= 0; i-- {
		j := jobs[i]
		h := d.host(j.Host(), d.Clock.Now())
		q := d.routeQueue(h, j.Route)
		q.jobs = append([]*Job{j}, q.jobs[q.head:]...)
		q.head = 0
		d.queued(h)
	}
}

// schedule hands queued jobs to waiting workers and closes idle sessions. It
// returns when it next needs to run (zero: only on an event).
func (d *Dispatcher) schedule(now time.Time) time.Time {
	// Reuse: a waiting worker with an open session takes the next job of
	// the same route.
	for _, w := range d.workers {
		if w.waiting != nil && w.route != nil {
			if j := d.take(w.host, w.route, now); j != nil {
				d.assign(w, j, now)
			}
		}
	}
	// New sessions: workers without one first, then idle ones, which close
	// theirs to serve another host.
	for pass := 0; pass < 2; pass++ {
		for _, w := range d.workers {
			if w.waiting == nil || (pass == 0) != (w.route == nil) {
				continue
			}
			h := d.nextHost(now)
			if h == nil {
				break
			}
			if w.route != nil {
				// The worker closes its session before opening the new
				// one; it stays counted at its old host until the worker's
				// next request says it is closed, so that no host is ever
				// over its cap, even for a moment.
				w.closing = w.host
			}
			j := d.take(h, nil, now)
			h.conns++
			r := j.Route
			w.route, w.host = &r, h
			d.assign(w, j, now)
		}
	}
	// Idle sessions past their timeout are closed; compute the next wake.
	var wake time.Time
	earliest := func(t time.Time) {
		if !t.IsZero() && (wake.IsZero() || t.Before(wake)) {
			wake = t
		}
	}
	for _, w := range d.workers {
		if w.waiting == nil || w.route == nil {
			continue
		}
		deadline := w.idleSince.Add(w.host.lim.IdleTimeout)
		if !now.Before(deadline) || d.otherRouteWaits(w, now) {
			w.waiting.Reply <- Assignment{Close: true}
			w.waiting = nil
			continue
		}
		earliest(deadline)
	}
	for _, h := range d.ring {
		if h.n == 0 {
			continue
		}
		if now.Before(h.openUntil) {
			earliest(h.openUntil)
		} else if h.limiter != nil && !rateAllows(h, now) {
			need := 1 - h.limiter.TokensAt(now)
			earliest(now.Add(time.Duration(need / h.lim.Rate * float64(time.Second))).Add(time.Millisecond))
		}
		if h.capacity < h.lim.MaxConnections {
			earliest(h.restoreAt)
		}
	}
	return wake
}

// otherRouteWaits reports whether w's idle session holds the slot that a
// job of another route of its host (another port, or other credentials)
// waits for: the host is at its cap, and the job could go now. The
// session is then closed at once, not at its idle timeout. (A 421 halves a
// host's cap, so one idle session can be all there is.)
func (d *Dispatcher) otherRouteWaits(w *workerState, now time.Time) bool {
	h := w.host
	if h.n == 0 || h.conns < h.capacity || now.Before(h.openUntil) || !rateAllows(h, now) {
		return false
	}
	for _, q := range h.routes {
		if q.len() > 0 && q.route != *w.route {
			return true
		}
	}
	return false
}

// nextHost returns, round robin, a host with queued work that may open a
// session and send now, or nil.
func (d *Dispatcher) nextHost(now time.Time) *hostState {
	// Drop hosts without work from the ring.
	kept := d.ring[:0]
	for _, h := range d.ring {
		if h.n > 0 {
			kept = append(kept, h)
		} else {
			h.inRing = false
		}
	}
	for i := len(kept); i < len(d.ring); i++ {
		d.ring[i] = nil
	}
	d.ring = kept
	for i := 0; i < len(d.ring); i++ {
		h := d.ring[(d.next+i)%len(d.ring)]
		if d.canOpen(h, now) && rateAllows(h, now) {
			d.next = (d.next + i + 1) % len(d.ring)
			return h
		}
	}
	return nil
}
