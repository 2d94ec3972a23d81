package pipeline

import (
	"maps"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline/spool"
)

// The console reads the SMTP sessions open per host from the metrics'
// gauge, gathered alone.
func TestConsoleSessionsFromTheGauge(t *testing.T) {
	met := newMetrics(spool.Dirs{Queue: t.TempDir()}, time.Now)
	met.sessions.WithLabelValues("mx.example.org").Set(2)
	met.sessions.WithLabelValues("mx.example.com").Set(1)
	svc := &consoleService{sessions: sessionsGatherer(met)}
	want := map[string]int{"mx.example.org": 2, "mx.example.com": 1}
	if got := svc.Sessions(); !maps.Equal(got, want) {
		t.Errorf("Sessions() = %v, want %v", got, want)
	}
}
