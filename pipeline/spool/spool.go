package spool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gofrs/flock"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// Folders inside queue_dir that hold smtpq's working state. Their names start
// with a dot, so they are never taken for queue files, and they sit on the
// queue's filesystem, so moves between them are atomic renames.
const (
	ActiveDir   = ".active"   // .active/<instance>/: files claimed by a running instance
	DeferredDir = ".deferred" // .deferred/<due time>/: waiting for a retry
	HoldDir     = ".hold"     // held by the operator: never sent until released
	StateDir    = ".state"    // <id>.json: delivery state of messages that have one
	// ReadyDir holds messages that have an id and are ready to be sent now:
	// returned at shutdown, recovered from a dead instance, released or
	// retried by the operator. Unlike queue_dir, only the service writes
	// here, so a file here keeps its id (see msgid.go).
	ReadyDir = ".ready"
	// PoolDir holds each instance's inode pool (PoolDir/<instance>/).
	PoolDir = ".pool"
)

// bucketLayout names a deferred bucket by its due time, to the second.
const bucketLayout = "20060102T150405Z"

// bucketTime is the time of the bucket for a message due at t: t rounded up
// to the second, UTC, so nothing in a bucket is taken before it is due.
func bucketTime(t time.Time) time.Time {
	at := t.UTC().Truncate(time.Second)
	if at.Before(t) {
		at = at.Add(time.Second)
	}
	return at
}

// Dirs are the spool's three configured folders.
type Dirs struct {
	Queue         string
	Sent          string
	Undeliverable string
}

// Spool is the directory spool: the queue folder with its working
// subfolders, and the Sent and Undeliverable folders. One Spool is one running
// instance; it holds a lock on its own active folder for its lifetime, so
// another instance can tell a dead instance's claimed files (to recover) from
// a live one's (to leave alone).
//
// Its methods are safe for concurrent use by the Scanner, the Sender and the
// Archiver: each works on files it has claimed, identified by name.
type Spool struct {
	// Crash, if set, is called at named points ("claimed", "archive-write",
	// "sent-stripped", "xml-write"): crash tests kill the process there.
	// Set it before use.
	Crash func(point string)
	// SyncFault, if set, is asked before each fsync of a file or folder
	// the spool makes (the journal's included) with its path; an error it
	// returns is that fsync's failure. For fault tests; set it before use.
	SyncFault func(path string) error

	dirs    Dirs
	id      string
	active  string
	lock    *flock.Flock
	journal *journal // the server's acceptances, for crash recovery
	pool    *inodePool
	sentDir *dirSync // fsyncs of the stages.Sent folder, shared
	actDir  *dirSync // fsyncs of the active folder, shared
	now     func() time.Time

	cutBlock int64       // the file system's block, if Sent copies can be made in place (inplace.go); 0: never
	cutOff   atomic.Bool // the file system refused: make copies
	copies   sentCopies

	mu sync.Mutex
	// unrecorded are the ids of jobs whose acceptance by the server is in
	// the journal only: neither filed yet nor written in their state.
	unrecorded map[string]bool
}

// Open creates the folders if needed, registers this instance and
// returns its spool. Close releases it.
func Open(d Dirs, now func() time.Time) (*Spool, error) {
	if now == nil {
		now = time.Now
	}
	for _, dir := range []string{
		d.Queue, d.Sent, d.Undeliverable,
		filepath.Join(d.Queue, queuefile.TmpDir), filepath.Join(d.Queue, ActiveDir),
		filepath.Join(d.Queue, DeferredDir), filepath.Join(d.Queue, HoldDir),
		filepath.Join(d.Queue, StateDir), filepath.Join(d.Queue, ControlDir),
		filepath.Join(d.Queue, ReadyDir), filepath.Join(d.Queue, PoolDir),
		filepath.Join(d.Sent, queuefile.TmpDir), filepath.Join(d.Undeliverable, queuefile.TmpDir),
	} {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	// Producers write into queue_dir/.tmp: give it queue_dir's permissions.
	if fi, err := os.Stat(d.Queue); err == nil {
		os.Chmod(filepath.Join(d.Queue, queuefile.TmpDir), fi.Mode().Perm()|fi.Mode()&os.ModeSetgid)
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	s := &Spool{dirs: d, id: hex.EncodeToString(rnd[:]), now: now, unrecorded: map[string]bool{}}
	s.active = filepath.Join(d.Queue, ActiveDir, s.id)
	s.lock = flock.New(s.active + ".lock")
	ok, err := s.lock.TryLock()
	if err != nil || !ok {
		return nil, fmt.Errorf("spool: locking %s: %v", s.lock.Path(), err)
	}
	if err := os.Mkdir(s.active, 0o750); err != nil {
		s.lock.Unlock()
		return nil, fmt.Errorf("spool: %w", err)
	}
	j, err := openJournal(journalPath(filepath.Join(d.Queue, ActiveDir), s.id))
	if err != nil {
		os.Remove(s.active)
		s.lock.Unlock()
		return nil, fmt.Errorf("spool: %w", err)
	}
	s.journal = j
	s.actDir = newDirSync(s.active)
	s.actDir.sync = s.syncDir
	s.pool = newInodePool(d.Queue, s.id, s.actDir)
	s.sentDir = newDirSync(d.Sent)
	s.sentDir.sync = s.syncDir
	s.cutBlock = cutBlockSize(d)
	return s, nil
}

// file is the spool's handle on a claimed message (stages.Message): where
// its file is now, and what the spool must do when it is filed.
type file struct {
	path      string // where the file is now: the claimer's active folder, named <id>_<name> or <id>.eml, until it is moved
	stateFile bool   // a state file was read or written for it: remove it when filed
	journaled uint64 // the server's acceptance is line journaled of the journal (0: not)
	released  bool   // moved out of the active folder: the spool has it back
}

// Stat describes the file, not what a symbolic link points to.
func (f *file) Stat() (fs.FileInfo, error) { return os.Lstat(f.path) }

// Open opens the file without blocking on a FIFO or a device.
// Open opens the file. A failure that passes (another program holds the
// file without sharing it, on Windows; no file descriptors left) is marked
// stages.ErrStorage: the message is read again later, not failed.
func (f *file) Open() (io.ReadCloser, error) {
	r, err := queuefile.OpenFile(f.path, os.O_RDONLY, 0)
	if err != nil && transientOpen(err) {
		return nil, fmt.Errorf("%w: %w", stages.ErrStorage, err)
	}
	return r, err
}

func (f *file) Released() bool { return f.released }

// moved notes that the file was moved out of the active folder, to path.
func (f *file) moved(path string) { f.path, f.released = path, true }

// handle returns the spool's handle on a job it gave out.
func handle(job *stages.Job) *file { return job.Msg.(*file) }

// WatchDirs returns the queue folder, where producers drop files, and the
// ready folder, where the service and the queue commands put messages that
// have an id and are to be sent now.
func (s *Spool) WatchDirs() []string {
	return []string{s.dirs.Queue, filepath.Join(s.dirs.Queue, ReadyDir)}
}

var (
	_ stages.Source  = (*Spool)(nil)
	_ stages.Sink    = (*Spool)(nil)
	_ stages.Message = (*file)(nil)
)

func (s *Spool) crash(point string) {
	if s.Crash != nil {
		s.Crash(point)
	}
}

// Dirs returns the spool's folders.
func (s *Spool) Dirs() Dirs { return s.dirs }

// Close releases this instance's registration. Files still in its active
// folder are returned to the queue first. But if a message the server
// accepted could not be filed (nor its acceptance written in its state:
// the disk is full or failing), its acceptance is in the journal only:
// Close then leaves the active folder and the journal as a crash would,
// for the next start to replay, and says so in its error.
func (s *Spool) Close() error {
	s.mu.Lock()
	n := len(s.unrecorded)
	s.mu.Unlock()
	if n > 0 {
		s.journal.f.Close()
		s.pool.close()
		uerr := s.lock.Unlock()
		return errors.Join(fmt.Errorf("spool: %d accepted messages could not be filed: left in %s with the journal, for the next start", n, s.active), uerr)
	}
	_, err := s.returnAll(s.active)
	// Removals of filed messages' queue copies were not synced one by one
	// (their acceptance is in the journal): make them durable before the
	// journal goes.
	if serr := s.syncDir(s.active); err == nil && serr != nil && !errors.Is(serr, fs.ErrNotExist) {
		err = serr
	}
	if err == nil {
		err = s.journal.Close()
	}
	s.pool.close()
	if rerr := os.Remove(s.active); err == nil && rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = rerr
	}
	if uerr := removeLock(s.lock.Unlock, s.lock.Path()); err == nil {
		err = uerr
	}
	return err
}

// Recover returns to the queue the files that dead instances left claimed,
// and removes stale temporary files. It leaves live instances' files alone.
func (s *Spool) Recover() (int, error) {
	root := filepath.Join(s.dirs.Queue, ActiveDir)
	ents, err := os.ReadDir(root)
	if err != nil {
		return 0, fmt.Errorf("spool: %w", err)
	}
	var n int
	var errs []error
	for _, e := range ents {
		if !e.IsDir() || e.Name() == s.id {
			continue
		}
		dir := filepath.Join(root, e.Name())
		l := flock.New(dir + ".lock")
		ok, err := l.TryLock()
		if err != nil || !ok {
			continue // alive, or we cannot tell: leave it
		}
		jpath := journalPath(root, e.Name())
		if err := s.replayJournal(jpath, dir); err != nil {
			errs = append(errs, err)
			l.Unlock()
			continue // keep the journal and the files for the next start
		}
		got, err := s.returnAll(dir)
		n += got
		if err != nil {
			errs = append(errs, err)
		} else {
			removeDeadPool(s.dirs.Queue, e.Name())
			os.RemoveAll(legacyPool(s.dirs.Sent, e.Name()))
			os.Remove(jpath)
			os.Remove(dir)
			removeLock(l.Unlock, l.Path())
			continue
		}
		l.Unlock()
	}
	for _, d := range []string{s.dirs.Sent, s.dirs.Undeliverable, s.dirs.Queue} {
		removeStaleTmp(filepath.Join(d, queuefile.TmpDir), s.now().Add(-time.Hour))
	}
	s.removeOrphanStates()
	return n, errors.Join(errs...)
}

// removeOrphanStates removes state files whose message is nowhere in the
// queue any more: a crash after a message was filed but before its state
// was removed leaves one behind.
func (s *Spool) removeOrphanStates() {
	dir := filepath.Join(s.dirs.Queue, StateDir)
	orphans := map[string]bool{}
	EachName(dir, func(n string) {
		if msg, ok := strings.CutSuffix(n, ".json"); ok {
			orphans[msg] = true
		}
	})
	// Each pass lists every folder a message can be in once (not once per
	// state file). Another instance may move a message between folders
	// while we list them: only what both passes missed is an orphan.
	for range 2 {
		if len(orphans) == 0 {
			return
		}
		s.forEachWorking(func(w string) {
			if id, _, ok := ParseWorkName(w); ok {
				delete(orphans, id)
			} else {
				delete(orphans, w) // a file from before ids: its state is keyed by its name
			}
		})
	}
	for msg := range orphans {
		os.Remove(filepath.Join(dir, msg+".json"))
	}
}

// forEachWorking calls fn with the name of every entry in the queue's
// working folders (ready, hold, every instance's active folder, every
// deferred bucket), reading in batches. (queue_dir itself holds no ids.)
func (s *Spool) forEachWorking(fn func(string)) {
	q := s.dirs.Queue
	EachName(filepath.Join(q, ReadyDir), fn)
	EachName(filepath.Join(q, HoldDir), fn)
	for _, sub := range []string{ActiveDir, DeferredDir} {
		root := filepath.Join(q, sub)
		EachName(root, func(d string) { EachName(filepath.Join(root, d), fn) })
	}
}

// EachName calls fn with each entry name of dir, read in batches; a folder
// that cannot be read holds nothing.
func EachName(dir string, fn func(string)) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	defer d.Close()
	for {
		names, err := d.Readdirnames(scanBatch)
		for _, n := range names {
			fn(n)
		}
		if err != nil || len(names) == 0 {
			return
		}
	}
}

func (s *Spool) returnAll(dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, nil
		}
		return 0, err
	}
	n := 0
	for _, e := range ents {
		if _, err := s.returnFile(dir, e.Name()); err != nil {
			return n, fmt.Errorf("spool: returning %q: %w", e.Name(), err)
		}
		n++
	}
	if n > 0 {
		return n, errors.Join(s.syncDir(filepath.Join(s.dirs.Queue, ReadyDir)), s.syncDir(s.dirs.Queue))
	}
	return 0, nil
}

// returnFile moves dir/w, a claimed file, to the ready folder, where it
// keeps its id. A file from before ids (no working name) goes back to
// queue_dir under its name, or name-1, name-2... if a new file has taken
// it: it gets an id when it is claimed again. It returns the new path.
// The folder is not synced.
func (s *Spool) returnFile(dir, w string) (string, error) {
	if _, _, ok := ParseWorkName(w); ok {
		dst := filepath.Join(s.dirs.Queue, ReadyDir, w)
		return dst, moveNoReplace(filepath.Join(dir, w), dst)
	}
	for i := 0; i < 1000; i++ {
		dst := filepath.Join(s.dirs.Queue, suffixed(w, i))
		err := moveNoReplace(filepath.Join(dir, w), dst)
		if !errors.Is(err, fs.ErrExist) {
			return dst, err
		}
	}
	return "", fmt.Errorf("no free name in %s", s.dirs.Queue)
}

func removeStaleTmp(dir string, before time.Time) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.IsDir() {
			continue // a live instance's inode pool; a dead one's goes in Recover
		}
		if fi, err := e.Info(); err == nil && fi.ModTime().Before(before) {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// scanBatch is how many directory entries are read at once: a million-file
// queue is never listed into memory whole.
const scanBatch = 256

// Scan claims the files that are ready: those in the queue folder, then those
// in deferred buckets that are due at now. It calls fn with each claimed job
// and stops early, returning ctx.Err(), when ctx is done or fn returns false.
// It returns the due time of the earliest bucket still in the future (zero if
// none), so the caller knows when to look again. Files of the queue folder
// whose route skip (if set) says is held are left there.
func (s *Spool) Scan(ctx context.Context, now time.Time, skip func(name string) time.Time, fn func(*stages.Job) bool) (time.Time, error) {
	if err := s.scanDir(ctx, s.dirs.Queue, skip, fn); err != nil {
		return time.Time{}, err
	}
	if err := s.scanDir(ctx, filepath.Join(s.dirs.Queue, ReadyDir), skip, fn); err != nil {
		return time.Time{}, err
	}
	return s.scanDeferred(ctx, now, fn)
}

// eachQueueFile calls fn with the name of each queue file in dir (a regular
// file with a queue name: never a directory, FIFO, device or symlink, so a
// link is neither followed nor moved), reading dir in batches so that a
// million-file queue is never listed into memory whole. It stops at ctx's
// end or fn's first error. A missing dir holds nothing.
func eachQueueFile(ctx context.Context, dir string, fn func(name string) error) error {
	d, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	defer d.Close()
	for {
		ents, err := d.ReadDir(scanBatch)
		for _, e := range ents {
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			if !e.Type().IsRegular() || !queuefile.IsQueueName(e.Name()) {
				continue
			}
			if ferr := fn(e.Name()); ferr != nil {
				return ferr
			}
		}
		if errors.Is(err, io.EOF) || len(ents) == 0 {
			return nil
		}
		if err != nil {
			return fmt.Errorf("spool: reading %s: %w", dir, err)
		}
	}
}

// errStop ends a walk early without an error of its own.
var errStop = errors.New("stop")

// scanDir claims every eligible entry of dir but those skip (if set)
// reports true for.
func (s *Spool) scanDir(ctx context.Context, dir string, skip func(name string) time.Time, fn func(*stages.Job) bool) error {
	// One file that cannot be renamed (on Windows: open in another program)
	// must not stop the scan: it is reported at the end.
	var firstErr error
	err := eachQueueFile(ctx, dir, func(name string) error {
		if skip != nil && !skip(name).IsZero() {
			return nil
		}
		job, cerr := s.claim(dir, name)
		if cerr != nil {
			if firstErr == nil {
				firstErr = cerr
			}
			return nil
		}
		if job != nil && !fn(job) {
			return errStop
		}
		return nil
	})
	if errors.Is(err, errStop) {
		return context.Canceled
	}
	if err != nil {
		return err
	}
	return firstErr
}

func (s *Spool) scanDeferred(ctx context.Context, now time.Time, fn func(*stages.Job) bool) (time.Time, error) {
	root := filepath.Join(s.dirs.Queue, DeferredDir)
	ents, err := os.ReadDir(root) // one entry per due second: small
	if err != nil {
		return time.Time{}, fmt.Errorf("spool: %w", err)
	}
	var next time.Time
	for _, e := range ents {
		due, perr := time.Parse(bucketLayout, e.Name())
		if perr != nil || !e.IsDir() {
			continue
		}
		if due.After(now) {
			if next.IsZero() || due.Before(next) {
				next = due
			}
			continue
		}
		dir := filepath.Join(root, e.Name())
		if err := s.scanDir(ctx, dir, nil, fn); err != nil {
			return time.Time{}, err
		}
		os.Remove(dir) // fails harmlessly if a file arrived meanwhile
	}
	return next, nil
}

// ScanOne claims one named file in dir, one of WatchDirs, if it is there.
func (s *Spool) ScanOne(dir, name string) (*stages.Job, error) {
	if !queuefile.IsQueueName(name) {
		return nil, nil
	}
	fi, err := os.Lstat(filepath.Join(dir, name))
	if err != nil || !fi.Mode().IsRegular() {
		return nil, nil
	}
	return s.claim(dir, name)
}

// claim moves dir/name into this instance's active folder. A rename that
// loses a race returns (nil, nil): someone else has the file. A file of
// queue_dir (a producer's) gets a new id; a file of the working folders
// keeps the id its name carries.
func (s *Spool) claim(dir, name string) (*stages.Job, error) {
	if dir != s.dirs.Queue {
		if id, pname, ok := ParseWorkName(name); ok {
			return s.claimWorking(dir, name, id, pname)
		}
		// A file from before ids, in a bucket or returned: it is keyed
		// by its name, as then.
		return s.claimNew(dir, name, true)
	}
	return s.claimNew(dir, name, false)
}

// claimNew claims a file that has no id yet and gives it one. With legacy
// (a file a version before ids left in a working folder), its state is
// read from where that version kept it.
func (s *Spool) claimNew(dir, name string, legacy bool) (*stages.Job, error) {
	job := &stages.Job{Name: name, Msg: &file{}}
	if legacy {
		s.loadState(job, name)
	}
	if job.State.Queued.IsZero() {
		job.State.Queued = queuedTime(name, s.now())
	}
	h := job.Msg.(*file)
	id, dst, wrote, err := giveID(s.dirs.Queue, filepath.Join(dir, name), name, s.active, &job.State, h.stateFile, s.syncDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("spool: claiming %q: %w", name, err)
	}
	job.ID, h.path = id, dst
	h.stateFile = h.stateFile || wrote
	if legacy {
		os.Remove(s.statePath(name))
	}
	s.crash("claimed")
	return job, nil
}

// claimWorking claims dir/w, a working file of message id; pname is the
// producer's name if w carries it.
func (s *Spool) claimWorking(dir, w, id, pname string) (*stages.Job, error) {
	dst := filepath.Join(s.active, w)
	if err := moveNoReplace(filepath.Join(dir, w), dst); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("spool: claiming %s: %w", w, err)
	}
	s.crash("claimed")
	job := &stages.Job{ID: id, Name: pname, Msg: &file{path: dst}}
	s.loadState(job, id)
	if job.Name == "" {
		job.Name = job.State.FileName()
	}
	if job.Name == "" {
		job.Name = w // its state, with its name, is lost: file it by its working name
	}
	if job.State.Queued.IsZero() {
		job.State.Queued = queuedTime(job.Name, s.now())
	}
	return job, nil
}

// loadState reads the state kept under key into job, if there is one.
func (s *Spool) loadState(job *stages.Job, key string) {
	st, err := s.readState(key)
	if err != nil {
		// A damaged state file must not lose the message: start afresh and
		// say so in its history.
		job.State.AddHistory(s.now(), "state file unreadable, reset: "+err.Error())
		handle(job).stateFile = true
	} else if st != nil {
		job.State = *st
		handle(job).stateFile = true
	}
}

func (s *Spool) statePath(id string) string { return statePath(s.dirs.Queue, id) }

// statePath is where the state of message id is kept in queueDir.
func statePath(queueDir, id string) string {
	return filepath.Join(queueDir, StateDir, id+".json")
}

func (s *Spool) readState(id string) (*stages.State, error) {
	return ReadState(s.dirs, id)
}

// WriteState durably records the state of message id (temporary file,
// fsync, rename, directory fsync).
func (s *Spool) WriteState(id string, st *stages.State) error {
	if err := writeState(s.dirs.Queue, id, st, s.syncDir); err != nil {
		return err
	}
	s.noteRecorded(id) // the stages.Archiver writes a state with the acceptance merged in
	return nil
}

// noteRecorded notes that the acceptance of message id, if it had one, is
// no longer in the journal only.
func (s *Spool) noteRecorded(id string) {
	s.mu.Lock()
	delete(s.unrecorded, id)
	s.mu.Unlock()
}

// writeState durably records the state of message id in queueDir, with
// syncDir for the folder.
func writeState(queueDir, id string, st *stages.State, syncDir func(string) error) error {
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return writeFileDurable(statePath(queueDir, id), b, syncDir)
}

// RecordAccepted notes that the server accepted a job's data: the
// recipients it accepted are done, and if none is left the message counts
// as sent. After a crash the message is then filed, not sent again. The note
// is durable before the job is filed (see recorded), not necessarily when
// RecordAccepted returns: the session goes on meanwhile.
func (s *Spool) RecordAccepted(job *stages.Job) error {
	if s.journal != nil {
		n, err := s.journal.Append(journalLine(job))
		if err != nil {
			return err
		}
		handle(job).journaled = n
		s.mu.Lock()
		s.unrecorded[job.ID] = true
		s.mu.Unlock()
		return nil
	}
	st := job.AcceptedState()
	handle(job).stateFile = true
	return s.WriteState(job.ID, &st)
}

// recorded returns once the server's acceptance of job, if it had one, is
// durable (RecordAccepted): every filing method calls it first.
func (s *Spool) recorded(job *stages.Job) error {
	if handle(job).journaled == 0 {
		return nil
	}
	if err := s.syncJournal(handle(job).journaled); err != nil {
		return fmt.Errorf("recording the server's acceptance: %w", err)
	}
	return nil
}

func (s *Spool) removeState(name string) error {
	err := os.Remove(s.statePath(name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// FileSent files a delivered job: a copy without the sealed header in Sent
// (none with deleteCopy), then removes the queue's copy and its state. The
// Sent copy is durable before anything is removed. Where it can, the copy
// is the queue file itself, its sealed block cut off in place (inplace.go).
func (s *Spool) FileSent(job *stages.Job, deleteCopy bool) (string, error) {
	if err := s.recorded(job); err != nil {
		return "", err
	}
	if deleteCopy {
		return "", s.forget(job, false)
	}
	if !job.State.Accepted {
		// Accepted before a crash: it may be in Sent already, as a copy
		// (filedSent), and copying finds that out.
		n, err := s.sentInPlace(job)
		if !errors.Is(err, errNotInPlace) {
			if err != nil {
				return "", err
			}
			s.copies.inPlace.Add(1)
			return filepath.Join(s.dirs.Sent, n), s.filed(job)
		}
	}
	final, err := s.fileSentCopy(job)
	if err != nil {
		return "", err
	}
	s.copies.copied.Add(1)
	return final, s.forget(job, true)
}

// fileSentCopy writes the Sent copy of job as a new file and returns its
// path.
func (s *Spool) fileSentCopy(job *stages.Job) (string, error) {
	if !job.State.Accepted {
		// The common case, on Linux: an unnamed file, linked into Sent once
		// complete and synced (no temporary name to create and remove).
		n, err := s.sentUnnamed(job)
		switch {
		case err == nil:
			return filepath.Join(s.dirs.Sent, n), nil
		case !errors.Is(err, errNoUnnamed):
			return "", err
		}
	}
	tmp := filepath.Join(s.dirs.Sent, queuefile.TmpDir, s.id+"-"+job.ID+queuefile.Ext)
	if err := s.writeStripped(tmp, job); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("writing stages.Sent copy: %w", err)
	}
	s.crash("archive-write")
	if n := s.filedSent(job, tmp); n != "" {
		// Filed before a crash that came before the queue copy was
		// removed: do not file it twice. That filing may have failed at
		// its folder sync: make the copy durable before the queue's
		// goes.
		os.Remove(tmp)
		if err := s.syncDir(s.dirs.Sent); err != nil {
			return "", fmt.Errorf("filing in Sent: %w", err)
		}
		return filepath.Join(s.dirs.Sent, n), nil
	}
	n, err := s.publish(tmp, s.dirs.Sent, job.Name)
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("filing in Sent: %w", err)
	}
	return filepath.Join(s.dirs.Sent, n), nil
}

// errNoUnnamed says the file system cannot create unnamed files.
var errNoUnnamed = errors.New("unnamed files not supported")

// sentUnnamed writes the Sent copy into a file from the inode pool, or else
// an unnamed one, and gives it the name job.Name, or name-1, name-2... on a
// clash. It returns the name used.
func (s *Spool) sentUnnamed(job *stages.Job) (string, error) {
	f, pooled := s.pool.take()
	if f == nil {
		var err error
		if f, err = createUnnamed(s.dirs.Sent); err != nil {
			return "", err
		}
	}
	defer f.Close()
	cw := &queuefile.CountWriter{W: f}
	err := job.WriteMessage(cw)
	if err == nil && pooled != "" {
		err = f.Truncate(cw.N) // what is left of the old content
	}
	if err == nil {
		err = s.syncFile(f)
	}
	if err != nil {
		if pooled != "" {
			s.pool.drop(pooled)
		}
		return "", fmt.Errorf("writing stages.Sent copy: %w", err)
	}
	s.crash("archive-write")
	link := func(p string) error { return linkUnnamed(f, p) } // errNoUnnamed included: the caller falls back
	if pooled != "" {
		link = func(p string) error {
			err := s.pool.publish(pooled, p)
			if err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%w: %v", errNoUnnamed, err) // the caller falls back
			}
			return err
		}
	}
	return linkFree(s.dirs.Sent, "Sent", job.Name, link, s.sentDir)
}

// linkFree gives a complete, synced file the first free name of name,
// name-1, name-2... in dir through link (fs.ErrExist: the name is taken),
// then makes the folder durable through sync. If that sync fails, the name
// is removed again, so that a failed filing leaves nothing behind (its
// retry files it anew). It returns the name used; an error of link other
// than fs.ErrExist as it is; what names dir in the others.
func linkFree(dir, what, name string, link func(path string) error, sync *dirSync) (string, error) {
	for i := 0; i < 1000; i++ {
		n := suffixed(name, i)
		p := filepath.Join(dir, n)
		err := link(p)
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		if err := sync.Sync(); err != nil {
			os.Remove(p)
			return "", fmt.Errorf("filing in %s: %w", what, err)
		}
		return n, nil
	}
	return "", fmt.Errorf("filing in %s: no free name for %s", what, name)
}

// filedSent returns the name under which a job the server accepted before
// a crash was filed in Sent already, or "": a copy with the content of tmp
// under its name or, if that name was taken when it was filed, name-1,
// name-2...
func (s *Spool) filedSent(job *stages.Job, tmp string) string {
	if !job.State.Accepted {
		return ""
	}
	for i := 0; i < 1000; i++ {
		n := suffixed(job.Name, i)
		p := filepath.Join(s.dirs.Sent, n)
		if _, err := os.Lstat(p); err != nil {
			return "" // the names are taken in order: none further
		}
		if sameFile(tmp, p) {
			return n
		}
	}
	return ""
}

// sameFile reports whether two files have the same content.
func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	if err != nil || fa.Size() != fb.Size() {
		return false
	}
	ba, err1 := os.ReadFile(a)
	bb, err2 := os.ReadFile(b)
	return err1 == nil && err2 == nil && string(ba) == string(bb)
}

func (s *Spool) writeStripped(tmp string, job *stages.Job) error {
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	err = job.WriteMessage(f)
	if err == nil {
		err = s.syncFile(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// forget removes a filed job's queue copy (into the inode pool, for reuse,
// if reuse and the pool takes it) and state. The removal of the queue copy
// is synced before the state goes, unless the journal records the server's
// acceptance: a copy that comes back after a crash is then filed as sent
// again (recognised, not duplicated), and Close syncs the folder.
func (s *Spool) forget(job *stages.Job, reuse bool) error {
	if !reuse || !s.pool.put(handle(job).path) {
		if err := os.Remove(handle(job).path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return s.filed(job)
}

// filed ends the filing of a job whose queue copy has left the active
// folder (removed, pooled, or renamed into Sent), as forget says.
func (s *Spool) filed(job *stages.Job) error {
	s.noteRecorded(job.ID) // filed
	if handle(job).journaled == 0 {
		if err := s.actDir.Sync(); err != nil {
			return err
		}
	}
	if !handle(job).stateFile {
		return nil // none was read or written for it (an orphan is removed at start-up)
	}
	return s.removeState(job.ID)
}

// Undeliverable files a failed job: its XML log and then the original file
// (sealed header and all) in Undeliverable, then removes the queue's copy
// and state. It returns the path of the filed message.
func (s *Spool) FileUndeliverable(job *stages.Job, xmlLog []byte) (string, error) {
	if err := s.recorded(job); err != nil {
		return "", err
	}
	if dst := filepath.Join(s.dirs.Undeliverable, job.Name); sameInode(handle(job).path, dst) {
		// An earlier filing of this very file got as far as its link and
		// failed at the folder's sync (its log came first): finish that
		// filing rather than file a second copy under name-1.
		if err := s.syncDir(s.dirs.Undeliverable); err != nil {
			return "", err
		}
		return dst, s.forget(job, false)
	}
	name, err := s.freeName(s.dirs.Undeliverable, job.Name)
	if err != nil {
		return "", err
	}
	logName := strings.TrimSuffix(name, queuefile.Ext) + ".xml"
	tmp := filepath.Join(s.dirs.Undeliverable, queuefile.TmpDir, s.id+"-"+job.ID+".xml")
	if err := writeFileSynced(tmp, xmlLog); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("writing XML log: %w", err)
	}
	s.crash("xml-write")
	if _, err := s.publishExact(tmp, s.dirs.Undeliverable, logName); err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("filing XML log: %w", err)
	}
	dst := filepath.Join(s.dirs.Undeliverable, name)
	// By a hard link of the queue file; else (another file system, no hard
	// links) by a synced copy; and a queue entry swapped for a link (or
	// another special file) after the listing is neither linked nor
	// followed: a note stands in for it.
	var write func(tmp string) error
	if fi, err := os.Lstat(handle(job).path); err == nil && !fi.Mode().IsRegular() {
		write = func(tmp string) error { return writeFileSynced(tmp, specialFileNote(job.Name, handle(job).path, fi)) }
	} else if err := os.Link(handle(job).path, dst); err != nil {
		write = func(tmp string) error { return copyFileSynced(handle(job).path, tmp) }
	}
	if write != nil {
		tmp := filepath.Join(s.dirs.Undeliverable, queuefile.TmpDir, s.id+"-"+job.ID+queuefile.Ext)
		err := write(tmp)
		if err == nil {
			_, err = s.publishExact(tmp, s.dirs.Undeliverable, name)
		}
		if err != nil {
			os.Remove(tmp)
			return "", fmt.Errorf("filing in Undeliverable: %w", err)
		}
	}
	if err := s.syncDir(s.dirs.Undeliverable); err != nil {
		return "", err
	}
	return dst, s.forget(job, false)
}

// specialFileNote is what Undeliverable files in place of a queue entry
// that is not a regular file: what it was, never what it points to.
func specialFileNote(name, path string, fi os.FileInfo) []byte {
	what := fi.Mode().Type().String()
	if fi.Mode()&os.ModeSymlink != 0 {
		what = "a symbolic link"
		if t, err := os.Readlink(path); err == nil {
			what += fmt.Sprintf(" to %q", t)
		}
	}
	return fmt.Appendf(nil, "X-SmtpQ-Note: not a message\r\n\r\n"+
		"smtpq: the queue entry %q was %s when it was claimed, not a regular file.\r\n"+
		"It was neither followed nor read; this note stands in for it. See the .xml log beside it.\r\n",
		name, what)
}

// sameInode reports whether a and b are the same file (hard links of one
// inode).
func sameInode(a, b string) bool {
	fa, err := os.Lstat(a)
	if err != nil {
		return false
	}
	fb, err := os.Lstat(b)
	return err == nil && os.SameFile(fa, fb)
}

// freeName returns name, or name with a -N suffix, such that neither it nor
// its .xml log exists in dir.
func (s *Spool) freeName(dir, name string) (string, error) {
	for i := 0; i < 1000; i++ {
		n := suffixed(name, i)
		_, err1 := os.Lstat(filepath.Join(dir, n))
		_, err2 := os.Lstat(filepath.Join(dir, strings.TrimSuffix(n, queuefile.Ext)+".xml"))
		if errors.Is(err1, fs.ErrNotExist) && errors.Is(err2, fs.ErrNotExist) {
			return n, nil
		}
	}
	return "", fmt.Errorf("no free name for %s in %s", name, dir)
}

// Defer moves a job to the deferred bucket for due, with its state written
// first.
func (s *Spool) Defer(job *stages.Job, due time.Time) error {
	job.State.NextAttempt = due
	if err := s.WriteState(job.ID, &job.State); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	return s.moveToBucket(job, due, true)
}

// Park moves a job that was not attempted to the deferred bucket for due.
// Its state has not changed since it was claimed, so no state file is
// written: parking a large backlog for a slow host costs one rename each.
// (The due time is in the bucket's name.) The move is not synced either: if
// a crash undoes it, the file is back in the active folder and returns to
// the queue at start-up, which is where a parked message is headed anyway.
func (s *Spool) Park(job *stages.Job, due time.Time) error {
	job.State.NextAttempt = due
	return s.moveToBucket(job, due, false)
}

func (s *Spool) moveToBucket(job *stages.Job, due time.Time, durable bool) error {
	if err := s.recorded(job); err != nil {
		return err
	}
	bucket := filepath.Join(s.dirs.Queue, DeferredDir, bucketTime(due).Format(bucketLayout))
	// The Scanner removes a due bucket once it has emptied it; if that
	// happens between our MkdirAll and Rename, make the bucket again.
	var err error
	for range 3 {
		if err = os.MkdirAll(bucket, 0o750); err != nil {
			return err
		}
		dst := filepath.Join(bucket, filepath.Base(handle(job).path))
		err = moveNoReplace(handle(job).path, dst)
		if err == nil {
			handle(job).moved(dst)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
		if _, serr := os.Lstat(handle(job).path); serr != nil {
			break // the job's own file is gone: report that
		}
	}
	if err != nil {
		return err
	}
	if !durable {
		return nil
	}
	if err := s.syncDir(bucket); err != nil {
		return err
	}
	// The bucket itself may be new: make its entry in .deferred durable too.
	if err := s.syncDir(filepath.Dir(bucket)); err != nil {
		return err
	}
	return s.actDir.Sync()
}

// Hold moves a job to the hold folder, with its state written first.
func (s *Spool) Hold(job *stages.Job) error {
	if err := s.recorded(job); err != nil {
		return err
	}
	if err := s.WriteState(job.ID, &job.State); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	dir := filepath.Join(s.dirs.Queue, HoldDir)
	dst := filepath.Join(dir, filepath.Base(handle(job).path))
	if err := moveNoReplace(handle(job).path, dst); err != nil {
		return err
	}
	handle(job).moved(dst)
	if err := s.syncDir(dir); err != nil {
		return err
	}
	return s.actDir.Sync()
}

// Return puts a job back, unsent, in the ready folder with its id; its
// state file, if any, stays.
func (s *Spool) Return(job *stages.Job) error {
	if err := s.recorded(job); err != nil {
		return err
	}
	dst, err := s.returnFile(filepath.Dir(handle(job).path), filepath.Base(handle(job).path))
	if err != nil {
		return err
	}
	handle(job).moved(dst)
	return s.syncDir(filepath.Dir(dst))
}

// publish makes tmp, a complete and synced file, visible as dir/name without
// ever replacing an existing file: on a clash it takes name-1, name-2, ...
// It returns the name used.
func (s *Spool) publish(tmp, dir, name string) (string, error) {
	for i := 0; i < 1000; i++ {
		n := suffixed(name, i)
		err := moveNoReplace(tmp, filepath.Join(dir, n))
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return "", err
		}
		return n, s.syncDir(dir)
	}
	return "", fmt.Errorf("no free name for %s in %s", name, dir)
}

// publishExact is publish without the suffixes: a clash is an error.
func (s *Spool) publishExact(tmp, dir, name string) (string, error) {
	err := moveNoReplace(tmp, filepath.Join(dir, name))
	if errors.Is(err, fs.ErrExist) {
		return "", fmt.Errorf("%s already exists in %s", name, dir)
	}
	if err != nil {
		return "", err
	}
	return name, s.syncDir(dir)
}

func writeFileSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// writeFileDurable replaces path with b atomically, and makes it durable
// with syncDir on its folder.
func writeFileDurable(path string, b []byte, syncDir func(string) error) error {
	tmp := path + ".tmp"
	if err := writeFileSynced(tmp, b); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

func copyFileSynced(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
