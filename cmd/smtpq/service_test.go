package main

// The "smtpq service" commands as the command line runs them; what they do
// is tested in internal/service.

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/cmd/smtpq/internal/service"
)

// The command-line mistakes are refused before anything touches the
// system: exit status 2 and one line. (No test here passes a valid
// configuration to "service install": run as root, it would install.)
func TestServiceFlagValidation(t *testing.T) {
	e := &testEnv{t: t}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"service", "install", "--start-type", "bogus"}, "--start-type bogus: want auto, manual or disabled"},
		{[]string{"service", "install", "--start-type", "autostart"}, "--start-type autostart"},
		{[]string{"service", "install", "--name", "my service"}, `--name "my service"`},
		{[]string{"service", "install", "--name", ""}, `--name ""`},
		{[]string{"service", "install", "--name", "../etc/passwd"}, "--name ../etc/passwd"},
		{[]string{"service", "install", "--name", strings.Repeat("x", 65)}, "--name"},
		{[]string{"service", "install", "--user", "bad user"}, `--user "bad user"`},
		{[]string{"service", "install", "--bogus"}, "unknown flag: --bogus"},
		{[]string{"service", "install", "extra"}, "unexpected argument extra"},
		{[]string{"service", "status", "--name", "-x"}, "--name -x"},
		{[]string{"service", "start", "now"}, "unexpected argument now"},
		{[]string{"service", "stop", "--name", "a/b"}, "--name a/b"},
		{[]string{"service", "frobnicate"}, "unknown subcommand frobnicate"},
	} {
		code, _, stderr := e.run("", append([]string{"smtpq"}, tc.args...)...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, exitUsage, tc.want)
		}
	}
}

func TestServiceInstallRefusesBadConfig(t *testing.T) {
	e := &testEnv{t: t}
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("queue_dir: q\nbogus_key: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []string{filepath.Join(dir, "missing.yaml"), bad} {
		code, stdout, stderr := e.run("", "smtpq", "service", "install", "--config", cfg, "--name", "smtpq-test-never")
		if code == 0 || stdout != "" {
			t.Fatalf("install with %s: exit %d, stdout %q", cfg, code, stdout)
		}
		if !strings.Contains(stderr, "no service manager") && !strings.Contains(stderr, "needs root") &&
			!strings.Contains(stderr, "configuration does not load") {
			t.Errorf("install with %s: %q", cfg, stderr)
		}
	}
}

func TestServiceStatusNotInstalled(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("asks the real service manager")
	}
	e := &testEnv{t: t}
	code, stdout, stderr := e.run("", "smtpq", "service", "status", "--name", "smtpq-test-not-installed")
	switch {
	case code == service.ExitNotInstalled:
		if !strings.Contains(stdout, "installed:  no") || !strings.Contains(stderr, "service smtpq-test-not-installed is not installed") {
			t.Errorf("stdout %q, stderr %q", stdout, stderr)
		}
	case code == exitFailure && strings.Contains(stderr, "no service manager found"):
	default:
		t.Errorf("exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
}
