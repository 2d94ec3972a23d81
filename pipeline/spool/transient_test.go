package spool

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// A clean stop leaves no lock file of the instance behind (on Windows it
// is removed after the unlock: an open file cannot be removed there).
func TestCloseRemovesTheLockFile(t *testing.T) {
	s, err := Open(testDirs(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	lock := s.lock.Path()
	if _, err := os.Stat(lock); err != nil {
		t.Fatalf("the instance's lock file: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(lock); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lock file %s after Close: %v", filepath.Base(lock), err)
	}
}

// Opening a message that fails for a reason that passes is marked
// ErrStorage (the Parser then reads it again later); a file that is gone
// is not.
func TestTransientOpen(t *testing.T) {
	_, err := os.Open(filepath.Join(t.TempDir(), "gone.eml"))
	if transientOpen(err) {
		t.Errorf("a missing file counted as transient: %v", err)
	}
	for _, e := range transientErrors {
		if !transientOpen(&fs.PathError{Op: "open", Path: "x.eml", Err: e}) {
			t.Errorf("%v not counted as transient", e)
		}
	}
}
