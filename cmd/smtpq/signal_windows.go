//go:build windows

package main

import "os"

// notifyHangup does nothing on Windows, which has no SIGHUP: restart the
// service to apply a new configuration.
func notifyHangup(c chan<- os.Signal) {}
