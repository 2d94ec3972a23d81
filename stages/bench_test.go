package stages_test

// Micro-benchmarks of the stages (issue 5, part 6): the Dispatcher's cost per
// job with fake Sender workers, and the spool's disk work per message. Run
// them with
//
//	go test -run '^$' -bench . -benchmem ./stages
//
// or through "make bench", which puts them in bench/out/results.md.

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// BenchmarkDispatcher measures what the Dispatcher adds per job: a job in on
// its input channel, a Request from a worker, the Assignment back, with the
// per-host accounting in between. The workers are fakes that take each job
// and ask again, as a Sender worker does after a delivery that costs nothing
// (they allocate their Requests as the real Sender does). A window of 64 jobs
// in flight keeps the feeder from outrunning the workers, as the Scanner and
// Parser would, so that nothing is parked. ns/op is per job.
func BenchmarkDispatcher(b *testing.B) {
	for _, tc := range []struct{ workers, hosts int }{{2, 1}, {8, 1}, {8, 16}} {
		b.Run(fmt.Sprintf("workers=%d/hosts=%d", tc.workers, tc.hosts), func(b *testing.B) {
			benchDispatch(b, tc.workers, tc.hosts)
		})
	}
}

func benchDispatch(b *testing.B, workers, hosts int) {
	// Jobs are built once and reused: the benchmark measures dispatching,
	// not the allocation of jobs (the Scanner's and Parser's).
	jobs := make([]*stages.Job, 1024)
	for i := range jobs {
		jobs[i] = &stages.Job{
			Name:    fmt.Sprintf("20261127T153826.%09dZ-bench.eml", i),
			Route:   stages.Route{Host: fmt.Sprintf("10.0.0.%d", i%hosts+1), Port: 25, TLS: queuefile.TLSNone},
			Pending: []string{"user@example.org"},
		}
	}
	perHost := max(workers/hosts, 1)
	d := &stages.Dispatcher{
		Limits: func(string) stages.Limits {
			return stages.Limits{MaxConnections: perHost, MaxMessagesPerConn: 100, IdleTimeout: time.Minute}
		},
		Workers: workers,
		Clock:   stages.SystemClock{},
		Log:     zap.NewNop(),
	}
	in := make(chan *stages.Job)
	requests := make(chan *stages.Request)
	out := make(chan *stages.Job)
	window := make(chan struct{}, 64)
	var parked atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // parked or returned jobs (none expected)
		defer wg.Done()
		for range out {
			parked.Add(1)
			<-window
		}
	}()
	for id := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			benchWorker(id, requests, window)
		}()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ReportAllocs()
	b.ResetTimer()
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.Run(ctx, in, requests, out)
	}()
	for i := 0; i < b.N; i++ {
		window <- struct{}{}
		in <- jobs[i%len(jobs)]
	}
	// Wait until every job has been taken (the window is all ours again),
	// then stop. Closing in alone would do, but Run then returns only at its
	// next timer (the idle timeout) when all workers are already waiting:
	// cancelling stops it at once, and with nothing queued nothing is
	// returned.
	for range cap(window) {
		window <- struct{}{}
	}
	close(in)
	cancel()
	<-done
	b.StopTimer()
	close(out)
	wg.Wait()
	if n := parked.Load(); n > 0 {
		b.ReportMetric(float64(n)/float64(b.N), "parked/op")
	}
}

// benchWorker is a fake Sender worker: it keeps a "session" open for the
// route it was given, up to the message cap, and reports a healthy host
// after opening one.
func benchWorker(id int, requests chan<- *stages.Request, window <-chan struct{}) {
	reply := make(chan stages.Assignment, 1)
	var (
		conn   *stages.Route
		count  int
		report *stages.HostReport
	)
	for {
		req := &stages.Request{Worker: id, Report: report, Reply: reply}
		if conn != nil {
			r := *conn
			req.Conn = &r
		}
		requests <- req
		a := <-reply
		report = nil
		switch {
		case a.Stop:
			return
		case a.Close:
			conn = nil
			continue
		}
		for _, j := range append([]*stages.Job{a.Job}, a.More...) {
			if conn == nil || *conn != j.Route {
				r := j.Route
				conn, count = &r, 0
				report = &stages.HostReport{Host: r.Host, OK: true}
			}
			count++
			if a.Limit > 0 && count >= a.Limit {
				conn = nil
			}
			<-window
		}
	}
}
