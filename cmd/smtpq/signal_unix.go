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
