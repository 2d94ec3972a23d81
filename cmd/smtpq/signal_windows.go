//go:build windows

package main

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

// notifyHangup does nothing on Windows, which has no SIGHUP: restart the
// service to apply a new configuration.
func notifyHangup(c chan<- os.Signal) {}

// signalReload is not possible on Windows: there is no SIGHUP.
func signalReload(pid int) error {
	return errors.New("no reload for a Windows service: restart it (smtpq service restart)")
}

// hasStderr reports whether the process has a standard error to write to:
// a Windows service has none (writing to it fails with "Invalid handle",
// and zap would report that failure into the log file on every line).
func hasStderr() bool {
	h, err := windows.GetStdHandle(windows.STD_ERROR_HANDLE)
	return err == nil && h != 0 && h != windows.InvalidHandle
}
