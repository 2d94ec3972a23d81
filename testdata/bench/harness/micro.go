//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// sinkFrames matches the stack frames of the fake SMTP server's goroutines
// (go-smtp's server side and smtptest), so that the drain profile can be
// read without them.
const sinkFrames = `smtp\.\(\*Server\)|smtp\.\(\*Conn\)|smtptest\.|` + setupFrames

// setupFrames matches the benchmark's own setup (writing the queue files
// before the timer starts), which the CPU profile records too.
const setupFrames = `benchFillQueue`

// microBench runs the Go micro-benchmarks and the profiled in-process drain.
func microBench(ctx context.Context, o *options, rep *report) error {
	cpuProf := filepath.Join(o.out, "drain-cpu.prof")
	memProf := filepath.Join(o.out, "drain-mem.prof")
	blockProf := filepath.Join(o.out, "drain-block.prof")
	testBin := filepath.Join(o.out, "pipeline.test")
	runs := []struct {
		pkg  string
		args []string
		raw  string // file for the output; its benchmark lines go in the table unless it is a profiling run
	}{
		{"./pipeline/queuefile", []string{"-bench", ".", "-benchtime", "1s"}, "micro-queuefile.txt"},
		{"./stages", []string{"-bench", ".", "-benchtime", "1s"}, "micro-stages.txt"},
		{"./pipeline/spool", []string{"-bench", ".", "-benchtime", "1s"}, "micro-spool.txt"},
		{"./pipeline", []string{"-bench", "BenchmarkDrain", "-benchtime", "5000x",
			"-cpuprofile", cpuProf, "-memprofile", memProf, "-o", testBin}, "micro-pipeline.txt"},
		// Blocking (channel waits, select, locks) in a run of its own: every
		// event is recorded, which would slow the run above.
		{"./pipeline", []string{"-bench", "BenchmarkDrain/cap=2", "-benchtime", "2000x", "-blockprofile", blockProf}, "profile-block-run.txt"},
	}
	for _, r := range runs {
		argv := append([]string{"go", "test", "-run", "^$", "-benchmem", "-count", "1"}, r.args...)
		argv = append(argv, r.pkg)
		logf("  %s", strings.Join(argv, " "))
		out, err := runCmd(ctx, 10*time.Minute, argv...)
		os.WriteFile(filepath.Join(o.out, r.raw), []byte(out), 0o644)
		if err != nil {
			return err
		}
		if strings.HasPrefix(r.raw, "profile-") {
			continue
		}
		for _, line := range strings.Split(out, "\n") {
			if m := parseBenchLine(line); m != "" {
				rep.micro = append(rep.micro, m)
			}
		}
	}
	views := []struct {
		title string
		args  []string
		file  string
	}{
		{"CPU, flat, whole process (the fake SMTP server included, the setup left out)", []string{"-top", "-nodecount=15", "-ignore=" + setupFrames, testBin, cpuProf}, "profile-cpu.txt"},
		{"CPU, flat, without the fake server's goroutines", []string{"-top", "-nodecount=15", "-ignore=" + sinkFrames, testBin, cpuProf}, "profile-cpu-smtpq.txt"},
		{"CPU, cumulative, without the fake server's goroutines", []string{"-top", "-cum", "-nodecount=40", "-ignore=" + sinkFrames, testBin, cpuProf}, "profile-cpu-smtpq-cum.txt"},
		{"Allocated bytes, flat, without the fake server's goroutines", []string{"-top", "-nodecount=15", "-sample_index=alloc_space", "-ignore=" + sinkFrames, testBin, memProf}, "profile-alloc-smtpq.txt"},
		{"Allocated objects, flat, without the fake server's goroutines", []string{"-top", "-nodecount=15", "-sample_index=alloc_objects", "-ignore=" + sinkFrames, testBin, memProf}, "profile-allocobj-smtpq.txt"},
		{"Blocking, cumulative, cap 2, the stages only (a stage waiting for work blocks too: read it stage by stage; network waits are not blocking)", []string{"-top", "-cum", "-nodecount=25", `-focus=smtpq/stages\.`, testBin, blockProf}, "profile-block-smtpq.txt"},
	}
	var sec strings.Builder
	sec.WriteString("## Profile of the in-process drain (BenchmarkDrain, caps 2 and 8, 5000 messages each)\n\n")
	fmt.Fprintf(&sec, "Profiles: %s, %s, %s (test binary %s). Re-read them with `go tool pprof`.\n\n", rel(o, cpuProf), rel(o, memProf), rel(o, blockProf), rel(o, testBin))
	for _, v := range views {
		out, err := runCmd(ctx, 2*time.Minute, append([]string{"go", "tool", "pprof"}, v.args...)...)
		if err != nil {
			return err
		}
		os.WriteFile(filepath.Join(o.out, v.file), []byte(out), 0o644)
		fmt.Fprintf(&sec, "### %s\n\n```\n%s```\n\n", v.title, trimPprof(out))
	}
	rep.section(sec.String())
	return nil
}

func rel(o *options, p string) string {
	if r, err := filepath.Rel(o.root, p); err == nil {
		return r
	}
	return p
}

// trimPprof drops pprof's header lines up to the "Showing" summary.
func trimPprof(out string) string {
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "Showing nodes") || strings.HasPrefix(l, "Dropped") {
			return strings.Join(lines[i:], "\n")
		}
	}
	return out
}

// parseBenchLine turns a "go test -bench" result line into a table row.
func parseBenchLine(line string) string {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
		return ""
	}
	cols := map[string]string{}
	var other []string
	for i := 2; i+1 < len(f); i += 2 {
		switch f[i+1] {
		case "ns/op", "MB/s", "B/op", "allocs/op":
			cols[f[i+1]] = f[i]
		default:
			other = append(other, f[i]+" "+f[i+1])
		}
	}
	if cols["ns/op"] == "" {
		return ""
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %s | %s |", f[0], cols["ns/op"], dash(cols["MB/s"]), dash(cols["B/op"]), dash(cols["allocs/op"]), dash(strings.Join(other, ", ")))
}
