package stages

import (
	"time"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// RouteHold tells the Scanner to leave in the queue folder, unclaimed, the
// files whose names carry one of Tags (queuefile.RouteTag) until Until; a
// zero Until ends the hold of Tags at once (queue retry). The
// Dispatcher sends one when it has to park a host's surplus (the host is
// rate-limited, paused or slow, and its queue is full), until the parked
// jobs are due: other hosts' files are then found and sent without opening
// the seal of every file of the saturated one. A tag shared by chance with
// another host only delays that host's files until the hold ends; where a
// message goes is always read from its seal.
type RouteHold struct {
	Tags  []string
	Until time.Time
}

// routeHolds is the Scanner's set of held tags.
type routeHolds map[string]time.Time

func (h routeHolds) add(r RouteHold) {
	for _, tag := range r.Tags {
		if r.Until.IsZero() {
			delete(h, tag)
		} else if tag != "" && h[tag].Before(r.Until) {
			h[tag] = r.Until
		}
	}
}

// held reports whether the file name carries a tag held at now, and until
// when. Holds that have ended are forgotten.
func (h routeHolds) held(name string, now time.Time) (time.Time, bool) {
	tag := queuefile.NameRouteTag(name)
	until, ok := h[tag]
	if !ok {
		return time.Time{}, false
	}
	if !now.Before(until) {
		delete(h, tag)
		return time.Time{}, false
	}
	return until, true
}
