package console

import (
	"testing"
	"time"

	"github.com/smtpq/smtpq/stages"
)

func TestChartAxisLabels(t *testing.T) {
	now := time.Date(2026, 12, 4, 9, 30, 0, 0, time.UTC)
	s := NewSeries()
	s.Add(now.Add(-5*time.Minute), stages.Sent)
	hour := s.Chart("hour", now, 60, 1)
	if hour.Start != "08:30" || hour.End != "09:30" {
		t.Errorf("hour axis %q to %q, want 08:30 to 09:30", hour.Start, hour.End)
	}
	if hour.Totals[0] != 1 {
		t.Errorf("hour totals %v, want the one sent", hour.Totals)
	}
	// A day's axis would read 09:30 at both ends without its dates.
	day := s.Chart("day", now, SeriesMinutes, 15)
	if day.Start == day.End || day.Start != "Dec 3 09:30" || day.End != "Dec 4 09:30" {
		t.Errorf("day axis %q to %q, want Dec 3 09:30 to Dec 4 09:30", day.Start, day.End)
	}
}
