package service

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/cli"
	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

func TestParseStartType(t *testing.T) {
	// In any case, with spaces around, as the configuration's values.
	for s, want := range map[string]StartType{"auto": StartAuto, "manual": StartManual, "disabled": StartDisabled, "AUTO": StartAuto, " Manual ": StartManual} {
		if st, err := ParseStartType(s); err != nil || st != want {
			t.Errorf("ParseStartType(%q) = %q, %v; want %q", s, st, err, want)
		}
	}
	for _, s := range []string{"", "automatic", "demand", "off"} {
		if _, err := ParseStartType(s); err == nil || !cli.IsUsage(err) {
			t.Errorf("ParseStartType(%q): %v, want a usage error", s, err)
		}
	}
}

func TestUnsafePathChar(t *testing.T) {
	for _, tc := range []struct {
		path, goos string
		bad        bool
	}{
		{"/etc/smtpq/smtpq.yaml", "linux", false},
		{"/srv/mail-2024/smtpq_v1.2+x@host:1,2=~.yaml", "linux", false},
		{"/srv/Über/smtpq.yaml", "linux", false},
		{"/srv/my mail/smtpq.yaml", "linux", true},
		{"/srv/$HOME/smtpq.yaml", "linux", true},
		{"/srv/100%/smtpq.yaml", "linux", true},
		{`/srv/a"b.yaml`, "linux", true},
		{"/srv/a'b.yaml", "linux", true},
		{"/srv/a`b`.yaml", "linux", true},
		{`/srv/a\b.yaml`, "linux", true},
		{"/srv/a;b.yaml", "linux", true},
		{"/srv/a*.yaml", "linux", true},
		{"/srv/a\nb.yaml", "linux", true},
		{`C:\Program Files (x86)\smtpq\smtpq.yaml`, "windows", false},
		{`\\server\share\smtpq.yaml`, "windows", false},
		{`C:\%TEMP%\smtpq.yaml`, "windows", true},
		{`C:\a"b\smtpq.yaml`, "windows", true},
		{"C:\\a\tb.yaml", "windows", true},
	} {
		if _, bad := unsafePathChar(tc.path, tc.goos); bad != tc.bad {
			t.Errorf("unsafePathChar(%q, %s): bad = %v, want %v", tc.path, tc.goos, bad, tc.bad)
		}
	}
}

func TestResolveServiceConfig(t *testing.T) {
	dir, cfgPath := writeConfig(t)
	t.Chdir(dir)
	// As package main's loadConfig: its errors are one line.
	load := func(p string) (*pipeline.Config, error) {
		cfg, err := pipeline.LoadConfig(p)
		return cfg, cli.OneLine(err)
	}

	abs, cfg, err := resolveServiceConfig("smtpq.yaml", runtime.GOOS, load)
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(abs) || abs != cfgPath {
		t.Errorf("resolved %q, want the absolute %q", abs, cfgPath)
	}
	if cfg == nil || cfg.QueueDir != filepath.Join(dir, "queue") {
		t.Errorf("loaded config: %+v", cfg)
	}

	if _, _, err := resolveServiceConfig("missing.yaml", runtime.GOOS, load); err == nil || !strings.Contains(err.Error(), "does not load") {
		t.Errorf("missing file: %v", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("queue_dir: q\nsent_dir: s\nundeliverable_dir: u\nmax_threads: lots\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := resolveServiceConfig(bad, runtime.GOOS, load); err == nil || !strings.Contains(err.Error(), "does not load") {
		t.Errorf("invalid file: %v", err)
	} else if strings.Contains(err.Error(), "\n") {
		t.Errorf("error is not one line: %q", err)
	}
	if runtime.GOOS != "windows" {
		spaced := filepath.Join(dir, "my config.yaml")
		if err := os.Symlink(cfgPath, spaced); err != nil {
			t.Fatal(err)
		}
		if _, _, err := resolveServiceConfig(spaced, runtime.GOOS, load); err == nil || !strings.Contains(err.Error(), "cannot carry safely") {
			t.Errorf("path with a space: %v", err)
		}
	}
}

// The service must be able to start: install refuses a configuration
// whose keys the service could not load.
func TestCheckServiceCanStart(t *testing.T) {
	_, cfgPath := writeConfig(t)
	cfg, err := pipeline.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkServiceCanStart(cfg, ""); err != nil {
		t.Fatalf("valid setup refused: %v", err)
	}
	if err := os.Remove(cfg.IdentityFile[0]); err != nil {
		t.Fatal(err)
	}
	if err := checkServiceCanStart(cfg, ""); err == nil || !strings.Contains(err.Error(), "could not start") {
		t.Errorf("missing identity file: %v", err)
	}
}

func TestKardianosConfigStartTypes(t *testing.T) {
	spec := func(st StartType) installSpec {
		return installSpec{name: "smtpq", exe: "/usr/local/bin/smtpq", config: "/etc/smtpq/smtpq.yaml", start: st}
	}
	types := []StartType{StartAuto, StartManual, StartDisabled}

	for _, p := range []string{platformSystemd, platformSysV, platformUpstart, platformOpenRC, platformLaunchd, platformWindows} {
		for _, st := range types {
			c, err := kardianosConfig(spec(st), p)
			if err != nil {
				t.Fatalf("%s %s: %v", p, st, err)
			}
			want := []string{"run", "--config", "/etc/smtpq/smtpq.yaml"}
			if strings.Join(c.Arguments, " ") != strings.Join(want, " ") || c.Executable != "/usr/local/bin/smtpq" {
				t.Errorf("%s: runs %s %q", p, c.Executable, c.Arguments)
			}
			if c.EnvVars[serviceEnv] != "smtpq" {
				t.Errorf("%s: environment %v lacks %s", p, c.EnvVars, serviceEnv)
			}
			switch p {
			case platformWindows:
				want := map[StartType]string{StartAuto: "automatic", StartManual: "manual", StartDisabled: "disabled"}[st]
				if c.Option["StartType"] != want {
					t.Errorf("windows %s: StartType %v, want %s", st, c.Option["StartType"], want)
				}
			case platformLaunchd:
				if c.Option["RunAtLoad"] != (st == StartAuto) || c.Option["KeepAlive"] != (st == StartAuto) {
					t.Errorf("launchd %s: RunAtLoad %v KeepAlive %v", st, c.Option["RunAtLoad"], c.Option["KeepAlive"])
				}
			case platformSystemd:
				refuse := strings.Contains(strings.Join(c.Dependencies, "\n"), "RefuseManualStart=yes")
				if refuse != (st == StartDisabled) {
					t.Errorf("systemd %s: dependencies %q", st, c.Dependencies)
				}
			case platformSysV:
				script, _ := c.Option["SysvScript"].(string)
				if markedStartType(script) != string(st) {
					t.Errorf("sysv %s: script marks %q", st, markedStartType(script))
				}
				defaultStart := strings.Contains(script, "# Default-Start:     2 3 4 5\n")
				if defaultStart != (st == StartAuto) {
					t.Errorf("sysv %s: Default-Start 2 3 4 5 is %v", st, defaultStart)
				}
				if strings.Contains(script, "{{") {
					t.Errorf("sysv script has {{, which kardianos' template engine would interpret")
				}
			case platformUpstart:
				o := upstartOverride(spec(st))
				if strings.Contains(o, "\nmanual\n") != (st != StartAuto) || strings.Contains(o, "pre-start") != (st == StartDisabled) {
					t.Errorf("upstart %s override:\n%s", st, o)
				}
				if !strings.Contains(o, "kill timeout 30\n") || !strings.Contains(o, "env SMTPQ_SERVICE=smtpq\n") || markedStartType(o) != string(st) {
					t.Errorf("upstart %s override:\n%s", st, o)
				}
			case platformOpenRC:
				o := openRCConf(spec(st))
				if strings.Contains(o, "start_pre()") != (st == StartDisabled) || markedStartType(o) != string(st) || !strings.Contains(o, `retry="TERM/30/KILL/5"`) {
					t.Errorf("openrc %s conf.d:\n%s", st, o)
				}
			}
		}
	}
	// Where smtpq cannot express a start type it says so rather than
	// installing something else.
	for _, p := range []string{platformRCS, platformProcd, "freebsd", "solaris-smf"} {
		if _, err := kardianosConfig(spec(StartAuto), p); err != nil {
			t.Errorf("%s auto: %v", p, err)
		}
		for _, st := range []StartType{StartManual, StartDisabled} {
			if _, err := kardianosConfig(spec(st), p); err == nil || !strings.Contains(err.Error(), "not supported on "+p) {
				t.Errorf("%s %s: %v", p, st, err)
			}
		}
	}
}

func TestCommandFromDefinition(t *testing.T) {
	const exe, cfg = "/usr/local/bin/smtpq", "/etc/smtpq/smtpq.yaml"
	script := sysvScript(sysvParams{Name: "smtpq", Exe: exe, Args: []string{"run", "--config", cfg}, Start: StartAuto,
		Env: map[string]string{serviceEnv: "smtpq"}, PIDFile: "/var/run/smtpq.pid", LogFile: "/var/log/smtpq.log", StopSeconds: 30})
	for _, tc := range []struct {
		platform, text string
	}{
		// As kardianos v1.3.0 renders them.
		{platformSystemd, "[Unit]\nDescription=smtpq\nConditionFileIsExecutable=/usr/local/bin/smtpq\n\n[Service]\nStartLimitInterval=5\nExecStart=/usr/local/bin/smtpq \"run\" \"--config\" \"/etc/smtpq/smtpq.yaml\"\nRestart=always\n"},
		{platformSysV, script},
		{platformUpstart, "script\n\tstdout_log=\"/var/log/smtpq.out\"\n\texec /usr/local/bin/smtpq \"run\" \"--config\" \"/etc/smtpq/smtpq.yaml\" >> $stdout_log 2>> $stderr_log\nend script\n"},
		{platformOpenRC, "#!/sbin/openrc-run\nsupervisor=supervise-daemon\ncommand=/usr/local/bin/smtpq\ncommand_args=\"run --config /etc/smtpq/smtpq.yaml \"\nname=$(basename $(readlink -f $command))\n"},
		{platformLaunchd, "<dict>\n\t<key>ProgramArguments</key>\n\t<array>\n\t\t<string>/usr/local/bin/smtpq</string>\n\t\t<string>run</string>\n\t\t<string>--config</string>\n\t\t<string>/etc/smtpq/smtpq.yaml</string>\n\t</array>\n\t<key>RunAtLoad</key>\n\t<true/>\n</dict>\n"},
		{platformRCS, "#!/bin/sh\ncmd=\"/usr/local/bin/smtpq \"run\" \"--config\" \"/etc/smtpq/smtpq.yaml\"\"\n"},
		{"freebsd", "command=\"/usr/sbin/daemon\"\ncommand_args=\"${daemon_args} /usr/local/bin/smtpq run --config /etc/smtpq/smtpq.yaml\"\n"},
	} {
		got := commandFromDefinition(tc.platform, tc.text)
		if configArg(got) != cfg || len(got) < 4 || (tc.platform != "freebsd" && got[0] != exe) {
			t.Errorf("%s: command %q, config %q", tc.platform, got, configArg(got))
		}
	}
	if got := commandFromDefinition(platformSystemd, "ExecStart=/opt/my\\x20apps/smtpq \"run\" \"--config\" \"/etc/smtpq/a.yaml\""); got[0] != "/opt/my apps/smtpq" {
		t.Errorf("systemd \\x20: %q", got)
	}
	if got := configArg([]string{"smtpq", "run", "--config=/x.yaml"}); got != "/x.yaml" {
		t.Errorf("--config=: %q", got)
	}
	if got := configArg([]string{"smtpq", "run"}); got != "" {
		t.Errorf("no --config: %q", got)
	}
}

func TestServiceStatusReport(t *testing.T) {
	_, cfgPath := writeConfig(t)
	st := &serviceState{Installed: true, Definition: "/etc/init.d/smtpq", StartType: "auto", Running: true, PID: 42,
		Command: []string{"/usr/local/bin/smtpq", "run", "--config", cfgPath}, Logs: "/var/log/smtpq.log"}
	got := st.report("smtpq", platformSysV)
	for _, want := range []string{
		"service:    smtpq (unix-systemv)\n", "installed:  yes, /etc/init.d/smtpq\n", "start type: auto\n",
		"running:    yes (pid 42)\n", "config:     " + cfgPath + "\n", "logs:       /var/log/smtpq.log\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	st = &serviceState{Installed: true, Definition: "/etc/init.d/smtpq", Command: []string{"/bin/smtpq", "run", "--config", "/nonexistent.yaml"}, State: "failed"}
	got = st.report("smtpq", platformSysV)
	if !strings.Contains(got, "running:    no (failed)\n") || !strings.Contains(got, "/nonexistent.yaml (does not load:") || !strings.Contains(got, "start type: unknown\n") {
		t.Errorf("report:\n%s", got)
	}
	if got := (&serviceState{}).report("x", platformSystemd); got != "service:    x (linux-systemd)\ninstalled:  no\n" {
		t.Errorf("not installed: %q", got)
	}
}

// The init script smtpq installs on SysV, run for real against a fake
// daemon with its pid and log files in a temporary folder.
func TestSysvScriptLifecycle(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the SysV script reads /proc")
	}
	dir := t.TempDir()
	// A fake daemon: logs its environment marker, stops on SIGTERM (or
	// ignores it with IGNORE_TERM, to exercise the SIGKILL fallback).
	fake := filepath.Join(dir, "fake-smtpq")
	if err := os.WriteFile(fake, []byte(`#!/bin/sh
echo "fake up: $* SMTPQ_SERVICE=$SMTPQ_SERVICE"
trap 'echo "fake reload"' HUP
if [ -e "$0.ignore-term" ]; then trap '' TERM; else trap 'echo "fake stopped"; exit 0' TERM; fi
while :; do sleep 0.05; done
`), 0o755); err != nil {
		t.Fatal(err)
	}
	params := sysvParams{Name: "smtpq-test", Exe: fake, Args: []string{"run", "--config", "/etc/smtpq/smtpq.yaml"},
		Env: map[string]string{serviceEnv: "smtpq-test"}, Start: StartManual,
		PIDFile: filepath.Join(dir, "smtpq-test.pid"), LogFile: filepath.Join(dir, "smtpq-test.log"), StopSeconds: 1}
	script := filepath.Join(dir, "init-script")
	write := func(p sysvParams) {
		if err := os.WriteFile(script, []byte(sysvScript(p)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sh := func(action string) (int, string) {
		t.Helper()
		out, err := exec.Command("/bin/sh", script, action).CombinedOutput()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	pidOf := func() int { return sysvRunningPID(params.PIDFile, []string{fake}) }
	write(params)
	t.Cleanup(func() { // never leave a fake daemon behind
		if pid := pidOf(); pid != 0 {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
	})

	if code, out := sh("status"); code != 3 || !strings.Contains(out, "is not running") {
		t.Fatalf("status before start: %d %q", code, out)
	}
	if code, out := sh("start"); code != 0 || !strings.Contains(out, "Started smtpq-test (pid ") {
		t.Fatalf("start: %d %q", code, out)
	}
	pid := pidOf()
	if pid == 0 {
		t.Fatal("no running pid after start")
	}
	if code, out := sh("start"); code != 0 || !strings.Contains(out, "already running") {
		t.Errorf("second start: %d %q", code, out)
	}
	if code, out := sh("status"); code != 0 || !strings.Contains(out, "is running (pid ") {
		t.Errorf("status: %d %q", code, out)
	}
	if code, out := sh("reload"); code != 0 || !strings.Contains(out, "re-read its configuration") {
		t.Errorf("reload: %d %q", code, out)
	}
	if code, out := sh("stop"); code != 0 || !strings.Contains(out, " stopped") {
		t.Errorf("stop: %d %q", code, out)
	}
	if _, err := os.Stat(params.PIDFile); !os.IsNotExist(err) {
		t.Errorf("pid file left after stop: %v", err)
	}
	if pidOf() != 0 {
		t.Error("still running after stop")
	}
	log, _ := os.ReadFile(params.LogFile)
	if !strings.Contains(string(log), "fake up: run --config /etc/smtpq/smtpq.yaml SMTPQ_SERVICE=smtpq-test") || !strings.Contains(string(log), "fake stopped") ||
		!strings.Contains(string(log), "fake reload") {
		t.Errorf("log:\n%s", log)
	}
	if code, out := sh("stop"); code != 0 || !strings.Contains(out, "is not running") {
		t.Errorf("stop when stopped: %d %q", code, out)
	}
	if code, out := sh("reload"); code != 7 || !strings.Contains(out, "is not running") {
		t.Errorf("reload when stopped: %d %q", code, out)
	}

	// A pid file left by a dead process is not believed.
	if err := os.WriteFile(params.PIDFile, []byte("999999999\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := sh("status"); code != 1 || !strings.Contains(out, "stale pid file") {
		t.Errorf("status with a stale pid file: %d %q", code, out)
	}

	// A daemon that ignores SIGTERM is killed after StopSeconds.
	if err := os.WriteFile(fake+".ignore-term", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out := sh("start"); code != 0 {
		t.Fatalf("start: %d %q", code, out)
	}
	if code, out := sh("stop"); code != 0 || !strings.Contains(out, "sending SIGKILL") {
		t.Errorf("stop of a daemon ignoring SIGTERM: %d %q", code, out)
	}
	if pidOf() != 0 {
		t.Error("still running after SIGKILL")
	}

	// A daemon that exits at once: start fails and shows the log.
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'smtpq: config: no such file' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if code, out := sh("start"); code != 1 || !strings.Contains(out, "did not start") || !strings.Contains(out, "smtpq: config: no such file") {
		t.Errorf("start of a failing daemon: %d %q", code, out)
	}
	if _, err := os.Stat(params.PIDFile); !os.IsNotExist(err) {
		t.Errorf("pid file left after a failed start: %v", err)
	}

	// Disabled: start is refused.
	params.Start = StartDisabled
	write(params)
	if code, out := sh("start"); code != 1 || !strings.Contains(out, "is disabled") {
		t.Errorf("start when disabled: %d %q", code, out)
	}
	if code, _ := sh("bogus"); code != 2 {
		t.Errorf("unknown action: exit %d", code)
	}
}

// The kardianos program: Start returns at once with the pipeline running
// in the background, Stop returns within its deadline after the pipeline
// has stopped cleanly.
func TestServiceProgramLifecycle(t *testing.T) {
	leakOpt := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, leakOpt) }) // runs last: after the server closed

	srv := smtptest.NewServer(t)
	env := pipelinetest.New(t)
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(zapcore.NewTee(zaptest.NewLogger(t).Core(), core))
	filed := make(chan string, 1)
	p, err := pipeline.New(env.Config, pipeline.Options{
		Logger: log, ShutdownGrace: 2 * time.Second,
		OnFiled: func(f stages.Filed) { filed <- f.Verdict.String() },
	})
	if err != nil {
		t.Fatal(err)
	}
	prog := newServiceProgram(p.Run, 5*time.Second)

	began := time.Now()
	if err := prog.Start(nil); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d > time.Second {
		t.Errorf("Start took %s", d)
	}
	if err := prog.Start(nil); err == nil {
		t.Error("a second Start succeeded")
	}

	env.Enqueue([]byte("From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nhello\r\n"), srv.Params("b@example.org"))
	select {
	case r := <-filed:
		if r != "sent" {
			t.Fatalf("filed as %s", r)
		}
	case <-time.After(pipelinetest.WaitTimeout):
		t.Fatal("the message was not sent while the service ran")
	}

	began = time.Now()
	if err := prog.Stop(nil); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("Stop took %s", d)
	}
	select {
	case <-prog.Done():
	default:
		t.Error("Stop returned before the pipeline stopped")
	}
	if logs.FilterMessage("smtpq stopped").Len() != 1 {
		t.Errorf("the pipeline did not log \"smtpq stopped\"; logged %d entries", logs.Len())
	}
	if err := prog.Stop(nil); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

func TestServiceProgramStopDeadline(t *testing.T) {
	leakOpt := goleak.IgnoreCurrent()
	defer goleak.VerifyNone(t, leakOpt)

	release := make(chan struct{})
	stuck := func(ctx context.Context) error {
		<-ctx.Done()
		<-release // ignores the cancel for a while, as a hung pipeline would
		return nil
	}
	prog := newServiceProgram(stuck, 100*time.Millisecond)
	if err := prog.Start(nil); err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	err := prog.Stop(nil)
	if err == nil || !strings.Contains(err.Error(), "did not stop within 100ms") {
		t.Errorf("Stop: %v", err)
	}
	if d := time.Since(began); d > 2*time.Second {
		t.Errorf("Stop took %s with a 100ms deadline", d)
	}
	close(release)
	<-prog.Done()
}

// A pipeline that stops by itself (it could not open the spool) ends the
// service instead of leaving it looking alive.
func TestServiceProgramEarlyExit(t *testing.T) {
	leakOpt := goleak.IgnoreCurrent()
	defer goleak.VerifyNone(t, leakOpt)

	failure := errors.New("queue_dir: permission denied")
	prog := newServiceProgram(func(context.Context) error { return failure }, time.Second)
	var early atomic.Int32
	prog.onEarlyExit = func() { early.Add(1) }
	if err := prog.Start(nil); err != nil {
		t.Fatal(err)
	}
	waited := make(chan struct{})
	go func() {
		defer close(waited)
		prog.waitForStop() // kardianos' RunWait outside Windows
	}()
	select {
	case <-waited:
	case <-time.After(5 * time.Second):
		t.Fatal("waitForStop did not return when the pipeline stopped")
	}
	if err := prog.Stop(nil); !errors.Is(err, failure) {
		t.Errorf("Stop: %v, want the pipeline's error", err)
	}
	if early.Load() != 1 {
		t.Errorf("onEarlyExit called %d times", early.Load())
	}
}

func TestUnderServiceManager(t *testing.T) {
	t.Setenv(serviceEnv, "smtpq")
	if !UnderManager() {
		t.Error("not under a service manager with SMTPQ_SERVICE set")
	}
	if g := PipelineOptions(pipeline.Options{}).ShutdownGrace; g != serviceShutdownGrace {
		t.Errorf("shutdown grace %s, want %s", g, serviceShutdownGrace)
	}
	if serviceShutdownGrace >= serviceStopTimeout || serviceStopTimeout > 20*time.Second {
		t.Errorf("grace %s and stop timeout %s must fit in launchd's 20s", serviceShutdownGrace, serviceStopTimeout)
	}
}

// writeConfig writes a valid configuration, with its keys, to smtpq.yaml in
// a temporary folder, and returns the folder and the file.
func writeConfig(t *testing.T) (dir, path string) {
	t.Helper()
	env := pipelinetest.New(t)
	text, err := env.Config.Masked()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(env.Config.Path, text, 0o600); err != nil {
		t.Fatal(err)
	}
	return env.Dir, env.Config.Path
}
