package stages

import (
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// RetryPolicy says when a transient failure is tried again.
type RetryPolicy struct {
	MinBackoff  time.Duration // delay after the first failure; doubles after each
	MaxBackoff  time.Duration // the doubling stops here
	MaxAttempts int           // after this many attempts, Undeliverable
	MaxAge      time.Duration // after this long since enqueueing, Undeliverable (expired)
}

// Backoff returns the delay before attempt n+1 after n failed attempts:
// MinBackoff doubled n-1 times, capped at MaxBackoff, plus up to 10% random
// jitter so that a restart does not send every retry at once.
func (p RetryPolicy) Backoff(n int) time.Duration {
	d := p.MinBackoff
	for i := 1; i < n && d < p.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, p.MaxBackoff)
	if d > 0 {
		d += time.Duration(rand.Int64N(int64(d)/10 + 1))
	}
	return d
}

// Filed is reported for every job the Archiver files, for logs and metrics.
type Filed struct {
	Job     *Job
	Verdict Verdict // what was decided: Sent, Deferred (deferred), Failed (failed), Parked, Returned, Held
	Path    string  // where the message now is (Sent or Undeliverable), if filed there
	Err     error   // the filing failed: the file stayed where it was
}

// String describes the filing for a test's or a log's message: the
// verdict, where the message went, the error that decided it and a failed
// filing's error.
func (f Filed) String() string {
	s := f.Verdict.String()
	if f.Job != nil {
		s = f.Job.Name + ": " + s
		if f.Job.Outcome.Class != "" {
			s += " (" + string(f.Job.Outcome.Class) + ")"
		}
		if e := f.Job.Outcome.Err; e != nil {
			s += ": " + e.Error()
		}
	}
	if f.Path != "" {
		s += " -> " + f.Path
	}
	if f.Err != nil {
		s += "; filing failed: " + f.Err.Error()
	}
	return s
}

// Archiver files every job it receives according to its Outcome: Sent,
// Undeliverable with an XML log, the deferred folder (with its state, for a
// retry), or back to the queue. Every write is durable before the previous
// copy is removed. It is the end of the pipeline: it never stops reading
// until its input is closed, so no stage can block on it forever.
type Archiver struct {
	Spool           Sink
	Retry           RetryPolicy
	DeleteAfterSend bool
	Clock           Clock
	Log             *zap.Logger
	// OnFiling, if set, is called before each filing, with the filing
	// about to be made (no Path, no Err); OnFiled follows it with the
	// result. What must survive a crash between the filing and OnFiled (an
	// event, a notice about the filing) is made durable here.
	OnFiling func(Filed)
	// OnFiled, if set, is called after each job is filed (metrics, tests).
	OnFiled func(Filed)

	reloaded atomic.Pointer[RetryPolicy] // set by SetRetry; overrides Retry
}

// SetRetry replaces the retry policy while the Archiver runs (config
// reload); it is safe to call from any goroutine.
func (a *Archiver) SetRetry(p RetryPolicy) { a.reloaded.Store(&p) }

func (a *Archiver) policy() RetryPolicy {
	if p := a.reloaded.Load(); p != nil {
		return *p
	}
	return a.Retry
}

// Run files jobs from in until it is closed. Several Runs may share one
// Archiver and one channel: filing a job touches only that job's files.
//
// A job that can be filed nowhere (its filing failed, and so did deferring
// it: the queue's own folders are full, or their fsyncs fail) stays where
// it is, in the active folder, and with this Run, which tries its filing
// again, as it was decided (the server is not asked again), every
// refileEvery until it works. What is still unfiled when in is closed is
// left in the active folder; the spool then keeps its journal too (see
// Spool.Close), so that the next start files it as the server answered.
func (a *Archiver) Run(in <-chan *Job) {
	var unfiled []*Job
	var again <-chan time.Time
	for in != nil {
		select {
		case job, ok := <-in:
			if !ok {
				in = nil
				continue
			}
			if !a.file(job) {
				unfiled = append(unfiled, job)
			}
		case <-again:
			again = nil
			unfiled = a.refile(unfiled)
		}
		if len(unfiled) > 0 && again == nil {
			again = a.Clock.After(a.refileEvery())
		}
	}
	for _, job := range a.refile(unfiled) {
		a.Log.Error("the message stays in the active folder until the next start",
			zap.String("id", job.ID), zap.String("file", job.Name))
	}
}

// refileEvery is how often the filing of a job that could be filed nowhere
// is tried again: the retry policy's first backoff, between 100ms and 30s
// (a full or failing disk is fixed by an operator, not by waiting).
func (a *Archiver) refileEvery() time.Duration {
	return min(max(a.policy().MinBackoff, 100*time.Millisecond), 30*time.Second)
}

// refile tries again to file jobs, and returns those still unfiled.
func (a *Archiver) refile(jobs []*Job) []*Job {
	left := jobs[:0]
	for _, job := range jobs {
		if !a.place(job, a.Clock.Now()) {
			left = append(left, job)
		}
	}
	return left
}

// file accounts for the attempt in job's state, decides its fate from its
// outcome and the retry policy, and files it (place). It reports false if
// the job could be filed nowhere: it is still in the active folder.
func (a *Archiver) file(job *Job) bool {
	defer job.dropBody()
	now := a.Clock.Now()
	o := &job.Outcome
	if o.Attempted {
		job.State.Attempts++
	}
	// Merge the per-recipient results into the state: accepted recipients
	// are never sent again, failed ones are kept for the final log.
	for _, r := range o.Rcpts {
		switch r.Status {
		case RcptDelivered:
			job.State.AddDone(r.Addr)
		case RcptFailed:
			job.State.Failed = append(job.State.Failed, r)
		}
	}
	retry := a.policy()
	if o.Verdict == Deferred {
		if o.Err == nil {
			o.Err = Temporaryf("local", "transient failure")
		}
		age := now.Sub(job.State.Queued)
		switch {
		case retry.MaxAge > 0 && age >= retry.MaxAge:
			o.Verdict, o.Class = Failed, ClassExpired
			o.Err.Text += "; given up: queued " + age.Round(time.Second).String() + " ago (retry.max_age)"
		case job.State.Attempts >= retry.MaxAttempts:
			o.Verdict, o.Class = Failed, ClassPermanent
			o.Err.Text += "; given up after " + strconv.Itoa(job.State.Attempts) + " attempts (retry.max_attempts)"
		}
	}
	if o.Verdict == Sent && len(job.State.Failed) > 0 {
		// The last pending recipients were accepted, but others failed for
		// good in an earlier attempt: as when that happens within one
		// attempt, the message is undeliverable (its log lists who got it).
		first := job.State.Failed[0]
		o.Verdict, o.Class = Failed, ClassPermanent
		o.Err = &Error{Step: "rcpt", Code: first.Code, Enhanced: first.Enhanced, Text: first.Text}
	}
	if o.Attempted && o.Err != nil {
		job.State.LastError = o.Err.Error()
		job.State.AddHistory(now, o.Verdict.String()+": "+o.Err.Error())
	}
	return a.place(job, now)
}

// place files job as its outcome says. If that fails, the message is still
// safe where it was (nothing is removed before its new copy is durable):
// it is deferred, to be tried again soon. If that fails too, place reports
// false and the job is still in the active folder.
func (a *Archiver) place(job *Job, now time.Time) bool {
	o := &job.Outcome
	retry := a.policy()
	f := Filed{Job: job, Verdict: o.Verdict}
	if a.OnFiling != nil {
		a.OnFiling(f)
	}
	switch o.Verdict {
	case Sent:
		f.Path, f.Err = a.Spool.FileSent(job, a.DeleteAfterSend)
	case Failed:
		var log []byte
		log, f.Err = BuildXMLLog(job, now)
		if f.Err == nil {
			f.Path, f.Err = a.Spool.FileUndeliverable(job, log)
		}
	case Deferred:
		f.Err = a.Spool.Defer(job, now.Add(retry.Backoff(job.State.Attempts)))
	case Parked:
		f.Err = a.Spool.Park(job, o.Due)
	case Returned:
		f.Err = a.Spool.Return(job)
	case Held:
		f.Err = a.Spool.Hold(job)
	default:
		f.Err = a.Spool.Return(job)
	}
	placed := true
	if f.Err != nil {
		// Put it back in the queue to be tried again; its state says
		// whether the server already accepted it.
		a.Log.Error("filing a message failed; returning it to the queue",
			zap.String("id", job.ID), zap.String("file", job.Name), zap.String("result", f.Verdict.String()), zap.Error(f.Err))
		if o.Verdict == Sent {
			job.State.Accepted = true
			if err := a.Spool.WriteState(job.ID, &job.State); err != nil {
				a.Log.Error("recording the acceptance", zap.String("id", job.ID), zap.String("file", job.Name), zap.Error(err))
			}
		}
		if o.Verdict != Returned {
			// Try again soon: a full or unwritable folder is usually fixed
			// by an operator, not by waiting for the backoff.
			if err := a.Spool.Defer(job, now.Add(min(retry.MinBackoff, time.Minute))); err != nil {
				a.Log.Error("deferring it failed too: its filing is tried again while the service runs",
					zap.String("id", job.ID), zap.String("file", job.Name), zap.Error(err))
			}
		}
		// A move that took place (into a bucket, or the ready folder) has
		// handed the file back to the spool, even if its syncs failed: the
		// Scanner takes it from there. Else it is still ours.
		placed = job.Msg.Released()
	}
	a.logFiled(f)
	if a.OnFiled != nil {
		a.OnFiled(f)
	}
	return placed
}

func (a *Archiver) logFiled(f Filed) {
	j := f.Job
	if f.Verdict == Returned || f.Verdict == Parked || f.Verdict == Held {
		a.Log.Debug(f.Verdict.String(), zap.String("id", j.ID), zap.String("file", j.Name), zap.String("host", j.Host()))
		return
	}
	fields := []zap.Field{
		zap.String("id", j.ID), zap.String("file", j.Name), zap.String("host", j.Host()),
		zap.Int("recipients", len(j.Pending)), zap.Int("attempt", j.State.Attempts),
		zap.Duration("duration", j.Outcome.Duration),
	}
	if e := j.Outcome.Err; e != nil {
		fields = append(fields, zap.Int("code", e.Code), zap.String("error", e.Error()))
	} else if f.Verdict == Sent && j.Outcome.Attempted {
		fields = append(fields, zap.Int("code", 250))
	}
	if j.Outcome.Class != "" {
		fields = append(fields, zap.String("class", string(j.Outcome.Class)))
	}
	if f.Path != "" {
		fields = append(fields, zap.String("path", f.Path))
	}
	if j.State.Possible {
		// An earlier attempt got no reply after the data: the server may
		// have delivered it then too.
		fields = append(fields, zap.Bool("possible_duplicate", true))
	}
	switch {
	case f.Err != nil:
		a.Log.Error(f.Verdict.String()+" (filing failed)", append(fields, zap.NamedError("filing_error", f.Err))...)
	case f.Verdict == Sent:
		a.Log.Info("sent", fields...)
	case f.Verdict == Deferred:
		a.Log.Warn("deferred", append(fields, zap.Time("next_attempt", j.State.NextAttempt))...)
	default:
		a.Log.Error("failed", fields...)
	}
}
