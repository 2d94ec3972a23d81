//go:build !windows

package main

import (
	"os"
	"os/signal"
	"syscall"
)

// notifyHangup delivers SIGHUP (reload the configuration) on c.
func notifyHangup(c chan<- os.Signal) { signal.Notify(c, syscall.SIGHUP) }

// signalReload sends SIGHUP to the service's process.
func signalReload(pid int) error { return syscall.Kill(pid, syscall.SIGHUP) }

// hasStderr reports whether the process has a standard error to write to:
// on Unix always (systemd gives a service the journal).
func hasStderr() bool { return true }
