package spool

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

// transientOpen reports whether opening a file failed for a reason that
// passes: another program (a queue command, a virus scanner, a backup)
// holds it open without sharing, or the process is out of handles.
func transientOpen(err error) bool {
	for _, e := range transientErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

var transientErrors = []error{windows.ERROR_SHARING_VIOLATION, windows.ERROR_LOCK_VIOLATION, windows.ERROR_TOO_MANY_OPEN_FILES, windows.ERROR_NOT_ENOUGH_MEMORY}

// removeLock unlocks a spool lock, then removes its file: Windows does not
// remove a file that is open. Another instance that takes the lock in
// between keeps its file open, so the removal then fails harmlessly.
func removeLock(unlock func() error, path string) error {
	err := unlock()
	os.Remove(path)
	return err
}
