package spool

import (
	"sync"
	"sync/atomic"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// groupCommit lets concurrent callers share syncs (group commit). Callers
// number what they need durable (a journal line, a change to a folder);
// while one sync runs the others queue behind it, and the next sync covers
// all of them, so the cost per caller falls as load rises. A failed sync
// covers nobody: each caller it would have covered tries again itself.
type groupCommit struct {
	mu   sync.Mutex    // held while syncing
	done atomic.Uint64 // the highest number a successful sync covered; written under mu, read anywhere
}

// await returns once a successful sync has covered n. If none has, it
// syncs: prepare, called just before, returns the highest number the sync
// will cover and the sync itself.
func (g *groupCommit) await(n uint64, prepare func() (upto uint64, sync func() error)) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.done.Load() >= n {
		return nil // someone else's sync covered it
	}
	upto, sync := prepare()
	if err := sync(); err != nil {
		return err
	}
	g.done.Store(upto)
	return nil
}

// dirSync makes a folder's entries durable for many callers at once: a
// caller that changed the folder calls Sync, which returns once a folder
// fsync that started after the call has succeeded, so that archivers filing
// in the same folder share fsyncs instead of taking turns.
type dirSync struct {
	dir  string
	sync func(dir string) error // queuefile.SyncDir; tests replace it

	requested atomic.Uint64 // calls so far
	commit    groupCommit
}

func newDirSync(dir string) *dirSync { return &dirSync{dir: dir, sync: queuefile.SyncDir} }

// next returns the number of the next Sync: a change made before next
// is called is durable once covered() reaches it.
func (d *dirSync) next() uint64 { return d.requested.Load() + 1 }

// covered returns the highest Sync number a successful fsync has covered.
func (d *dirSync) covered() uint64 { return d.commit.done.Load() }

// Sync returns once the folder's entries, as they were when it was called,
// are durable.
func (d *dirSync) Sync() error {
	n := d.requested.Add(1)
	return d.commit.await(n, func() (uint64, func() error) {
		return d.requested.Load(), func() error { return d.sync(d.dir) }
	})
}
