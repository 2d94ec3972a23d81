package console

import (
	"testing"

	"github.com/smtpq/smtpq/pipeline/spool"
)

// BenchmarkIndexRescan is the periodic listing of a 1,000,000-file queue
// replayed into an index that already holds it: what the pipeline's
// filings wait for every 30 s.
func BenchmarkIndexRescan(b *testing.B) {
	x := NewIndex()
	found := fill(1_000_000, spool.PlaceQueued)
	x.Replace(scanPlaces, found, 0)
	b.ResetTimer()
	for b.Loop() {
		x.Replace(scanPlaces, found, x.Seq())
	}
}
