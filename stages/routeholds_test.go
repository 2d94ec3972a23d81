package stages

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"
)

// Files whose route tag the Dispatcher holds stay in the queue folder,
// unclaimed, while the others are claimed; when the hold ends the Scanner
// looks again (not waiting for its rescan interval) and claims them.
func TestScannerLeavesHeldRoutes(t *testing.T) {
	d := inspDirs(t)
	held := map[string]bool{}
	for i := range 3 {
		n := fmt.Sprintf("20261127T110000.00000000%dZ-slowslowslowslow+aaaa.eml", i)
		inspPlace(t, d.Queue, n, "x")
		held[n] = true
	}
	inspPlace(t, d.Queue, "20261127T110000.000000009Z-fastfastfastfast+bbbb.eml", "x")
	inspPlace(t, d.Queue, "20261127T110000.000000010Z-untaggeduntagged.eml", "x")

	holds := make(chan RouteHold, 1)
	until := time.Now().Add(300 * time.Millisecond)
	holds <- RouteHold{Tags: []string{"aaaa"}, Until: until}
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
			t.Fatal("held files not claimed after the hold ended (the Scanner waits for its hour-long interval)")
		}
	}
	if _, err := os.Stat(filepath.Join(d.Queue, "20261127T110000.000000000Z-slowslowslowslow+aaaa.eml")); !os.IsNotExist(err) {
		t.Fatalf("held file still in the queue folder after the hold: %v", err)
	}
}

// A file announced by fsnotify while the Scanner is idle, whose route tag
// is held, is claimed when the hold ends, not at the next periodic rescan.
func TestScannerTakesAnnouncedHeldFileWhenHoldEnds(t *testing.T) {
	d := inspDirs(t)
	holds := make(chan RouteHold, 1)
	out := runScanner(t, d, holds)

	// A first file, claimed from its event, shows the Scanner idle and
	// watching.
	inspPlace(t, d.Queue, "20261127T110000.000000001Z-fastfastfastfast+bbbb.eml", "x")
	select {
	case <-out:
	case <-time.After(10 * time.Second):
		t.Fatal("a new file was not claimed from its event")
	}
	until := time.Now().Add(300 * time.Millisecond)
	holds <- RouteHold{Tags: []string{"aaaa"}, Until: until}
	heldName := "20261127T110000.000000002Z-slowslowslowslow+aaaa.eml"
	inspPlace(t, d.Queue, heldName, "x")
	select {
	case j := <-out:
		if j.Name != heldName {
			t.Fatalf("claimed %s", j.Name)
		}
		if time.Now().Before(until) {
			t.Fatalf("%s claimed before its hold ended", j.Name)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an announced file whose tag was held was not claimed after the hold ended (the Scanner waits for its hour-long interval)")
	}
}

// runScanner runs a Scanner on a spool in d, with an hour between rescans
// (so that only events and hold ends make it look), until the test ends.
func runScanner(t *testing.T, d Dirs, holds <-chan RouteHold) <-chan *Job {
	t.Helper()
	s, err := OpenSpool(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	sc := &Scanner{Spool: s, Interval: time.Hour, Holds: holds, Clock: SystemClock{}, Log: zap.NewNop()}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan *Job)
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

// A hold lasts until its end, a later hold extends it, an earlier one does
// not shorten it, and a hold without an end releases the tags at once.
func TestRouteHoldsSet(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	name := "20261127T110000.000000000Z-xxxxxxxxxxxxxxxx+beef.eml"
	h := routeHolds{}
	h.add(RouteHold{Tags: []string{"beef"}, Until: now.Add(time.Minute)})
	h.add(RouteHold{Tags: []string{"beef"}, Until: now.Add(time.Second)})
	if until, ok := h.held(name, now.Add(30*time.Second)); !ok || !until.Equal(now.Add(time.Minute)) {
		t.Fatalf("held %v until %v, want until the later end", ok, until)
	}
	if _, ok := h.held("20261127T110000.000000000Z-xxxxxxxxxxxxxxxx+cafe.eml", now); ok {
		t.Fatal("another tag is held")
	}
	h.add(RouteHold{Tags: []string{"beef"}})
	if _, ok := h.held(name, now); ok {
		t.Fatal("still held after a release")
	}
	h.add(RouteHold{Tags: []string{"beef"}, Until: now.Add(time.Minute)})
	if _, ok := h.held(name, now.Add(time.Minute)); ok || len(h) != 0 {
		t.Fatal("held at its end, or not forgotten")
	}
}
