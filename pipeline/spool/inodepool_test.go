//go:build linux

package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/smtpq/smtpq/stages"
)

// sendOne claims a queued pickup-style message and files it as sent, its
// body given as if the Parser had kept it.
func sendOne(t *testing.T, s *Spool, d Dirs, body string, mode os.FileMode) (*stages.Job, string) {
	t.Helper()
	name := testName(t)
	p := placeFile(t, d.Queue, name, "X-SmtpQ-Sealed: v1 junk\r\n"+body)
	os.Chmod(p, mode)
	job := claimTest(t, s, name)
	handle(job).journaled = 0
	path, err := s.FileSent(job, false)
	if err != nil {
		t.Fatal(err)
	}
	return job, path
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// Filed queue copies become later Sent copies: the inode is reused, the
// content is exactly the new message (nothing left of a longer old one), the
// mode is 0640 whatever the queue file had, and the pool is gone at Close.
func TestInodePoolReusesFiledCopies(t *testing.T) {
	d := testDirs(t)
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	long := strings.Repeat("long old message line\r\n", 500)
	first, _ := sendOne(t, s, d, "Subject: 1\r\n\r\n"+long, 0o644)
	if len(s.pool.free) != 1 {
		t.Fatalf("after one filing the pool holds %d files, want the queue copy", len(s.pool.free))
	}
	pooledIno := inode(t, filepath.Join(s.pool.dir, s.pool.free[0].name))
	_, sent := sendOne(t, s, d, "Subject: 2\r\n\r\nshort\r\n", 0o640)
	if got := inode(t, sent); got != pooledIno {
		t.Fatalf("the second stages.Sent copy is inode %d, want the pooled %d", got, pooledIno)
	}
	b, err := os.ReadFile(sent)
	if err != nil || string(b) != "Subject: 2\r\n\r\nshort\r\n" {
		t.Fatalf("the reused stages.Sent copy holds %q (%v)", b, err)
	}
	fi, _ := os.Stat(sent)
	if fi.Mode().Perm() != 0o640 {
		t.Fatalf("reused stages.Sent copy has mode %v, want 0640", fi.Mode().Perm())
	}
	// The first one's queue copy had mode 0644: its reuse is made 0640.
	_, third := sendOne(t, s, d, "Subject: 3\r\n\r\nthree\r\n", 0o640)
	if fi, _ := os.Stat(third); fi.Mode().Perm() != 0o640 {
		t.Fatalf("a 0644 queue copy reused with mode %v, want 0640", fi.Mode().Perm())
	}
	if _, err := os.Stat(handle(first).path); !os.IsNotExist(err) {
		t.Fatalf("the queue copy is still in the active folder: %v", err)
	}
	dir := s.pool.dir
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the pool folder outlived Close: %v", err)
	}
}

// A file with another name (as a message filed in Undeliverable keeps its
// inode there) is never pooled: rewriting it would change that copy.
func TestInodePoolSkipsLinkedFiles(t *testing.T) {
	d, s, job := spoolWithClaimed(t, "X-SmtpQ-Sealed: v1 junk\r\nSubject: x\r\n\r\nbody\r\n")
	path, err := s.FileUndeliverable(job, []byte("<log/>"))
	if err != nil {
		t.Fatal(err)
	}
	if len(s.pool.free) != 0 {
		t.Fatalf("the pool took a file that is filed in Undeliverable (%d pooled)", len(s.pool.free))
	}
	other := filepath.Join(t.TempDir(), "other-link")
	name2 := testName(t)
	p2 := placeFile(t, d.Queue, name2, "X-SmtpQ-Sealed: v1 junk\r\nSubject: y\r\n\r\nbody\r\n")
	if err := os.Link(p2, other); err != nil {
		t.Fatal(err)
	}
	job2 := claimTest(t, s, name2)
	if _, err := s.FileSent(job2, false); err != nil {
		t.Fatal(err)
	}
	if len(s.pool.free) != 0 {
		t.Fatal("the pool took a file with another link")
	}
	if b, _ := os.ReadFile(path); !strings.Contains(string(b), "Subject: x") {
		t.Fatalf("the Undeliverable copy changed: %q", b)
	}
}

// The pool is bounded, and a dead instance's pool is removed by the next
// start.
func TestInodePoolBoundedAndRecovered(t *testing.T) {
	d := testDirs(t)
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range poolMax + 10 {
		name := testName(t)
		placeFile(t, d.Queue, name, fmt.Sprintf("X-SmtpQ-Sealed: v1 junk\r\nSubject: %d\r\n\r\nbody\r\n", i))
		job := claimTest(t, s, name)
		if err := s.forget(job, true); err != nil {
			t.Fatal(err)
		}
	}
	ents, _ := os.ReadDir(s.pool.dir)
	if len(ents) != poolMax {
		t.Fatalf("pool folder holds %d files, want at most %d", len(ents), poolMax)
	}
	// Crash: the instance's lock goes with the process, its files stay.
	deadPool := s.pool.dir
	s.lock.Unlock()
	s2, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if _, err := s2.Recover(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(deadPool); !os.IsNotExist(err) {
		t.Fatalf("a dead instance's pool survived Recover: %v", err)
	}
}

// With Sent on another file system than the queue, the pool turns itself
// off and queue copies are removed as before.
func TestInodePoolOffAcrossFileSystems(t *testing.T) {
	shm, err := os.MkdirTemp("/dev/shm", "smtpq-sent-")
	if err != nil {
		t.Skipf("no tmpfs at /dev/shm to put stages.Sent on another file system: %v", err)
	}
	defer os.RemoveAll(shm)
	var a, b syscall.Statfs_t
	d := testDirs(t)
	d.Sent = shm
	if syscall.Statfs(d.Queue, &a) != nil || syscall.Statfs(shm, &b) != nil || a.Type == b.Type {
		t.Skip("/dev/shm is the same kind of file system as the temporary folder")
	}
	s, err := Open(d, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 3 {
		job, sent := sendOne(t, s, d, fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n", i), 0o640)
		if b, err := os.ReadFile(sent); err != nil || !strings.Contains(string(b), fmt.Sprintf("Subject: %d", i)) {
			t.Fatalf("Sent copy %d: %q, %v", i, b, err)
		}
		if _, err := os.Stat(handle(job).path); !os.IsNotExist(err) {
			t.Fatalf("queue copy %d left behind: %v", i, err)
		}
	}
	if !s.pool.off || len(s.pool.free) != 0 {
		t.Fatalf("pool across file systems: off %v, %d pooled", s.pool.off, len(s.pool.free))
	}
}
