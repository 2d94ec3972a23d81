package stages

import (
	"testing"
	"time"
)

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
