//go:build !windows

package service

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"

	kardianos "github.com/kardianos/service"

	"github.com/smtpq/smtpq/pipeline"
)

// detach runs cmd in a session of its own, so that a daemon it starts has
// no controlling terminal (and no SIGHUP when the terminal goes).
func detach(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
}

// privilegeProblem says why this process may not change system services,
// or "" if it may.
func privilegeProblem() string {
	if os.Geteuid() != 0 {
		return "needs root (run it with sudo)"
	}
	return ""
}

func isCurrentUser(name string) bool {
	u, err := user.Current()
	return err == nil && u.Username == name
}

// checkOwnedBy checks that the service user exists and owns the identity
// files, which the service refuses otherwise.
func checkOwnedBy(cfg *pipeline.Config, name string) error {
	u, err := user.Lookup(name)
	if err != nil {
		return fmt.Errorf("--user %s: %w", name, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return fmt.Errorf("--user %s: uid %q", name, u.Uid)
	}
	for _, p := range cfg.IdentityFile {
		fi, err := os.Lstat(p)
		if err != nil {
			return fmt.Errorf("refusing to install: identity file: %w", err)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != uid {
			return fmt.Errorf("refusing to install: identity file %s is owned by uid %d, but the service runs as %s (uid %d), and refuses a key file it does not own: chown %s %s", p, st.Uid, name, uid, name, p)
		}
	}
	return nil
}

// inspectWindows is only called on Windows.
func inspectWindows(string) (*serviceState, error) {
	return nil, errNoServiceManager
}

// stopSelf ends the service when the pipeline stopped by itself. Outside
// Windows there is nothing to do: waitForStop returns when it stops.
func stopSelf(kardianos.Service) {}

// reportToSystemLog: outside Windows the service manager keeps what smtpq
// writes on stderr (the journal, the init script's log file).
func reportToSystemLog(kardianos.Service, error) {}

// windowsHint adds the Windows remedy to an error; nothing to add here.
func windowsHint(err error) error { return err }
