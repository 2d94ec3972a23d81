//go:build !windows

package main

import (
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDevRunClusterScript: testdata/dev/run-cluster.sh, what "make
// run-cluster" runs, brings up three nodes, each with an embedded NATS
// server clustered with the others, and the sink; a message enqueued
// through one node's configuration reaches the sink and one node's Sent
// folder; Ctrl-C (SIGINT to the script, the sink and the nodes at once) or a
// signal to the script alone stops everything, and the script exits 0. It
// runs on a temporary folder and loopback ports through the script's
// overrides.
func TestDevRunClusterScript(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a three-node cluster")
	}
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	script, err := filepath.Abs("../../testdata/dev/run-cluster.sh")
	if err != nil {
		t.Fatal(err)
	}
	root := buildSmtpq(t)
	bin := filepath.Join(root, "bin", "smtpq")
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		all  bool // also to the sink and the nodes, as Ctrl-C does
	}{
		{"Ctrl-C", syscall.SIGINT, true},
		{"SIGINT to the script", syscall.SIGINT, false},
		{"SIGTERM to the script", syscall.SIGTERM, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.sig == syscall.SIGINT && !tc.all && signal.Ignored(os.Interrupt) {
				// bash cannot trap a signal ignored when it starts.
				t.Skip("SIGINT is ignored in this test process, and so in the script")
			}
			dir := t.TempDir()
			ports := runClusterFreePorts(t, 7)
			var natsPorts []string
			for _, p := range ports[1:] {
				natsPorts = append(natsPorts, strconv.Itoa(p))
			}
			cmd := exec.Command("bash", script)
			cmd.Env = childEnv(
				"SMTPQ_BIN="+bin,
				"SMTPQ_DEV_DIR="+dir,
				"SMTPQ_DEV_LISTEN=127.0.0.1:"+strconv.Itoa(ports[0]),
				"SMTPQ_CLUSTER_PORTS="+strings.Join(natsPorts, " "),
			)
			p := startProc(t, cmd)
			sinkPID, _ := strconv.Atoi(p.waitLine(regexp.MustCompile(`^devsink \(pid (\d+)\)`))[1])
			pids := []int{sinkPID}
			for i := 1; i <= 3; i++ {
				m := p.waitLine(regexp.MustCompile(`^node` + strconv.Itoa(i) + `: smtpq run \(pid (\d+)\)`))
				pid, _ := strconv.Atoi(m[1])
				pids = append(pids, pid)
			}
			t.Cleanup(func() {
				// By PID, what this test started, if the script left it.
				for _, pid := range pids {
					if syscall.Kill(pid, 0) == nil {
						t.Errorf("pid %d still running after the script", pid)
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			})
			runClusterWaitLine(t, p, regexp.MustCompile(`^cluster running`), 90*time.Second)

			// Through node 2's configuration, as the script prints.
			enq := exec.Command(bin, "enqueue", "--config", filepath.Join(dir, "node2", "smtpq.yaml"), "-")
			enq.Env = childEnv()
			enq.Stdin = strings.NewReader("From: you@example.org\r\nTo: you@example.org\r\nSubject: hello from the cluster\r\n\r\nhello\r\n")
			out, err := enq.CombinedOutput()
			if err != nil {
				t.Fatalf("enqueue: %v\n%s", err, out)
			}
			runClusterWait(t, p, "the message at the sink", 30*time.Second, func() bool {
				files, _ := filepath.Glob(filepath.Join(dir, "received", "*"))
				for _, f := range files {
					if b, err := os.ReadFile(f); err == nil && strings.Contains(string(b), "Subject: hello from the cluster") {
						return true
					}
				}
				return false
			})
			runClusterWait(t, p, "a copy in a node's Sent folder", 30*time.Second, func() bool {
				files, _ := filepath.Glob(filepath.Join(dir, "node*", "sent", "*.eml"))
				return len(files) == 1
			})

			p.signal(tc.sig)
			if tc.all {
				for _, pid := range pids {
					if err := syscall.Kill(pid, tc.sig); err != nil {
						t.Fatal(err)
					}
				}
			}
			if code := p.exitCode(); code != 0 {
				t.Fatalf("run-cluster.sh: exit status %d after %s, want 0:\n%s", code, tc.name, p.output())
			}
			for i := 1; i <= 3; i++ {
				log, err := os.ReadFile(filepath.Join(dir, "node"+strconv.Itoa(i), "smtpq.log"))
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(string(log), "smtpq stopped") {
					t.Errorf("node%d: no \"smtpq stopped\" line:\n%s", i, log)
				}
			}
		})
	}
}

// runClusterFreePorts returns n loopback TCP ports that were free a moment
// ago, all held at once so that they differ.
func runClusterFreePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// runClusterWaitLine is proc.waitLine with a longer deadline: three
// embedded servers find each other and elect leaders before the nodes run.
func runClusterWaitLine(t *testing.T, p *proc, re *regexp.Regexp, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, l := range strings.Split(p.output(), "\n") {
			if re.MatchString(l) {
				return
			}
		}
		select {
		case <-p.done:
			t.Fatalf("exited (%v) without a line matching %s:\n%s", p.err, re, p.output())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no line matching %s within %v:\n%s", re, timeout, p.output())
		}
	}
}

// runClusterWait polls cond until it holds; what names it for the failure.
func runClusterWait(t *testing.T, p *proc, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		select {
		case <-p.done:
			t.Fatalf("exited (%v) before %s:\n%s", p.err, what, p.output())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v:\n%s", what, timeout, p.output())
		}
	}
}
