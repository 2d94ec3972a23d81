//go:build linux

package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a child process the harness started. It is stopped by its PID,
// never by name.
type proc struct {
	name    string
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{} // closed when it has exited
	exited  time.Time
	err     error
	log     *os.File
}

// live holds what must be stopped or undone when the harness ends.
var live struct {
	sync.Mutex
	procs    map[*proc]bool
	cleanups map[*cleanup]bool
}

type cleanup struct{ fn func() }

// atExit registers fn to run at the end of the harness unless the returned
// function is called first (which runs it now).
func atExit(fn func()) func() {
	c := &cleanup{fn: fn}
	live.Lock()
	if live.cleanups == nil {
		live.cleanups = map[*cleanup]bool{}
	}
	live.cleanups[c] = true
	live.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			live.Lock()
			delete(live.cleanups, c)
			live.Unlock()
			fn()
		})
	}
}

// cleanupAll stops every process still running and runs pending cleanups.
func cleanupAll() {
	live.Lock()
	procs := make([]*proc, 0, len(live.procs))
	for p := range live.procs {
		procs = append(procs, p)
	}
	cleanups := make([]*cleanup, 0, len(live.cleanups))
	for c := range live.cleanups {
		cleanups = append(cleanups, c)
	}
	live.cleanups = nil
	live.Unlock()
	for _, p := range procs {
		p.stop(10 * time.Second)
	}
	for _, c := range cleanups {
		c.fn()
	}
}

// startProc starts argv with its output in logPath. The child gets SIGKILL
// if the harness dies (PR_SET_PDEATHSIG).
func startProc(name, logPath string, argv ...string) (*proc, error) {
	return startProcEnv(name, logPath, nil, argv...)
}

// startProcEnv is startProc with more environment variables.
func startProcEnv(name, logPath string, env []string, argv ...string) (*proc, error) {
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{}), log: lf}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	live.Lock()
	if live.procs == nil {
		live.procs = map[*proc]bool{}
	}
	live.procs[p] = true
	live.Unlock()
	go func() {
		p.err = cmd.Wait()
		p.exited = time.Now()
		lf.Close()
		live.Lock()
		delete(live.procs, p)
		live.Unlock()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// stop sends SIGTERM to the process and waits up to grace for it to exit,
// then kills it. It returns how long the exit took.
func (p *proc) stop(grace time.Duration) time.Duration {
	if !p.running() {
		return 0
	}
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.done
	}
	return time.Since(start)
}

// status reads a field of /proc/<pid>/status in kB (VmHWM, VmRSS).
func (p *proc) status(field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.pid()))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// cpu returns the user and system CPU time used so far (while running, from
// /proc; after the exit, from the process state).
func (p *proc) cpu() time.Duration {
	if !p.running() {
		if st := p.cmd.ProcessState; st != nil {
			return st.UserTime() + st.SystemTime()
		}
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.pid()))
	if err != nil {
		return 0
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / ticks
}

// tail returns the last lines of the process's log, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
