//go:build !windows

package spool

import (
	"errors"
	"os"
	"syscall"
)

// transientOpen reports whether opening a file failed for a reason that
// passes: the process or the system is out of file descriptors or memory.
func transientOpen(err error) bool {
	for _, e := range transientErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

var transientErrors = []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOMEM}

// removeLock removes a spool lock's file, then unlocks it: removed first,
// no other instance can lock the same file after our unlock and then lose
// it to our removal.
func removeLock(unlock func() error, path string) error {
	os.Remove(path)
	return unlock()
}
