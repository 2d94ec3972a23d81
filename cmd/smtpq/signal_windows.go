//go:build windows

package main

import (
	"errors"
	"os"
)

// notifyHangup does nothing on Windows, which has no SIGHUP: restart the
// service to apply a new configuration.
func notifyHangup(c chan<- os.Signal) {}

// signalReload is not possible on Windows: there is no SIGHUP.
func signalReload(pid int) error {
	return errors.New("no reload for a Windows service: restart it (smtpq service restart)")
}
