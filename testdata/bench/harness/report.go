//go:build linux

package main

import (
	"fmt"
	"strings"
	"time"
)

// row is one line of the results table.
type row struct {
	bench    string // what was measured
	measured string // smtpq's figure
	baseline string // what it is compared with, measured in the same run
	ratio    string
	target   string
	result   string // PASS, FAIL, info, n/a
}

type report struct {
	o        *options
	binary   string // bin/smtpq --version
	revision string // git describe, at the start
	started  time.Time
	rows     []row
	micro    []string // markdown table rows
	details  []string
	notes    []string
	extra    []string // appended sections (profiles)
}

func newReport(o *options) *report { return &report{o: o, started: time.Now()} }

func (r *report) add(x row)           { r.rows = append(r.rows, x) }
func (r *report) detail(s string)     { r.details = append(r.details, s) }
func (r *report) note(s string)       { r.notes = append(r.notes, s) }
func (r *report) section(text string) { r.extra = append(r.extra, text) }

func verdict(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

func (r *report) render() string {
	var b strings.Builder
	title := "smtpq benchmarks"
	switch r.o.suite {
	case "scale":
		title = "smtpq backlog-scale benchmark"
	case "cluster":
		title = "smtpq cluster benchmark (NATS JetStream)"
	}
	fmt.Fprintf(&b, "# %s\n\n", title)
	fmt.Fprintf(&b, "Run %s (%v) of `%s` (checkout %s), on %s. Every ratio compares figures measured in this run.\n\n",
		r.started.Format("2006-01-02 15:04 MST"), time.Since(r.started).Round(time.Second),
		dash(r.binary), dash(r.revision), hostInfo())
	if len(r.rows) > 0 {
		b.WriteString("| Benchmark | smtpq | Compared with (same run) | Ratio | Target | Result |\n")
		b.WriteString("|---|---|---|---|---|---|\n")
		for _, x := range r.rows {
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", x.bench, x.measured, dash(x.baseline), dash(x.ratio), dash(x.target), x.result)
		}
		b.WriteString("\n")
	}
	if len(r.micro) > 0 {
		b.WriteString("## Go micro-benchmarks\n\n")
		b.WriteString("| Benchmark | ns/op | MB/s | B/op | allocs/op | other |\n|---|---|---|---|---|---|\n")
		for _, m := range r.micro {
			b.WriteString(m + "\n")
		}
		b.WriteString("\n")
	}
	if len(r.details) > 0 {
		b.WriteString("## Details\n\n")
		for _, d := range r.details {
			b.WriteString("- " + d + "\n")
		}
		b.WriteString("\n")
	}
	if len(r.notes) > 0 {
		b.WriteString("## Notes\n\n")
		for _, n := range r.notes {
			b.WriteString("- " + n + "\n")
		}
		b.WriteString("\n")
	}
	for _, e := range r.extra {
		b.WriteString(e)
		if !strings.HasSuffix(e, "\n") {
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func dash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

func rate(v float64) string { return fmt.Sprintf("%.0f msg/s", v) }

func ratio(a, b float64) string {
	if b <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func mb(kb int64) string { return fmt.Sprintf("%.1f MB", float64(kb)/1024) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
