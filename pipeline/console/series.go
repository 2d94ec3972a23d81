package console

import (
	"fmt"
	"strings"
	"time"

	"github.com/smtpq/smtpq/stages"
)

// SeriesMinutes is how far back the per-minute counts go: a day.
const SeriesMinutes = 24 * 60

// The series a chart draws.
const (
	seriesSent = iota
	seriesDeferred
	seriesFailed
	seriesCount
)

// Series counts messages sent, deferred and failed per minute over the
// last day, in a ring of SeriesMinutes buckets. Not safe for concurrent
// use on its own: the Index guards it.
type Series struct {
	last   int64 // the minute (Unix time / 60) of the newest bucket
	counts [SeriesMinutes][seriesCount]int
}

// NewSeries returns empty counts.
func NewSeries() *Series { return &Series{} }

// Copy returns a copy to read without the lock.
func (s *Series) Copy() *Series {
	c := *s
	return &c
}

// advance moves the ring to minute m, clearing the buckets it skips.
func (s *Series) advance(m int64) {
	if m <= s.last {
		return
	}
	for k := s.last + 1; k <= m && k <= s.last+SeriesMinutes; k++ {
		s.counts[k%SeriesMinutes] = [seriesCount]int{}
	}
	if m-s.last > SeriesMinutes {
		s.counts = [SeriesMinutes][seriesCount]int{}
	}
	s.last = m
}

// Add counts a filing at t.
func (s *Series) Add(t time.Time, v stages.Verdict) {
	i := -1
	switch v {
	case stages.Sent:
		i = seriesSent
	case stages.Deferred:
		i = seriesDeferred
	case stages.Failed:
		i = seriesFailed
	}
	if i < 0 {
		return
	}
	m := t.Unix() / 60
	s.advance(m)
	if m <= s.last-SeriesMinutes {
		return
	}
	s.counts[m%SeriesMinutes][i]++
}

// at returns the counts of minute m (zero outside the ring).
func (s *Series) at(m int64) [seriesCount]int {
	if m > s.last || m <= s.last-SeriesMinutes {
		return [seriesCount]int{}
	}
	return s.counts[m%SeriesMinutes]
}

// SentSince returns the messages sent in the last n minutes before now.
func (s *Series) SentSince(now time.Time, n int) int {
	m := now.Unix() / 60
	total := 0
	for k := m - int64(n) + 1; k <= m; k++ {
		total += s.at(k)[seriesSent]
	}
	return total
}

// Chart is a line chart drawn as SVG by the overview template: no script,
// no library, works offline.
type Chart struct {
	Title      string
	Width      int
	Height     int
	Max        int // the top of the scale
	Lines      []ChartLine
	Start, End string // labels of the time axis
	Totals     [seriesCount]int
}

// ChartLine is one series: its class (colour, from the style sheet), its
// name and its points ("x,y x,y ...").
type ChartLine struct {
	Class, Name, Points string
	Total               int
}

// axisLabels labels the ends of a time axis: times of day, with the date
// when the axis spans more than a few hours (a day's chart would otherwise
// read the same hour at both ends).
func axisLabels(start, end time.Time) (string, string) {
	layout := "15:04"
	if end.Sub(start) > 6*time.Hour {
		layout = "Jan 2 15:04"
	}
	return start.Format(layout), end.Format(layout)
}

// Chart draws the last minutes minutes before now, in buckets of step
// minutes.
func (s *Series) Chart(title string, now time.Time, minutes, step int) Chart {
	const w, h = 600, 160
	end := now.Unix() / 60
	n := minutes / step
	vals := make([][seriesCount]int, n)
	for b := range n {
		for k := range step {
			m := end - int64(minutes) + 1 + int64(b*step+k)
			c := s.at(m)
			for i := range seriesCount {
				vals[b][i] += c[i]
			}
		}
	}
	c := Chart{Title: title, Width: w, Height: h, Max: 1}
	c.Start, c.End = axisLabels(now.Add(-time.Duration(minutes)*time.Minute), now)
	for _, v := range vals {
		for i := range seriesCount {
			c.Max = max(c.Max, v[i])
			c.Totals[i] += v[i]
		}
	}
	names := [seriesCount][2]string{{"sent", "line-sent"}, {"deferred", "line-deferred"}, {"failed", "line-failed"}}
	for i := range seriesCount {
		var b strings.Builder
		for x, v := range vals {
			px := float64(x) * float64(w) / float64(max(n-1, 1))
			py := float64(h) - float64(v[i])*float64(h-10)/float64(c.Max)
			fmt.Fprintf(&b, "%.1f,%.1f ", px, py)
		}
		c.Lines = append(c.Lines, ChartLine{Class: names[i][1], Name: names[i][0], Points: strings.TrimSpace(b.String()), Total: c.Totals[i]})
	}
	return c
}
