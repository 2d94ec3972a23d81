package spool

// Queue inspection and control from outside the running service: the
// spool side of the "smtpq queue" commands.
//
// The queue commands run as separate processes beside the service (or with
// no service running). They work on the spool's folders directly, and they
// move a message only with a rename inside queue_dir's filesystem, so that
// the rename decides every race with the service: when the service claims a
// file first, the command's rename fails with ENOENT and the command looks
// for the message again and reports where it went; when the command wins,
// the service's claim fails and it skips the file. A message is never copied
// and deleted inside the queue, so it can be neither lost nor doubled.
//
// Nothing here starts a goroutine; every function returns when its work is
// done. Only requeues take a lock (a file in undeliverable_dir), among
// themselves. Folder listings are read in batches of scanBatch
// entries, so memory does not grow with the size of the queue.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"filippo.io/age"
	"github.com/gofrs/flock"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// More working folders.
const (
	// ControlDir (in queue_dir) holds operator instructions for the running
	// service, one JSON file each (see WriteControl).
	ControlDir = ".control"
	// requeueLock (in undeliverable_dir) serializes requeues: two of them
	// must not put one message back in the queue twice.
	requeueLock = ".requeue.lock"
)

// Place is where a message is, as the queue commands name it.
type Place string

// The places of a message, in the order of its life.
const (
	PlaceQueued        Place = "queued"        // in queue_dir (no id yet) or .ready/, waiting to be claimed
	PlaceActive        Place = "active"        // in .active/<instance>/: claimed by a running service
	PlaceDeferred      Place = "deferred"      // in .deferred/<due>/: waiting for a retry or its not-before time
	PlaceHeld          Place = "held"          // in .hold/: set aside by the operator, never sent
	PlaceUndeliverable Place = "undeliverable" // in undeliverable_dir, with <name>.xml
	PlaceSent          Place = "sent"          // in sent_dir, sealed header removed
)

// Places lists every place in the order of a message's life.
var Places = []Place{PlaceQueued, PlaceActive, PlaceDeferred, PlaceHeld, PlaceUndeliverable, PlaceSent}

// QueuePlaces are the places of messages still in queue_dir (not yet
// filed).
var QueuePlaces = []Place{PlaceQueued, PlaceActive, PlaceDeferred, PlaceHeld}

// ParsePlace checks s against the known places.
func ParsePlace(s string) (Place, error) {
	p := Place(strings.ToLower(strings.TrimSpace(s)))
	if slices.Contains(Places, p) {
		return p, nil
	}
	return "", fmt.Errorf("unknown state %q (want queued, active, deferred, held, undeliverable or sent)", s)
}

// Errors of the queue operations; the errors returned wrap them.
var (
	// ErrMessageNotFound: the name is in none of the spool's folders.
	ErrMessageNotFound = errors.New("not found")
	// ErrNameClash: the destination already holds a file of that name.
	// Nothing is ever overwritten.
	ErrNameClash = errors.New("a file of that name is already there")
	// ErrNotQueueName: the name is not one the service would pick up.
	ErrNotQueueName = errors.New("not a queue-file name (a name ending in .eml) or a message id")
	// ErrAmbiguous: several messages in the queue have that name; name
	// one by its id.
	ErrAmbiguous = errors.New("several messages have that name: give the id of one")
)

// Entry is one message found in the spool.
type Entry struct {
	ID       string    // the service's id for the message ("" in queue_dir, before a claim, and for filed copies)
	Name     string    // the producer's file name (in stages.Sent and Undeliverable, maybe with a -N suffix)
	Place    Place     // where it is
	Path     string    // full path of the file now
	Instance string    // PlaceActive: the instance that claimed it
	Due      time.Time // PlaceDeferred: when its bucket is due
}

// Op is an operation of the queue commands on messages.
type Op string

// The queue commands' operations.
const (
	OpHold    Op = "hold"    // set a message aside (.hold/)
	OpRelease Op = "release" // put a held message back in the queue
	OpRetry   Op = "retry"   // try a deferred message now
	OpRequeue Op = "requeue" // queue an undeliverable message again
	OpPurge   Op = "purge"   // remove filed copies older than a time
)

// PlaceError says that a message is not where an operation can act on it.
// Entry tells where it is.
type PlaceError struct {
	Op    Op
	Entry Entry
}

func (e *PlaceError) Error() string {
	n := e.Entry.Name
	switch e.Entry.Place {
	case PlaceActive:
		return fmt.Sprintf("%s is being sent right now (claimed by the service, instance %s): cannot %s it; try again when it is done", n, e.Entry.Instance, e.Op)
	case PlaceHeld:
		if e.Op == OpHold {
			return n + " is already held"
		}
		return fmt.Sprintf("%s is held: release it instead", n)
	case PlaceQueued:
		if e.Op == OpRelease {
			return n + " is not held: it is in the queue"
		}
		return n + " is already in the queue"
	case PlaceDeferred:
		if e.Op == OpRelease {
			return fmt.Sprintf("%s is not held: it is deferred until %s (retry sends it now)", n, e.Entry.Due.UTC().Format(time.RFC3339))
		}
		return fmt.Sprintf("%s is deferred until %s", n, e.Entry.Due.UTC().Format(time.RFC3339))
	case PlaceSent:
		return fmt.Sprintf("%s was sent already (%s)", n, e.Entry.Path)
	case PlaceUndeliverable:
		if e.Op == OpRequeue {
			return n + " is not undeliverable"
		}
		return fmt.Sprintf("%s is undeliverable (%s): use requeue", n, e.Entry.Path)
	}
	return fmt.Sprintf("%s is %s: cannot %s it", n, e.Entry.Place, e.Op)
}

// Walk calls fn with every message in the given places (every place
// if none is given), place by place; within a folder the order is the
// folder's. Folders are read in batches, so memory does not depend on how
// many files they hold. Files that move while Walk runs may be seen
// twice or not at all. If fn returns fs.SkipAll, Walk stops and returns
// nil; another error stops it and is returned.
func Walk(ctx context.Context, d Dirs, places []Place, fn func(Entry) error) error {
	return walk(ctx, d, places, true, fn)
}

// walk is Walk; withQueueDir false leaves queue_dir itself out
// (its files have no id yet), walking only the working folders.
func walk(ctx context.Context, d Dirs, places []Place, withQueueDir bool, fn func(Entry) error) error {
	if len(places) == 0 {
		places = Places
	}
	q := d.Queue
	err := func() error {
		for _, p := range places {
			var err error
			switch p {
			case PlaceQueued:
				if withQueueDir {
					err = walkDir(ctx, q, "", Entry{Place: p}, fn)
				}
				if err == nil {
					err = walkDir(ctx, filepath.Join(q, ReadyDir), q, Entry{Place: p}, fn)
				}
			case PlaceHeld:
				err = walkDir(ctx, filepath.Join(q, HoldDir), q, Entry{Place: p}, fn)
			case PlaceSent:
				err = walkDir(ctx, d.Sent, "", Entry{Place: p}, fn)
			case PlaceUndeliverable:
				err = walkDir(ctx, d.Undeliverable, "", Entry{Place: p}, fn)
			case PlaceActive:
				err = eachSubdir(filepath.Join(q, ActiveDir), func(name, dir string) error {
					return walkDir(ctx, dir, q, Entry{Place: p, Instance: name}, fn)
				})
			case PlaceDeferred:
				err = eachSubdir(filepath.Join(q, DeferredDir), func(name, dir string) error {
					due, perr := time.Parse(bucketLayout, name)
					if perr != nil {
						return nil // not a bucket: the scanner ignores it too
					}
					return walkDir(ctx, dir, q, Entry{Place: p, Due: due}, fn)
				})
			default:
				err = fmt.Errorf("unknown place %q", p)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}()
	if errors.Is(err, fs.SkipAll) {
		return nil
	}
	return err
}

// walkDir calls fn for each queue file (a regular file with a queue
// name) in dir, reading dir in batches. A missing dir holds nothing. For a
// working folder of queueDir ("" for queue_dir, Sent and Undeliverable) a
// file's name carries the message's id, and its name or else its state
// does.
func walkDir(ctx context.Context, dir, queueDir string, tmpl Entry, fn func(Entry) error) error {
	return eachQueueFile(ctx, dir, func(name string) error {
		en := tmpl
		en.Name, en.Path = name, filepath.Join(dir, name)
		if queueDir != "" {
			en.ID, en.Name = workEntry(queueDir, name)
		}
		return fn(en)
	})
}

// workEntry returns the id and the producer's name of the working file w
// of the spool whose queue_dir is queueDir. A file from before ids has no
// id and is named by its file name.
func workEntry(queueDir, w string) (id, name string) {
	id, name, ok := ParseWorkName(w)
	if !ok {
		return "", w
	}
	if name == "" {
		if st, _ := ReadState(Dirs{Queue: queueDir}, id); st != nil {
			name = st.FileName()
		}
	}
	if name == "" {
		name = w
	}
	return id, name
}

// eachSubdir calls fn for each subfolder of root (instances in .active,
// buckets in .deferred: few entries, read at once).
func eachSubdir(root string, fn func(name, dir string) error) error {
	ents, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if err := fn(e.Name(), filepath.Join(root, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// LocateMessage finds where a message is. key is its id, its working file
// name, or its name (the producer's file name; several messages may share
// one, each with its own id). Messages still in the queue come first, each
// in exactly one place (queued, held, deferred or active); copies already
// filed under the name (Sent, possibly several with -N suffixes;
// Undeliverable) follow. Since the service moves messages while this looks,
// a search that finds nothing is repeated a few times before reporting
// ErrMessageNotFound.
//
// A name is found in queue_dir at once; everywhere else the working folders
// are listed (in batches), since their files are named by id.
func LocateMessage(d Dirs, key string) ([]Entry, error) {
	if !queuefile.IsQueueName(key) && !IsID(key) {
		return nil, fmt.Errorf("%q: %w", key, ErrNotQueueName)
	}
	for range 4 {
		found, err := locateOnce(d, key)
		if err != nil || len(found) > 0 {
			return found, err
		}
	}
	return nil, fmt.Errorf("%q: %w", key, ErrMessageNotFound)
}

func locateOnce(d Dirs, key string) ([]Entry, error) {
	found, err := locateLive(d, key)
	if err != nil {
		return nil, err
	}
	name := key
	if IsID(key) {
		if len(found) == 0 {
			return nil, nil // filed copies go by name, not id
		}
		name = found[0].Name
	}
	for i := 0; i < 1000; i++ {
		n := suffixed(name, i)
		p := filepath.Join(d.Sent, n)
		if !isFile(p) {
			break
		}
		found = append(found, Entry{Name: n, Place: PlaceSent, Path: p})
	}
	if p := filepath.Join(d.Undeliverable, name); isFile(p) {
		found = append(found, Entry{Name: name, Place: PlaceUndeliverable, Path: p})
	}
	return found, nil
}

// locateLive finds the messages still in queue_dir that key names (by
// id, working file name or name).
func locateLive(d Dirs, key string) ([]Entry, error) {
	var found []Entry
	if queuefile.IsQueueName(key) {
		if p := filepath.Join(d.Queue, key); isFile(p) {
			found = append(found, Entry{Name: key, Place: PlaceQueued, Path: p})
		}
	}
	seen := map[string]bool{}
	err := walk(context.Background(), d, QueuePlaces, false, func(e Entry) error {
		if e.ID == key || e.Name == key || filepath.Base(e.Path) == key {
			if e.ID != "" && seen[e.ID] {
				return nil // moved while we listed: seen already
			}
			seen[e.ID] = true
			found = append(found, e)
			if IsID(key) {
				return fs.SkipAll
			}
		}
		return nil
	})
	if len(found) > 1 && found[0].ID == "" && found[0].Place == PlaceQueued && !isFile(found[0].Path) {
		// Claimed while we listed: it is the one found under its id.
		found = found[1:]
	}
	return found, err
}

func isFile(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}

// ReadState returns the delivery state of message id, or nil if it has
// none.
func ReadState(d Dirs, id string) (*stages.State, error) {
	if id == "" || strings.ContainsAny(id, `/\`) {
		return nil, nil
	}
	b, err := os.ReadFile(statePath(d.Queue, id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st stages.State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state of %s: %w", id, err)
	}
	return &st, nil
}

// QueuedTime is when the named message was enqueued, read from its name;
// ok is false for a name that does not carry a time (a file dropped by
// hand).
func QueuedTime(name string) (t time.Time, ok bool) { return queuefile.NameTime(name) }

// ReadXMLLog reads an XML log written by the Archiver.
func ReadXMLLog(path string) (*stages.XMLLog, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var l stages.XMLLog
	if err := xml.NewDecoder(io.LimitReader(f, 64<<20)).Decode(&l); err != nil {
		return nil, fmt.Errorf("XML log %s: %w", path, err)
	}
	return &l, nil
}

// XMLLogPath returns the path of the XML log of a message filed in
// Undeliverable at path (the same name with .xml).
func XMLLogPath(path string) string {
	return strings.TrimSuffix(path, queuefile.Ext) + ".xml"
}

// maxPeekHeader bounds the header section PeekParams reads.
const maxPeekHeader = queuefile.MaxHeaderSection + queuefile.MaxFieldSize

// PeekParams reads the header section of the queue file at path (not the
// body: the digest is not checked) and opens its sealed parameters with ids.
// For a file without a seal it tries the pickup-folder convention and
// returns the envelope in Params.From and Params.To with KindPickup. The
// Params hold credentials (as queuefile.Secret): show none of them.
func PeekParams(path string, ids []age.Identity) (*queuefile.Params, stages.Kind, error) {
	hdr, err := readHeader(path)
	if err != nil {
		return nil, stages.KindSealed, err
	}
	res, err := queuefile.Strip(io.Discard, bytes.NewReader(hdr), queuefile.IsSealedField)
	if err != nil {
		return nil, stages.KindSealed, err
	}
	seal, err := queuefile.SealOf(res.Removed)
	if errors.Is(err, queuefile.ErrNoSeal) {
		pk, perr := queuefile.OpenPickup(bytes.NewReader(hdr))
		if errors.Is(perr, queuefile.ErrNotPickup) {
			return nil, stages.KindSealed, queuefile.ErrNoSeal
		}
		if perr != nil {
			return nil, stages.KindPickup, fmt.Errorf("pickup file: %w", perr)
		}
		return &queuefile.Params{From: pk.From, To: pk.To}, stages.KindPickup, nil
	}
	if err != nil {
		return nil, stages.KindSealed, err
	}
	if len(ids) == 0 {
		return nil, stages.KindSealed, errors.New("no identity to open the seal with")
	}
	p, err := queuefile.OpenSeal(seal, ids...)
	return p, stages.KindSealed, err
}

// readHeader returns the header section of a file, up to and with the
// empty line that ends it, at most maxPeekHeader bytes.
func readHeader(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	br := bufio.NewReaderSize(io.LimitReader(f, maxPeekHeader), 16<<10)
	var hdr []byte
	lineStart := 0
	for {
		chunk, err := br.ReadSlice('\n')
		hdr = append(hdr, chunk...)
		if errors.Is(err, bufio.ErrBufferFull) {
			continue // the rest of a long line
		}
		line := hdr[lineStart:]
		lineStart = len(hdr)
		if err == nil && (bytes.Equal(line, []byte("\n")) || bytes.Equal(line, []byte("\r\n"))) {
			return hdr, nil
		}
		if errors.Is(err, io.EOF) {
			return hdr, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// MoveResult counts what a move of many messages did.
type MoveResult struct {
	Moved  int // moved
	Active int // selected but being sent (in .active): left alone
	Raced  int // gone before they could be moved: claimed by the service, or moved by someone else
	Clash  int // not moved: the destination already had a file of that name

	clashes []error // the first few clash errors, for the report
}

// count records the result of one move: moved (err nil), raced, or a name
// clash. Any other error is returned: it ends the walk.
func (r *MoveResult) count(err error, raced bool) error {
	switch {
	case err == nil:
		r.Moved++
	case raced:
		r.Raced++
	case errors.Is(err, ErrNameClash):
		r.Clash++
		if len(r.clashes) < 3 {
			r.clashes = append(r.clashes, err)
		}
	default:
		return err
	}
	return nil
}

// HoldMessage moves a queued or deferred message to .hold/, where the
// service never takes it; its state file (attempts, last error) stays. It
// returns where the message was. A message being sent, already held or
// already filed is left alone with a *PlaceError.
func HoldMessage(d Dirs, name string) (Entry, error) {
	return moveOne(d, name, OpHold, []Place{PlaceQueued, PlaceDeferred}, filepath.Join(d.Queue, HoldDir))
}

// HoldAll moves every queued and deferred message that match selects (all
// if nil) to .hold/. Messages being sent cannot be held: they are counted in
// Active.
func HoldAll(ctx context.Context, d Dirs, match func(Entry) bool) (MoveResult, error) {
	return moveAll(ctx, d, []Place{PlaceQueued, PlaceDeferred}, filepath.Join(d.Queue, HoldDir), match, true)
}

// ReleaseMessage moves a held message to the ready folder (.ready/), to be
// sent now, whatever next attempt its state had (attempts are unchanged).
func ReleaseMessage(d Dirs, name string) (Entry, error) {
	return moveOne(d, name, OpRelease, []Place{PlaceHeld}, filepath.Join(d.Queue, ReadyDir))
}

// ReleaseAll moves every held message that match selects (all if nil) to
// the ready folder.
func ReleaseAll(ctx context.Context, d Dirs, match func(Entry) bool) (MoveResult, error) {
	return moveAll(ctx, d, []Place{PlaceHeld}, filepath.Join(d.Queue, ReadyDir), match, false)
}

// RetryMessage moves a deferred message to the ready folder, to be tried
// now (attempts are unchanged).
func RetryMessage(d Dirs, name string) (Entry, error) {
	return moveOne(d, name, OpRetry, []Place{PlaceDeferred}, filepath.Join(d.Queue, ReadyDir))
}

// RetryAll moves every deferred message that match selects (all if nil) to
// the ready folder.
func RetryAll(ctx context.Context, d Dirs, match func(Entry) bool) (MoveResult, error) {
	return moveAll(ctx, d, []Place{PlaceDeferred}, filepath.Join(d.Queue, ReadyDir), match, false)
}

// moveEntry moves the message e to dstDir under its working name. A message
// without an id (in queue_dir, or left by a version before ids) is given
// one (giveID).
func moveEntry(d Dirs, e Entry, dstDir string) error {
	if e.ID != "" {
		return renameSynced(e.Path, filepath.Join(dstDir, filepath.Base(e.Path)))
	}
	// A file from before ids, outside queue_dir, has its state under its
	// name: it moves to the id.
	var st stages.State
	var legacy bool
	if e.Place != PlaceQueued {
		if old, _ := ReadState(d, e.Name); old != nil {
			st, legacy = *old, true
		}
	}
	if st.Queued.IsZero() {
		st.Queued = queuedTime(e.Name, time.Now())
	}
	_, _, _, err := giveID(d.Queue, e.Path, e.Name, dstDir, &st, legacy, queuefile.SyncDir)
	if err == nil && legacy {
		os.Remove(statePath(d.Queue, e.Name))
	}
	return err
}

// moveOne moves the named message, if it is in one of the places from,
// into dstDir by rename. A rename that fails because the file is gone lost a
// race (the service claimed it, or another command moved it): the message
// is looked for again.
func moveOne(d Dirs, name string, op Op, from []Place, dstDir string) (Entry, error) {
	if err := os.MkdirAll(dstDir, 0o750); err != nil {
		return Entry{}, err
	}
	for range 10 {
		found, err := LocateMessage(d, name)
		if err != nil {
			return Entry{}, err
		}
		if err := oneLive(name, found); err != nil {
			return Entry{}, err
		}
		e := found[0]
		if !slices.Contains(from, e.Place) {
			return e, &PlaceError{Op: op, Entry: e}
		}
		err = moveEntry(d, e, dstDir)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return e, err
		}
		return e, syncDirs(dstDir, filepath.Dir(e.Path))
	}
	return Entry{}, fmt.Errorf("%s kept moving while trying to %s it; try again", name, op)
}

// moveAll moves every message of the places from that match selects
// into dstDir. With countActive, messages in .active that match are counted
// as Active.
func moveAll(ctx context.Context, d Dirs, from []Place, dstDir string, match func(Entry) bool, countActive bool) (MoveResult, error) {
	var r MoveResult
	if err := os.MkdirAll(dstDir, 0o750); err != nil {
		return r, err
	}
	touched := map[string]bool{}
	err := Walk(ctx, d, from, func(e Entry) error {
		if match != nil && !match(e) {
			return nil
		}
		err := moveEntry(d, e, dstDir)
		if err == nil {
			touched[filepath.Dir(e.Path)] = true
		}
		return r.count(err, errors.Is(err, fs.ErrNotExist))
	})
	if err == nil && countActive {
		err = Walk(ctx, d, []Place{PlaceActive}, func(e Entry) error {
			if match == nil || match(e) {
				r.Active++
			}
			return nil
		})
	}
	dirs := []string{dstDir}
	for dir := range touched {
		dirs = append(dirs, dir)
	}
	errs := append([]error{err}, r.clashes...)
	if r.Moved > 0 {
		errs = append(errs, syncDirs(dirs...))
	}
	return r, errors.Join(errs...)
}

// oneLive checks that key names at most one message still in the
// queue (found is LocateMessage's answer).
func oneLive(key string, found []Entry) error {
	var ids []string
	for _, e := range found {
		if slices.Contains(QueuePlaces, e.Place) {
			id := e.ID
			if id == "" {
				id = "(not yet claimed: " + e.Path + ")"
			}
			ids = append(ids, id)
		}
	}
	if len(ids) > 1 {
		return fmt.Errorf("%q: %w (ids: %s)", key, ErrAmbiguous, strings.Join(ids, ", "))
	}
	return nil
}

// renameSynced renames src to dst unless dst exists (ErrNameClash; but if
// src is gone too, someone moved it there: fs.ErrNotExist). The rename
// never replaces a file (moveNoReplace).
func renameSynced(src, dst string) error {
	err := moveNoReplace(src, dst)
	if errors.Is(err, fs.ErrExist) {
		if _, serr := os.Lstat(src); errors.Is(serr, fs.ErrNotExist) {
			return serr
		}
		return fmt.Errorf("%s: %w", dst, ErrNameClash)
	}
	return err
}

func syncDirs(dirs ...string) error {
	var errs []error
	for _, dir := range dirs {
		if err := queuefile.SyncDir(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RequeueMessage puts an undeliverable message back in the queue, fresh: a
// leftover state file is removed, so it starts again with no attempts. Its
// XML log stays in undeliverable_dir as history, renamed
// <name without .eml>.<now, UTC>.xml, so that a later failure can write a new
// <name>.xml. It returns the queued path. A message of the same name still
// in the queue is a clash: nothing is moved. name is the file's name in
// undeliverable_dir, which is the name it is queued under.
//
// Requeues are serialized by a lock file in undeliverable_dir (waiting up to
// a minute for another requeue), so that two of them cannot queue one
// message twice. The message is renamed into the queue; from another
// filesystem it is copied (synced) into the queue before it is removed from
// Undeliverable, so that a crash in between leaves it in both places, never
// in none.
func RequeueMessage(d Dirs, name string, now time.Time) (string, error) {
	if !queuefile.IsQueueName(name) {
		return "", fmt.Errorf("%s: %w", name, ErrNotQueueName)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	unlock, err := lockRequeue(ctx, d)
	if err != nil {
		return "", err
	}
	defer unlock()
	return requeueLocked(d, name, now)
}

func lockRequeue(ctx context.Context, d Dirs) (func(), error) {
	if err := os.MkdirAll(d.Undeliverable, 0o750); err != nil {
		return nil, err
	}
	l := flock.New(filepath.Join(d.Undeliverable, requeueLock))
	ok, err := l.TryLockContext(ctx, 20*time.Millisecond)
	if ok {
		return func() { l.Unlock() }, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("another requeue is still running (it holds %s)", l.Path())
	}
	return nil, fmt.Errorf("locking %s: %w", l.Path(), err)
}

func requeueLocked(d Dirs, name string, now time.Time) (string, error) {
	src := filepath.Join(d.Undeliverable, name)
	if !isFile(src) {
		found, err := LocateMessage(d, name)
		if err != nil {
			return "", err
		}
		return "", &PlaceError{Op: OpRequeue, Entry: found[0]}
	}
	// It comes back as a new arrival (it gets a new id when claimed), so
	// only a file of the same name waiting in queue_dir is in the way.
	if p := filepath.Join(d.Queue, name); isFile(p) {
		return "", fmt.Errorf("%s is also queued (%s): %w; not requeued", name, p, ErrNameClash)
	}
	if err := archiveLog(d, name, now); err != nil {
		return "", err
	}
	dst := filepath.Join(d.Queue, name)
	err := renameSynced(src, dst)
	if errors.Is(err, syscall.EXDEV) {
		// Another filesystem: a synced copy linked into the queue, then the
		// original removed. (Until it is, a quick new failure of the message
		// is filed beside it with a -1 suffix.)
		if err := publishCopy(src, dst, filepath.Join(d.Queue, queuefile.TmpDir)); err != nil {
			return "", err
		}
		if err := os.Remove(src); err != nil {
			return dst, err
		}
	} else if err != nil {
		return "", err
	}
	return dst, syncDirs(d.Queue, d.Undeliverable)
}

// archiveLog renames undeliverable_dir/<base>.xml, if there is one, to
// <base>.<now>.xml (with -N added if that exists too).
func archiveLog(d Dirs, name string, now time.Time) error {
	base := strings.TrimSuffix(name, queuefile.Ext)
	src := filepath.Join(d.Undeliverable, base+".xml")
	if !isFile(src) {
		return nil
	}
	stamp := base + "." + now.UTC().Format(bucketLayout)
	for i := 0; i < 1000; i++ {
		n := stamp + ".xml"
		if i > 0 {
			n = fmt.Sprintf("%s-%d.xml", stamp, i)
		}
		err := moveNoReplace(src, filepath.Join(d.Undeliverable, n))
		if errors.Is(err, fs.ErrExist) {
			continue
		}
		if err != nil {
			return err
		}
		return queuefile.SyncDir(d.Undeliverable)
	}
	return fmt.Errorf("no free name for the old XML log of %s", name)
}

// publishCopy makes src visible at dst (in queue_dir) without replacing
// anything there: a hard link when both are on one filesystem, else a
// synced copy in tmpDir linked into place. src stays.
func publishCopy(src, dst, tmpDir string) error {
	err := os.Link(src, dst)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%s: %w", dst, ErrNameClash)
	}
	if err != nil {
		// Another filesystem (or no hard links): copy, then link.
		if err := os.MkdirAll(tmpDir, 0o750); err != nil {
			return err
		}
		var rnd [6]byte
		if _, err := rand.Read(rnd[:]); err != nil {
			return err
		}
		// Not named after dst: a producer's name may take all 255 bytes.
		tmp := filepath.Join(tmpDir, "requeue-"+hex.EncodeToString(rnd[:])+queuefile.Ext)
		if err := copyFileSynced(src, tmp); err != nil {
			os.Remove(tmp)
			return err
		}
		if err := moveNoReplace(tmp, dst); err != nil {
			os.Remove(tmp)
			if errors.Is(err, fs.ErrExist) {
				err = fmt.Errorf("%s: %w", dst, ErrNameClash)
			}
			return err
		}
	}
	return queuefile.SyncDir(filepath.Dir(dst))
}

// RequeueAll requeues every undeliverable message that match selects (all
// if nil), as RequeueMessage does, holding the requeue lock throughout.
// Clashes are counted, not fatal.
func RequeueAll(ctx context.Context, d Dirs, now time.Time, match func(Entry) bool) (MoveResult, error) {
	var r MoveResult
	lctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	unlock, err := lockRequeue(lctx, d)
	if err != nil {
		return r, err
	}
	defer unlock()
	err = Walk(ctx, d, []Place{PlaceUndeliverable}, func(e Entry) error {
		if match != nil && !match(e) {
			return nil
		}
		_, err := requeueLocked(d, e.Name, now)
		var pe *PlaceError
		return r.count(err, errors.As(err, &pe) || errors.Is(err, ErrMessageNotFound))
	})
	return r, errors.Join(append([]error{err}, r.clashes...)...)
}

// PurgeResult counts what Purge removed.
type PurgeResult struct {
	Messages int // message files
	Logs     int // XML logs (Undeliverable)
}

// purgeLogGrace protects the XML log of a message being filed right now:
// the Archiver writes <name>.xml just before it links <name>.eml, so a
// young log without its message is left alone.
const purgeLogGrace = time.Minute

// Purge removes the messages filed in Sent or Undeliverable before the
// given time, by modification time: a Sent copy's own, and for
// Undeliverable its XML log's (the .eml is a hard link of the queued file
// and keeps the time it was enqueued), with the log. XML logs without their
// message (history kept by requeue) go by their own time. Other places are
// refused.
func Purge(ctx context.Context, d Dirs, place Place, before time.Time) (PurgeResult, error) {
	var r PurgeResult
	var dir string
	switch place {
	case PlaceSent:
		dir = d.Sent
	case PlaceUndeliverable:
		dir = d.Undeliverable
	default:
		return r, fmt.Errorf("purge works on sent or undeliverable, not %s", place)
	}
	f, err := os.Open(dir)
	if err != nil {
		return r, err
	}
	defer f.Close()
	remove := func(p string) (bool, error) {
		err := os.Remove(p)
		if errors.Is(err, fs.ErrNotExist) {
			return false, nil
		}
		return err == nil, err
	}
	modTime := func(p string) (time.Time, bool) {
		fi, err := os.Lstat(p)
		if err != nil || !fi.Mode().IsRegular() {
			return time.Time{}, false
		}
		return fi.ModTime(), true
	}
	for {
		ents, rerr := f.ReadDir(scanBatch)
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return r, err
			}
			name := e.Name()
			if !e.Type().IsRegular() || strings.HasPrefix(name, ".") {
				continue
			}
			p := filepath.Join(dir, name)
			switch {
			case queuefile.IsQueueName(name):
				filed, ok := modTime(p)
				if !ok {
					continue
				}
				logPath := XMLLogPath(p)
				if place == PlaceUndeliverable {
					if t, ok := modTime(logPath); ok {
						filed = t
					}
				}
				if !filed.Before(before) {
					continue
				}
				ok, err := remove(p)
				if err != nil {
					return r, err
				}
				if ok {
					r.Messages++
				}
				if place == PlaceUndeliverable {
					ok, err := remove(logPath)
					if err != nil {
						return r, err
					}
					if ok {
						r.Logs++
					}
				}
			case place == PlaceUndeliverable && strings.HasSuffix(name, ".xml"):
				if isFile(strings.TrimSuffix(p, ".xml") + queuefile.Ext) {
					continue // goes with its message
				}
				t, ok := modTime(p)
				if !ok || !t.Before(before) || time.Since(t) < purgeLogGrace {
					continue
				}
				ok, err := remove(p)
				if err != nil {
					return r, err
				}
				if ok {
					r.Logs++
				}
			}
		}
		if errors.Is(rerr, io.EOF) || len(ents) == 0 {
			break
		}
		if rerr != nil {
			return r, rerr
		}
	}
	if r.Messages+r.Logs > 0 {
		return r, queuefile.SyncDir(dir)
	}
	return r, nil
}

// Control is an operator's instruction to the running service, passed as
// a file in queue_dir/.control/ (the queue commands run as separate
// processes). Op "retry" lifts the pause of Host, or of every host with All,
// so that mail waiting for it is tried now.
//
// Op "hold" asks the service to set aside, in .hold/, the messages it holds
// in memory waiting for a session: the one named Name, those for Host, or
// all with All. Messages being sent at that moment are not held.
type Control struct {
	Op   stages.ControlOp `json:"op"`
	Host string           `json:"host,omitempty"`
	All  bool             `json:"all,omitempty"`
	Name string           `json:"name,omitempty"`
}

// WriteControl leaves an instruction for the running service in
// queueDir/.control/<unixnano>-<random>.json, atomically: written to a
// hidden temporary file, fsynced, renamed into place, folder fsynced. The
// folder is created if missing.
func WriteControl(queueDir string, c Control) error {
	if c.Op == "" {
		return errors.New("control: no op")
	}
	dir := filepath.Join(queueDir, ControlDir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("control: %w", err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	var rnd [6]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return err
	}
	name := fmt.Sprintf("%d-%s.json", time.Now().UnixNano(), hex.EncodeToString(rnd[:]))
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := writeFileSynced(tmp, b); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("control: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("control: %w", err)
	}
	return queuefile.SyncDir(dir)
}

// controlTmpGrace is how old a temporary control file must be to be taken
// for the leftover of a crashed writer.
const controlTmpGrace = time.Hour

// ReadControls returns the instructions waiting in queueDir/.control/,
// oldest first, and removes their files: each is returned once. A file
// that is not a valid instruction is removed too, and named in the error
// (the valid ones are returned all the same). Temporary files of writers
// that died are removed after an hour. A missing folder holds nothing.
// This is the service's side; it is meant to be called by one process.
func ReadControls(queueDir string) ([]Control, error) {
	dir := filepath.Join(queueDir, ControlDir)
	ents, err := os.ReadDir(dir) // sorted by name: by time written
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("control: %w", err)
	}
	var out []Control
	var errs []error
	for _, e := range ents {
		name := e.Name()
		p := filepath.Join(dir, name)
		if !e.Type().IsRegular() {
			continue
		}
		if strings.HasPrefix(name, ".") {
			if fi, err := e.Info(); err == nil && time.Since(fi.ModTime()) > controlTmpGrace {
				os.Remove(p)
			}
			continue
		}
		if !strings.HasSuffix(name, ".json") {
			continue
		}
		b, err := os.ReadFile(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err == nil {
			var c Control
			if err = json.Unmarshal(b, &c); err == nil && c.Op == "" {
				err = errors.New("no op")
			}
			if err == nil {
				out = append(out, c)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("control file %s: %w", name, err))
		}
		if rerr := os.Remove(p); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("control: %w", rerr))
		}
	}
	return out, errors.Join(errs...)
}
