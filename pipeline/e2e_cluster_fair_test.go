package pipeline_test

import (
	"fmt"
	"testing"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

// A slow host does not hold up another on the stream either: with a
// backlog for a host that stalls and is rate-limited, published before a
// backlog for a fast host, two nodes send all the fast host's mail while
// the slow host has not yet accepted one message. The slow host's surplus
// is parked (a nak with delay) rather than kept in front of the fast mail.
func TestClusterSlowHostDoesNotDelayOthers(t *testing.T) {
	const slowN, fastN = 120, 40
	release := newReleaser()
	stalled := newSignal()
	slow := startServer(t, "127.0.0.2", func(s *smtptest.Server) {
		s.Fault = stallAt(smtptest.AfterDot, stalled, release)
	})
	fast := startServer(t, "127.0.0.3")
	limits := hostLimits(1)
	limits.Rate, limits.Burst = 2, 1 // a node keeps at most 16 in memory; the rest is parked
	a := pipelinetest.New(t, withHost("127.0.0.2", limits), func(cfg *pipeline.Config) {
		cfg.NATS = &pipeline.NATSConfig{URLs: []string{natstest.NewServer(t).URL()}, Node: "a"}
		cfg.Timeouts.Data = pipeline.Duration(3 * pipelinetest.WaitTimeout) // the stall is the test's to end
	})
	for i := range slowN {
		a.Enqueue(testMessage(i), slow.Params(fmt.Sprintf("slow%d@example.org", i)))
	}
	for i := range fastN {
		a.Enqueue(testMessage(1000+i), fast.Params(fmt.Sprintf("fast%d@example.org", i)))
	}
	a.Start(pipeline.Options{})
	b := clusterNode(t, a, "b")
	t.Cleanup(release.Open) // runs before the nodes and the servers stop
	stalled.await(t, "the slow host to stall its first message")

	if _, err := fast.WaitMessages(waitCtx(t), fastN); err != nil {
		t.Fatalf("fast host, behind the slow host's backlog: %v", err)
	}
	if n := len(slow.Messages()); n != 0 {
		t.Fatalf("the slow host accepted %d messages before it was released", n)
	}
	parked := 0
	for _, n := range []*pipelinetest.Env{a, b} {
		for _, f := range n.Filed() {
			switch {
			case f.Verdict == stages.Parked:
				parked++
			case f.Verdict == stages.Sent && f.Job.Route.Host == "127.0.0.2":
				t.Errorf("%s filed as sent while its host stalls", f.Job.Name)
			}
		}
	}
	if parked == 0 {
		t.Errorf("none of the slow host's %d messages was parked: all held in memory in front of the fast mail", slowN)
	}
	t.Logf("%d parkings of the slow host's messages while the fast host's %d went out", parked, fastN)

	release.Open()
	if _, err := slow.WaitMessages(waitCtx(t), 1); err != nil {
		t.Fatalf("the slow host, released: %v", err)
	}
}
