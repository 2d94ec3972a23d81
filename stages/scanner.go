package stages

import (
	"context"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"
)

// Scanner finds queue files and claims them, one at a time, as the next stage
// is ready for them: it blocks on its output channel, so it never claims more
// than the pipeline can hold. It watches the queue folder with fsnotify and
// also rescans every Interval, because events can be missed or overflow; a
// new file named in an event is claimed at once, without listing the folder.
// Deferred files are taken when their bucket is due.
//
// A file whose route tag is held (Holds, from the Dispatcher) is left in the
// queue folder until the hold ends.
type Scanner struct {
	Spool    Source
	Interval time.Duration // periodic rescan; default 10s
	// Holds, if set, brings the Dispatcher's RouteHolds. The Dispatcher
	// does not wait for the Scanner to take them: it drops one that finds
	// the channel full, which only costs opening and parking that host's
	// files one by one until the next.
	Holds <-chan RouteHold
	Clock Clock
	Log   *zap.Logger
}

// Run recovers what dead instances left claimed, then claims files and sends
// them on out until ctx is done. It closes out when it returns. A failure to
// watch the folder is logged and the Scanner falls back to rescans.
func (s *Scanner) Run(ctx context.Context, out chan<- *Job) error {
	defer close(out)
	interval := s.Interval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	if n, err := s.Spool.Recover(); err != nil {
		s.Log.Error("recovering claimed files of a dead instance", zap.Error(err))
	} else if n > 0 {
		s.Log.Info("returned files claimed by a dead instance to the queue", zap.Int("files", n))
	}

	var events chan fsnotify.Event
	var errs chan error
	watched := map[string]bool{}
	if dirs := s.Spool.WatchDirs(); len(dirs) > 0 {
		w, err := fsnotify.NewWatcher()
		for _, dir := range dirs {
			if err == nil {
				err = w.Add(dir)
				watched[filepath.Clean(dir)] = true
			}
		}
		if err != nil && w != nil {
			w.Close()
		}
		if err != nil {
			s.Log.Warn("cannot watch the queue folder; relying on periodic rescans", zap.Error(err))
		} else {
			defer w.Close()
			events, errs = w.Events, w.Errors
		}
	}

	holds := routeHolds{}
	takeHolds := func() {
		for s.Holds != nil {
			select {
			case h, ok := <-s.Holds:
				if !ok {
					s.Holds = nil
					return
				}
				holds.add(h)
			default:
				return
			}
		}
	}
	var heldUntil time.Time // the earliest end of a hold that kept a file in this pass
	skip := func(name string) time.Time {
		takeHolds()
		if len(holds) == 0 {
			return time.Time{} // the common case, once per file of a pass
		}
		until, ok := holds.held(name, s.Clock.Now())
		if !ok {
			return time.Time{}
		}
		if heldUntil.IsZero() || until.Before(heldUntil) {
			heldUntil = until
		}
		return until
	}

	send := func(j *Job) bool {
		select {
		case out <- j:
			return true
		case <-ctx.Done():
			// Claimed but not handed on: put it back.
			if err := s.Spool.Return(j); err != nil {
				s.Log.Error("returning a claimed file to the queue", zap.String("id", j.ID), zap.String("file", j.Name), zap.Error(err))
			}
			return false
		}
	}
	// claimEvent claims the file a Create event names, if it is one of ours.
	claimEvent := func(ev fsnotify.Event) bool {
		dir := filepath.Dir(ev.Name)
		if !ev.Has(fsnotify.Create) || !watched[dir] {
			return true
		}
		if !skip(filepath.Base(ev.Name)).IsZero() {
			return true // the next pass after the hold takes it
		}
		j, err := s.Spool.ScanOne(dir, filepath.Base(ev.Name))
		if err != nil {
			s.Log.Error("claiming a new file", zap.String("file", ev.Name), zap.Error(err))
			return true
		}
		return j == nil || send(j)
	}
	// During a long pass over a backlog, files that arrive meanwhile go
	// first: new mail for a quick host is not stuck behind a backlog that is
	// being parked for a slow one.
	scanSend := func(j *Job) bool {
		for events != nil {
			select {
			case ev, ok := <-events:
				if !ok {
					events = nil
					continue
				}
				if !claimEvent(ev) {
					s.Spool.Return(j)
					return false
				}
				continue
			default:
			}
			break
		}
		return send(j)
	}
	for {
		heldUntil = time.Time{}
		next, err := s.Spool.Scan(ctx, s.Clock.Now(), skip, scanSend)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			s.Log.Error("scanning the queue", zap.Error(err))
		}
		if !heldUntil.IsZero() && (next.IsZero() || heldUntil.Before(next)) {
			next = heldUntil // look again when a hold that kept files here ends
		}
		wait := interval
		if !next.IsZero() {
			if d := next.Sub(s.Clock.Now()); d < wait {
				wait = max(d, 0)
			}
		}
		deadline := s.Clock.Now().Add(wait)
		timer := s.Clock.After(wait)
	idle:
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-timer:
				break idle
			case ev, ok := <-events:
				if !ok {
					events = nil
					continue
				}
				// Claim the named file directly: no listing for the common
				// case of one message arriving in an idle queue.
				if !claimEvent(ev) {
					return nil
				}
				if !heldUntil.IsZero() && heldUntil.Before(deadline) {
					// The file's route tag is held: take it when the hold
					// ends, not at the next rescan.
					deadline = heldUntil
					timer = s.Clock.After(max(heldUntil.Sub(s.Clock.Now()), 0))
				}
			case err, ok := <-errs:
				if !ok {
					errs = nil
					continue
				}
				// Overflow or another watcher error: events were lost; rescan.
				s.Log.Warn("queue folder watcher", zap.Error(err))
				break idle
			}
		}
	}
}
