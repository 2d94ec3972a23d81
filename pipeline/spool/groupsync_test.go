package spool

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Callers that arrive while an fsync runs share the next one; every caller
// returns only after an fsync that began after its call.
func TestDirSyncGroupsCallers(t *testing.T) {
	var (
		fsyncs  atomic.Int64
		started atomic.Int64 // call number when the running fsync began
	)
	d := newDirSync(t.TempDir())
	var calls atomic.Int64
	d.sync = func(string) error {
		fsyncs.Add(1)
		started.Store(calls.Load())
		time.Sleep(5 * time.Millisecond)
		return nil
	}
	var wg sync.WaitGroup
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n := calls.Add(1)
			if err := d.Sync(); err != nil {
				t.Error(err)
			}
			if started.Load() < n {
				t.Errorf("call %d returned after an fsync that began before it (at call %d)", n, started.Load())
			}
		}()
	}
	wg.Wait()
	if n := fsyncs.Load(); n < 1 || n >= 40 {
		t.Fatalf("%d fsyncs for 40 concurrent calls, want them shared", n)
	}
}

// A failed fsync covers nobody: its caller gets the error, the next caller
// syncs again.
func TestDirSyncFailureCoversNobody(t *testing.T) {
	d := newDirSync(t.TempDir())
	fail := errors.New("EIO")
	var n int
	d.sync = func(string) error {
		n++
		if n == 1 {
			return fail
		}
		return nil
	}
	if err := d.Sync(); !errors.Is(err, fail) {
		t.Fatalf("first Sync: %v, want the fsync's error", err)
	}
	if err := d.Sync(); err != nil || n != 2 {
		t.Fatalf("second Sync: %v after %d fsyncs, want a fresh successful one", err, n)
	}
}
