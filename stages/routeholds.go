package stages

import (
	"sync"
	"time"

	"github.com/smtpq/smtpq/queuefile"
)

// RouteHolds is the set of route tags (queuefile.RouteTag) whose files the
// Spool leaves unclaimed in the queue folder for now: the Dispatcher holds
// a host's tags when it has to park that host's surplus (the host is
// rate-limited, paused or slow, and its queue is full), until the parked
// jobs are due. Files of other hosts are found and sent meanwhile without
// opening the seal of every file of the saturated one. A tag shared by
// chance with another host only delays that host's files until the hold
// ends; where a message goes is always read from its seal.
type RouteHolds struct {
	mu    sync.Mutex
	until map[string]time.Time
}

// NewRouteHolds returns an empty set.
func NewRouteHolds() *RouteHolds { return &RouteHolds{until: map[string]time.Time{}} }

// Hold holds tags until t (or later, if already held longer). It reports
// whether a tag was not held before.
func (h *RouteHolds) Hold(tags []string, t time.Time) (fresh bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, tag := range tags {
		if tag == "" {
			continue
		}
		was, ok := h.until[tag]
		fresh = fresh || !ok
		if was.Before(t) {
			h.until[tag] = t
		}
	}
	return fresh
}

// heldName reports whether the file name carries a tag held at now, and
// until when.
func (h *RouteHolds) heldName(name string, now time.Time) (time.Time, bool) {
	if h == nil {
		return time.Time{}, false
	}
	tag := queuefile.NameRouteTag(name)
	if tag == "" {
		return time.Time{}, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	until, ok := h.until[tag]
	if !ok {
		return time.Time{}, false
	}
	if !now.Before(until) {
		delete(h.until, tag)
		return time.Time{}, false
	}
	return until, true
}
