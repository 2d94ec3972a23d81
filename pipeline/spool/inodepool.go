package spool

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// inodePool keeps the queue copies of filed messages, once their content is
// no longer needed, to be rewritten as the Sent copies of later messages
// instead of creating a new file for each and removing an old one. On
// ext4 without a journal (as on many VMs) every new file costs a scan past
// each inode removed in the last minutes, which grows with the very churn a
// busy queue makes: a quarter of the service's CPU in a drain. Reusing
// inodes costs a rename instead.
//
// A pooled file lives in its own folder, <queue>/.pool/<instance>/, on the
// queue's side: a pooled file still holds a sealed queue file until it is
// rewritten, and no file with a seal may ever be in sent_dir. It becomes a
// Sent copy only by a rename into sent_dir once rewritten and synced, so the
// pool works only when Sent is on the queue's file system (it turns itself
// off at the first rename that says otherwise). It is removed when the
// instance closes, or by the next start after a crash.
//
// A pooled inode is rewritten only once the active folder it left has been
// synced past its removal (the active folder's dirSync covers the put):
// otherwise, after a power loss on a file system without a journal, the
// active folder could come back with the old name pointing at an inode that
// now holds another message's Sent copy. Only a file the service owns, with no other link, goes to the pool:
// its content (a message already filed) is overwritten from offset 0 and
// truncated to the new length (rewritten) before it becomes a Sent copy, and its mode set to 0640, so that
// nothing of it or of its former owner's access survives.
type inodePool struct {
	dir  string
	from *dirSync // the active folder, whose sync must cover a put before its take

	mu   sync.Mutex
	free []pooled
	seq  int
	off  bool // the file systems refuse: queue and stages.Sent apart, or no RENAME_NOREPLACE
}

type pooled struct {
	name string
	mode os.FileMode
	need uint64 // the from.Sync number that covers its removal from the active folder
}

// poolMax bounds the pool: a drain needs about as many as filings run at once.
const poolMax = 64

// poolSyncBatch is how many pooled files must wait for the active folder's
// sync before take makes one: one fsync then covers them all, instead of
// one per filing (filings of journaled messages do not sync the folder).
// Until then take returns none and the caller makes a new file.
const poolSyncBatch = 8

func newInodePool(queueDir, id string, from *dirSync) *inodePool {
	if !poolSupported {
		return &inodePool{off: true}
	}
	dir := poolDir(queueDir, id)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return &inodePool{off: true}
	}
	return &inodePool{dir: dir, from: from}
}

// put moves path, a file whose content is no longer needed, into the pool.
// It reports false if it did not, and the caller removes the file.
func (p *inodePool) put(path string) bool {
	p.mu.Lock()
	if p.off || len(p.free) >= poolMax {
		p.mu.Unlock()
		return false
	}
	p.seq++
	name := strconv.Itoa(p.seq)
	p.mu.Unlock()
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || !ownedUnlinked(fi) {
		return false
	}
	if err := renameNoReplace(path, filepath.Join(p.dir, name)); err != nil {
		if isCrossDevice(err) {
			p.disable()
		}
		return false
	}
	need := p.from.next()
	p.mu.Lock()
	p.free = append(p.free, pooled{name: name, mode: fi.Mode().Perm(), need: need})
	p.mu.Unlock()
	return true
}

// take returns a pooled file, open for writing at offset 0, with its name
// in the pool; nil if the pool has none. The file still has its old
// content: the caller truncates it to what it writes.
func (p *inodePool) take() (*os.File, string) {
	synced := false
	for {
		p.mu.Lock()
		if p.off || len(p.free) == 0 {
			p.mu.Unlock()
			return nil, ""
		}
		// The oldest entry is the likeliest to be covered by a sync.
		e := p.free[0]
		if e.need > p.from.covered() {
			waiting := len(p.free)
			p.mu.Unlock()
			if synced || waiting < poolSyncBatch || p.from.Sync() != nil {
				return nil, ""
			}
			// One fsync of the active folder, shared with concurrent
			// callers, covers every entry put so far.
			synced = true
			continue
		}
		p.free = p.free[1:]
		p.mu.Unlock()
		path := filepath.Join(p.dir, e.name)
		f, err := openForRewrite(path)
		if err != nil {
			os.Remove(path)
			continue
		}
		if e.mode != 0o640 {
			if err := f.Chmod(0o640); err != nil {
				f.Close()
				os.Remove(path)
				continue
			}
		}
		return f, e.name
	}
}

// publish gives the pooled file name the path dst, never replacing a file:
// fs.ErrExist if dst is taken. Any other error means the caller should
// create the file another way; the pooled file is then removed.
func (p *inodePool) publish(name, dst string) error {
	src := filepath.Join(p.dir, name)
	err := renameNoReplace(src, dst)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		if !errors.Is(err, fs.ErrNotExist) {
			p.disable()
		}
		os.Remove(src)
	}
	return err
}

// drop removes a pooled file that was taken but not published.
func (p *inodePool) drop(name string) { os.Remove(filepath.Join(p.dir, name)) }

func (p *inodePool) disable() {
	p.mu.Lock()
	p.off = true
	p.mu.Unlock()
}

// close removes the pool and what is in it.
func (p *inodePool) close() {
	if p.dir != "" {
		os.RemoveAll(p.dir)
	}
}

// poolDir is the pool folder of instance id.
func poolDir(queueDir, id string) string {
	return filepath.Join(queueDir, PoolDir, id)
}

// removeDeadPool removes the pool of a dead instance; legacyPool the
// folder where versions before the pool moved to the queue's side kept it.
func removeDeadPool(queueDir, id string) { os.RemoveAll(poolDir(queueDir, id)) }

func legacyPool(sentDir, id string) string {
	return filepath.Join(sentDir, queuefile.TmpDir, ".free-"+id)
}
