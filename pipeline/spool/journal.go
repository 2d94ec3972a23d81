package spool

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/smtpq/smtpq/stages"
)

// journal is an instance's append-only record of the server's acceptances:
// one JSON line per accepted transaction (journalEntry): the message's
// working file name (which starts with its id), whether the server accepted
// it for all pending recipients, and the recipients it accepted. JSON
// escapes every byte that could end a line, so neither a producer's name
// (which is not in the line at all) nor a sealed recipient can write a line
// for another message.
// Append writes a line and returns at once, so that the SMTP session goes on
// with the next message; Sync makes lines durable. Whoever files the message
// calls Sync first (Spool.recorded), so no message is filed, and no queue
// copy removed, before its line is on disk. Concurrent callers share fsyncs
// (group commit): while one syncs, the others' lines queue behind it and the
// next sync covers them all, so the cost per message falls as load rises.
// It replaces a state file per message (create, fsync, rename, folder fsync)
// on the path every successful message takes.
//
// The journal only matters after a crash: at start-up, Recover reads the
// journals of dead instances and writes a state file for each message still
// in the queue, before returning the files to it. A line that reached the
// disk is true whether or not its Sync returned: lines are written only
// after the server's 250. A crash before a line is durable means the
// message is sent again (delivery is at least once). An instance removes
// its journal when it closes.
type journal struct {
	path string

	mu      sync.Mutex // guards f, written and writes
	f       *os.File
	written uint64 // lines written

	commit groupCommit // of line numbers
}

func journalPath(activeRoot, id string) string {
	return filepath.Join(activeRoot, id+".journal")
}

func openJournal(path string) (*journal, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return nil, err
	}
	return &journal{path: path, f: f}, nil
}

// Append writes a line, not yet durably, and returns its number for Sync.
func (j *journal) Append(line string) (uint64, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return 0, errors.New("journal closed")
	}
	if _, err := j.f.WriteString(line + "\n"); err != nil {
		return 0, err
	}
	j.written++
	return j.written, nil
}

// Sync returns once line n, and every line before it, is durable.
func (j *journal) Sync(n uint64) error {
	return j.commit.await(n, func() (uint64, func() error) {
		j.mu.Lock()
		defer j.mu.Unlock()
		if j.f == nil {
			return j.written, func() error { return errors.New("journal closed") }
		}
		return j.written, j.f.Sync
	})
}

// Close closes and removes the journal: every message it speaks of has been
// filed.
func (j *journal) Close() error {
	j.commit.mu.Lock() // no sync in progress
	defer j.commit.mu.Unlock()
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	err := j.f.Close()
	j.f = nil
	if rerr := os.Remove(j.path); err == nil && rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
		err = rerr
	}
	return err
}

// journalEntry is one line of the journal.
type journalEntry struct {
	File  string   `json:"f"`               // the working file name: <id>_<name> or <id>.eml
	All   bool     `json:"all,omitempty"`   // accepted for every pending recipient
	Rcpts []string `json:"rcpts,omitempty"` // the recipients accepted
}

// journalLine is the journal's record of a job the server accepted.
func journalLine(job *stages.Job) string {
	e := journalEntry{File: filepath.Base(handle(job).path), All: job.Outcome.Verdict == stages.Sent}
	for _, r := range job.Outcome.Rcpts {
		if r.Status == stages.RcptDelivered {
			e.Rcpts = append(e.Rcpts, r.Addr)
		}
	}
	b, _ := json.Marshal(e) // strings and a bool: cannot fail
	return string(b)
}

// replayJournal writes, for each message of a dead instance's journal that
// is in dir (its active folder), a state file saying what the server
// accepted, so that the message is not sent again to those recipients.
func (s *Spool) replayJournal(path, dir string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var e journalEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			continue // a line cut by the crash: it was never durable
		}
		id, _, ok := ParseWorkName(e.File)
		if !ok || filepath.Base(e.File) != e.File {
			continue // not one of ours
		}
		if _, err := os.Lstat(filepath.Join(dir, e.File)); err != nil {
			continue // already filed
		}
		st, err := s.readState(id)
		if err != nil || st == nil {
			st = &stages.State{}
		}
		for _, a := range e.Rcpts {
			st.AddDone(a)
		}
		st.Accepted = st.Accepted || e.All
		if err := s.WriteState(id, st); err != nil {
			return fmt.Errorf("journal %s: %w", path, err)
		}
	}
	return sc.Err()
}
