//go:build !windows

package spool

import (
	"os"
	"syscall"
)

// transientErrors are the reasons an open fails that pass: the process
// or the system is out of file descriptors or memory.
var transientErrors = []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM}

// removeLock removes a spool lock's file, then unlocks it: removed first,
// no other instance can lock the same file after our unlock and then lose
// it to our removal.
func removeLock(unlock func() error, path string) error {
	os.Remove(path)
	return unlock()
}
