package stages

import (
	"sync"

	"github.com/smtpq/smtpq/queuefile"
)

// dirSync makes a folder's entries durable for many callers at once (group
// commit): a caller that changed the folder calls Sync, which returns once a
// folder fsync that started after the call has succeeded. While one fsync
// runs, the callers that arrive queue behind it and the next fsync covers
// them all, so that archivers filing in the same folder share fsyncs
// instead of taking turns. A failed fsync covers nobody: each caller it
// would have covered tries again itself.
type dirSync struct {
	dir  string
	sync func(dir string) error // queuefile.SyncDir; tests replace it

	mu        sync.Mutex
	requested uint64 // calls so far

	syncMu sync.Mutex // held while syncing
	done   uint64     // calls covered by a successful fsync
}

func newDirSync(dir string) *dirSync { return &dirSync{dir: dir, sync: queuefile.SyncDir} }

// Sync returns once the folder's entries, as they were when it was called,
// are durable.
func (d *dirSync) Sync() error {
	d.mu.Lock()
	d.requested++
	mine := d.requested
	d.mu.Unlock()

	d.syncMu.Lock()
	defer d.syncMu.Unlock()
	if d.done >= mine {
		return nil
	}
	d.mu.Lock()
	upto := d.requested
	d.mu.Unlock()
	if err := d.sync(d.dir); err != nil {
		return err
	}
	d.done = upto
	return nil
}
