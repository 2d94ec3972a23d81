package spool

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/smtpq/smtpq/stages"
	"go.uber.org/zap"
)

// Files whose route tag the Dispatcher holds stay in the queue folder,
// unclaimed, while the others are claimed; when the hold ends the Scanner
// looks again (not waiting for its rescan interval) and claims them.
func TestScannerLeavesHeldRoutes(t *testing.T) {
	d := testDirs(t)
	held := map[string]bool{}
	for i := range 3 {
		n := fmt.Sprintf("20261127T110000.00000000%dZ-slowslowslowslow+aaaa.eml", i)
		placeFile(t, d.Queue, n, "x")
		held[n] = true
	}
	placeFile(t, d.Queue, "20261127T110000.000000009Z-fastfastfastfast+bbbb.eml", "x")
	placeFile(t, d.Queue, "20261127T110000.000000010Z-untaggeduntagged.eml", "x")

	holds := make(chan stages.RouteHold, 1)
	until := time.Now().Add(300 * time.Millisecond)
	holds <- stages.RouteHold{Tags: []string{"aaaa"}, Until: until}
	out := runScanner(t, d, holds)

	for range 2 {
		j := <-out
		if held[j.Name] {
			t.Fatalf("%s claimed while its route tag is held", j.Name)
		}
		if time.Now().After(until) {
			t.Fatal("the machine was too slow to tell: the hold ended before the first pass")
		}
	}
	for range 3 {
		select {
		case j := <-out:
			if !held[j.Name] {
				t.Fatalf("%s claimed twice", j.Name)
			}
			if time.Now().Before(until) {
				t.Fatalf("%s claimed before its hold ended", j.Name)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("held files not claimed after the hold ended (the stages.Scanner waits for its hour-long interval)")
		}
	}
	if _, err := os.Stat(filepath.Join(d.Queue, "20261127T110000.000000000Z-slowslowslowslow+aaaa.eml")); !os.IsNotExist(err) {
		t.Fatalf("held file still in the queue folder after the hold: %v", err)
	}
}

// A file announced by fsnotify while the Scanner is idle, whose route tag
// is held, is claimed when the hold ends, not at the next periodic rescan.
func TestScannerTakesAnnouncedHeldFileWhenHoldEnds(t *testing.T) {
	d := testDirs(t)
	holds := make(chan stages.RouteHold, 1)
	out := runScanner(t, d, holds)

	// A first file, claimed from its event, shows the Scanner idle and
	// watching.
	placeFile(t, d.Queue, "20261127T110000.000000001Z-fastfastfastfast+bbbb.eml", "x")
	select {
	case <-out:
	case <-time.After(10 * time.Second):
		t.Fatal("a new file was not claimed from its event")
	}
	until := time.Now().Add(300 * time.Millisecond)
	holds <- stages.RouteHold{Tags: []string{"aaaa"}, Until: until}
	heldName := "20261127T110000.000000002Z-slowslowslowslow+aaaa.eml"
	placeFile(t, d.Queue, heldName, "x")
	select {
	case j := <-out:
		if j.Name != heldName {
			t.Fatalf("claimed %s", j.Name)
		}
		if time.Now().Before(until) {
			t.Fatalf("%s claimed before its hold ended", j.Name)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an announced file whose tag was held was not claimed after the hold ended (the stages.Scanner waits for its hour-long interval)")
	}
}

// runScanner runs a Scanner on a spool in d, with an hour between rescans
// (so that only events and hold ends make it look), until the test ends.
func runScanner(t *testing.T, d Dirs, holds <-chan stages.RouteHold) <-chan *stages.Job {
	t.Helper()
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	sc := &stages.Scanner{Spool: s, Interval: time.Hour, Holds: holds, Clock: stages.SystemClock{}, Log: zap.NewNop()}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan *stages.Job)
	done := make(chan error)
	go func() { done <- sc.Run(ctx, out) }()
	t.Cleanup(func() {
		cancel()
		for range out { // jobs claimed meanwhile: unwanted
		}
		<-done
		s.Close()
	})
	return out
}
