//go:build !windows

package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline"
)

// TestRunRefusesUnsafeKeys: the service does not start with an identity
// file that others can read, that is a symlink, that is not a key, or that
// is missing; the one error line names the file and the reason.
func TestRunRefusesUnsafeKeys(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, id string)
		want  string
	}{
		{"group readable", func(t *testing.T, id string) { chmod(t, id, 0o640) }, "readable or writable by group or others"},
		{"world readable", func(t *testing.T, id string) { chmod(t, id, 0o604) }, "readable or writable by group or others"},
		{"symlink", func(t *testing.T, id string) {
			real := id + ".real"
			if err := os.Rename(id, real); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(real, id); err != nil {
				t.Fatal(err)
			}
		}, "is a symlink"},
		{"garbage", func(t *testing.T, id string) {
			if err := os.WriteFile(id, []byte("not a key\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not an age identity file"},
		{"other owner", func(t *testing.T, id string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give the file away")
			}
			if err := os.Chown(id, 4242, 4242); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 4242"},
		{"missing", func(t *testing.T, id string) {
			if err := os.Remove(id); err != nil {
				t.Fatal(err)
			}
		}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, true)
			id := filepath.Join(e.dir, "keys", "identity.txt")
			tc.spoil(t, id)
			code, _, stderr := e.smtpq("", "run")
			if code != exitFailure {
				t.Fatalf("run: exit %d, want %d (%s)", code, exitFailure, stderr)
			}
			if !strings.Contains(stderr, id) || !strings.Contains(stderr, tc.want) {
				t.Errorf("run: %q, want the file %s and %q", stderr, id, tc.want)
			}
		})
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// buildSmtpq builds the smtpq binary as bin/smtpq under a temporary folder
// and returns that folder (the test's stand-in for a checkout or an
// installation; no source file is there).
func buildSmtpq(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	out, err := exec.Command("go", "build", "-o", filepath.Join(root, "bin", "smtpq"), ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return root
}

// childEnv is the test's environment for a child process, without what
// would change how smtpq runs, plus extra.
func childEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "SMTPQ_") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// proc is a started child process whose output is collected line by line.
type proc struct {
	t    *testing.T
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  []string // stdout and stderr lines, as they come
	done chan struct{}
	err  error // Wait's result, once done is closed
}

func startProc(t *testing.T, cmd *exec.Cmd) *proc {
	t.Helper()
	p := &proc{t: t, cmd: cmd, done: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var readers sync.WaitGroup
	for _, r := range []io.Reader{stdout, stderr} {
		readers.Go(func() {
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				p.mu.Lock()
				p.out = append(p.out, sc.Text())
				p.mu.Unlock()
			}
		})
	}
	go func() {
		readers.Wait() // Wait closes the pipes: read them to the end first
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Kill() // by PID: the process this test started
			<-p.done
		}
	})
	return p
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.out, "\n")
}

// waitLine waits for a line matching re and returns its submatches.
func (p *proc) waitLine(re *regexp.Regexp) []string {
	p.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		p.mu.Lock()
		for _, l := range p.out {
			if m := re.FindStringSubmatch(l); m != nil {
				p.mu.Unlock()
				return m
			}
		}
		p.mu.Unlock()
		select {
		case <-p.done:
			p.t.Fatalf("exited (%v) without a line matching %s:\n%s", p.err, re, p.output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no line matching %s:\n%s", re, p.output())
		}
	}
}

// signal sends sig to the process by its PID.
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	if err := syscall.Kill(p.cmd.Process.Pid, sig); err != nil {
		p.t.Fatal(err)
	}
}

// exitCode waits for the process to exit and returns its status (-1 if a
// signal killed it).
func (p *proc) exitCode() int {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(40 * time.Second):
		p.t.Fatalf("still running 40s after the signal:\n%s", p.output())
	}
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		p.t.Fatal(p.err)
	}
	return p.cmd.ProcessState.ExitCode()
}

var (
	runningLine = regexp.MustCompile(`smtpq running`)
	exampleLine = regexp.MustCompile(`^enqueue a test message: (.+)$`)
)

// TestRunStopsCleanlyOnSignal: "smtpq run" stops on SIGINT (Ctrl-C) and on
// SIGTERM with exit status 0, also when the signal comes early, right after
// --init has printed (the command takes the signals before it prints; the
// test cannot time a signal into start-up more exactly than that).
func TestRunStopsCleanlyOnSignal(t *testing.T) {
	root := buildSmtpq(t)
	for _, tc := range []struct {
		name  string
		sig   syscall.Signal
		early bool // as soon as --init has printed, before the service is running
	}{
		{"SIGINT", syscall.SIGINT, false},
		{"SIGTERM", syscall.SIGTERM, false},
		{"SIGINT during start-up", syscall.SIGINT, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, true)
			cmd := exec.Command(filepath.Join(root, "bin", "smtpq"), "run", "--init", "--config", e.cfgPath)
			cmd.Env = childEnv()
			p := startProc(t, cmd)
			if tc.early {
				p.waitLine(exampleLine)
			} else {
				p.waitLine(runningLine)
			}
			p.signal(tc.sig)
			if code := p.exitCode(); code != 0 {
				t.Fatalf("exit status %d after %s, want 0:\n%s", code, tc.name, p.output())
			}
			if !strings.Contains(p.output(), "smtpq stopped") {
				t.Errorf("no \"smtpq stopped\" line:\n%s", p.output())
			}
		})
	}
}

// TestRunInitExampleEnqueues: the command "smtpq run --init" prints to
// enqueue a test message works as printed, through sh, from a folder with
// no checkout around it, however smtpq was started: by a relative path
// (bin/smtpq, as "make run" does), by name through PATH, by an absolute
// path.
func TestRunInitExampleEnqueues(t *testing.T) {
	root := buildSmtpq(t)
	bin := filepath.Join(root, "bin")
	path := bin + string(os.PathListSeparator) + os.Getenv("PATH")
	for _, tc := range []struct {
		name        string
		arg0        string // how smtpq is started; Dir is root
		path        string // PATH for smtpq and sh
		withDefault bool   // the configuration has default_relay: main
		relay       string // the relay the message must name
	}{
		{"relative path", "bin/smtpq", os.Getenv("PATH"), true, "main"},
		{"through PATH", "smtpq", path, true, "main"},
		{"absolute path, no default relay", filepath.Join(bin, "smtpq"), os.Getenv("PATH"), false, "backup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, tc.withDefault)
			cmd := &exec.Cmd{
				Path: filepath.Join(bin, "smtpq"),
				Args: []string{tc.arg0, "run", "--init", "--config", e.cfgPath},
				Dir:  root,
				Env:  childEnv("PATH=" + tc.path),
			}
			p := startProc(t, cmd)
			example := p.waitLine(exampleLine)[1]
			p.signal(syscall.SIGINT)
			if code := p.exitCode(); code != 0 {
				t.Fatalf("run: exit status %d, want 0:\n%s", code, p.output())
			}
			if strings.Contains(example, "testdata") {
				t.Errorf("the example names a file of the checkout: %s", example)
			}

			sh := exec.Command("sh", "-c", example)
			sh.Dir = t.TempDir()
			sh.Env = childEnv("PATH=" + tc.path)
			out, err := sh.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %v\n%s", example, err, out)
			}
			queued := e.queued()
			if len(queued) != 1 || strings.TrimSpace(string(out)) != queued[0] {
				t.Fatalf("%s printed %q; queue: %q", example, out, queued)
			}
			params, msg := e.open(queued[0])
			if params.Relay != tc.relay || !sameStrings(params.To, []string{"you@example.org"}) {
				t.Errorf("queued for relay %q to %q, want %q to you@example.org", params.Relay, params.To, tc.relay)
			}
			if !strings.Contains(msg, "Subject: hello from smtpq\r\n") || !strings.HasSuffix(msg, "\r\n\r\nhello\r\n") {
				t.Errorf("queued message %q", msg)
			}
		})
	}
}

// TestDevRunScriptStopsCleanly: testdata/dev/run.sh, what "make run" runs,
// exits 0 when Ctrl-C stops it (SIGINT to the script, the sink and the
// service at once: Ctrl-C signals the whole foreground process group, so
// the sink may be gone before the script's cleanup), and when the script
// alone gets SIGINT or SIGTERM (it passes the signal on to the service).
// The sink is stopped in every case. It runs on a temporary config, folder
// and loopback port through the script's overrides.
func TestDevRunScriptStopsCleanly(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	script, err := filepath.Abs("../../testdata/dev/run.sh")
	if err != nil {
		t.Fatal(err)
	}
	root := buildSmtpq(t)
	for _, tc := range []struct {
		name string
		sig  syscall.Signal
		all  bool // also to the sink and the service, as Ctrl-C does
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
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := ln.Addr().(*net.TCPAddr).Port
			ln.Close()
			cfg := filepath.Join(dir, "smtpq.yaml")
			if err := os.WriteFile(cfg, []byte(`queue_dir: queue
sent_dir: sent
undeliverable_dir: undeliverable
identity_file: keys/identity.txt
recipient_file: keys/recipient.txt
relays:
  devsink:
    host: 127.0.0.1
    port: `+strconv.Itoa(port)+`
    tls: none
default_relay: devsink
`), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command("bash", script)
			cmd.Env = childEnv(
				"SMTPQ_BIN="+filepath.Join(root, "bin", "smtpq"),
				"SMTPQ_DEV_CONFIG="+cfg,
				"SMTPQ_DEV_DIR="+dir,
				"SMTPQ_DEV_LISTEN=127.0.0.1:"+strconv.Itoa(port),
			)
			p := startProc(t, cmd)
			sinkPID, _ := strconv.Atoi(p.waitLine(regexp.MustCompile(`^devsink \(pid (\d+)\)`))[1])
			svcPID, _ := strconv.Atoi(p.waitLine(regexp.MustCompile(`^smtpq run \(pid (\d+)\)`))[1])
			t.Cleanup(func() {
				// By PID, what this test started, if the script left it.
				for _, pid := range []int{svcPID, sinkPID} {
					if syscall.Kill(pid, 0) == nil {
						t.Errorf("pid %d still running after the script", pid)
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			})
			p.waitLine(runningLine)
			p.signal(tc.sig)
			if tc.all {
				for _, pid := range []int{sinkPID, svcPID} {
					if err := syscall.Kill(pid, tc.sig); err != nil {
						t.Fatal(err)
					}
				}
			}
			if code := p.exitCode(); code != 0 {
				t.Fatalf("run.sh: exit status %d after %s, want 0:\n%s", code, tc.name, p.output())
			}
			if !strings.Contains(p.output(), "smtpq stopped") {
				t.Errorf("no \"smtpq stopped\" line:\n%s", p.output())
			}
		})
	}
}

// TestShellQuote: what --init prints for a path survives a POSIX shell as
// the same single word.
func TestShellQuote(t *testing.T) {
	for _, s := range []string{"/tmp/smtpq.yaml", "/tmp/my config.yaml", "/tmp/it's.yaml", `/tmp/$HOME"*;|\.yaml`, ""} {
		out, err := exec.Command("sh", "-c", `printf '%s|' `+shellQuote(s)).Output()
		if err != nil {
			t.Fatal(err)
		}
		if string(out) != s+"|" {
			t.Errorf("shellQuote(%q) = %s: the shell reads %q", s, shellQuote(s), out)
		}
	}
}

// TestExampleEnqueueForWindows: on Windows "smtpq run --init" prints the
// test command for PowerShell (no printf there): the message as strings
// piped to the program, one a line with the empty one between header and
// body, and paths in PowerShell's single quotes.
func TestExampleEnqueueForWindows(t *testing.T) {
	const (
		self    = `C:\Program Files\smtpq\smtpq.exe`
		message = `'From: you@example.org', 'To: you@example.org', 'Subject: hello from smtpq', '', 'hello' | & `
	)
	relays := map[string]pipeline.Relay{"office": {Host: "smtp.example.com"}, "backup": {Host: "smtp.example.net"}}
	for _, tc := range []struct {
		cfg  pipeline.Config
		want string
	}{
		{pipeline.Config{Path: `C:\ProgramData\smtpq\smtpq.yaml`, Relays: relays, DefaultRelay: "office"},
			message + `'C:\Program Files\smtpq\smtpq.exe' enqueue --config C:\ProgramData\smtpq\smtpq.yaml -`},
		{pipeline.Config{Path: `D:\it's mine\smtpq.yaml`, Relays: relays},
			message + `'C:\Program Files\smtpq\smtpq.exe' enqueue --config 'D:\it''s mine\smtpq.yaml' --relay backup -`},
		{pipeline.Config{Path: `\\server\share\smtpq.yaml`},
			message + `'C:\Program Files\smtpq\smtpq.exe' enqueue --config \\server\share\smtpq.yaml --host smtp.example.com -`},
	} {
		if got := exampleEnqueue(&tc.cfg, self, "windows"); got != tc.want {
			t.Errorf("for %s:\n got %s\nwant %s", tc.cfg.Path, got, tc.want)
		}
	}
	// The same configuration elsewhere: a POSIX shell's printf.
	cfg := pipeline.Config{Path: "/etc/smtpq/smtpq.yaml", DefaultRelay: "office", Relays: relays}
	if got, want := exampleEnqueue(&cfg, "/usr/bin/smtpq", "linux"), `printf 'From: you@example.org\r\nTo: you@example.org\r\nSubject: hello from smtpq\r\n\r\nhello\r\n' | /usr/bin/smtpq enqueue --config /etc/smtpq/smtpq.yaml -`; got != want {
		t.Errorf("on Linux:\n got %s\nwant %s", got, want)
	}
}

// TestPowerShellQuote: a word PowerShell would read otherwise (spaces, a
// quote, a variable, a leading dash taken for a parameter) is put in single
// quotes, a single quote doubled inside.
func TestPowerShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		`C:\ProgramData\smtpq\smtpq.yaml`: `C:\ProgramData\smtpq\smtpq.yaml`,
		`smtpq`:                           `smtpq`,
		`C:\Program Files\smtpq`:          `'C:\Program Files\smtpq'`,
		`it's`:                            `'it''s'`,
		`$env:TEMP\x`:                     `'$env:TEMP\x'`,
		`-x`:                              `'-x'`,
		`a;b`:                             `'a;b'`,
		``:                                `''`,
	} {
		if got := powerShellQuote(in); got != want {
			t.Errorf("powerShellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}
