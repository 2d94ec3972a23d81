package pipeline

import "testing"

// On a cluster each node sends at its share of a host's rate and burst, as
// many nodes as are alive; max_connections is not divided (it is held by
// leases across the nodes instead).
func TestLimitsShareTheRateAmongNodes(t *testing.T) {
	cfg := Defaults()
	cfg.Hosts["mx.example.org"] = HostLimits{MaxConnections: 6, Rate: 30, Burst: 5}
	p := &Pipeline{}
	p.live.Store(&settings{cfg: &cfg})
	for _, tc := range []struct {
		nodes       int32
		rate        float64
		burst, conn int
	}{{0, 30, 5, 6}, {1, 30, 5, 6}, {3, 10, 2, 6}, {10, 3, 1, 6}} {
		p.nodes.Store(tc.nodes)
		l := p.limits("mx.example.org")
		if l.Rate != tc.rate || l.Burst != tc.burst || l.MaxConnections != tc.conn {
			t.Errorf("%d nodes: rate %v burst %d conns %d, want %v %d %d", tc.nodes, l.Rate, l.Burst, l.MaxConnections, tc.rate, tc.burst, tc.conn)
		}
	}
}
