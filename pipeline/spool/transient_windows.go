package spool

import (
	"os"

	"golang.org/x/sys/windows"
)

// transientErrors are the reasons an open fails that pass: another
// program (a queue command, a virus scanner, a backup) holds the file open
// without sharing, or the process is out of handles.
var transientErrors = []error{windows.ERROR_SHARING_VIOLATION, windows.ERROR_LOCK_VIOLATION, windows.ERROR_TOO_MANY_OPEN_FILES, windows.ERROR_NOT_ENOUGH_MEMORY}

// removeLock unlocks a spool lock, then removes its file: Windows does not
// remove a file that is open. Another instance that takes the lock in
// between keeps its file open, so the removal then fails harmlessly.
func removeLock(unlock func() error, path string) error {
	err := unlock()
	os.Remove(path)
	return err
}
