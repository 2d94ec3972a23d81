//go:build unix

package queuefile_test

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

func TestGenerateKeysModes(t *testing.T) {
	dir := t.TempDir()
	idPath, rcptPath := filepath.Join(dir, "id"), filepath.Join(dir, "rcpt")
	if _, err := queuefile.GenerateKeys(idPath, rcptPath); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(idPath)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Errorf("identity file mode %v, want -rw-------", fi.Mode())
	}
	fi, err = os.Lstat(rcptPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o022 != 0 || fi.Mode().Perm()&0o400 == 0 {
		t.Errorf("recipient file mode %v", fi.Mode())
	}
}

func TestGenerateKeysRefusesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere")
	link := filepath.Join(dir, "id")
	if err := os.Symlink(target, link); err != nil { // dangling
		t.Fatal(err)
	}
	if _, err := queuefile.GenerateKeys(link, filepath.Join(dir, "rcpt")); err == nil {
		t.Fatal("GenerateKeys wrote through a symlink")
	}
	if _, err := os.Lstat(target); err == nil {
		t.Error("symlink target created")
	}
}

// TestLoadIdentitiesRefusesUnsafeFiles: the identity file must be a regular
// file (not through a symlink) that only its owner, the service user, can
// read or write. Each refusal names the file and the reason.
func TestLoadIdentitiesRefusesUnsafeFiles(t *testing.T) {
	dir := t.TempDir()
	keyFile := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(testIdentity+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil { // not subject to umask
			t.Fatal(err)
		}
		return p
	}
	good := keyFile("good", 0o600)
	symlink := filepath.Join(dir, "link")
	if err := os.Symlink(good, symlink); err != nil {
		t.Fatal(err)
	}
	directory := filepath.Join(dir, "directory")
	if err := os.Mkdir(directory, 0o700); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Opening a FIFO for reading blocks until a writer comes; a check that
	// opened the file before refusing it would hang the service's start.
	t.Run("FIFO does not block", func(t *testing.T) {
		done := make(chan error, 1)
		go func() {
			_, err := queuefile.LoadIdentities(fifo)
			done <- err
		}()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), fifo) || !strings.Contains(err.Error(), "not a regular file") {
				t.Errorf("FIFO: error %v, want one naming the file and saying it is not a regular file", err)
			}
		case <-time.After(10 * time.Second):
			// Unblock the reader so that the goroutine ends.
			if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
				w.Close()
			}
			t.Fatal("LoadIdentities blocked opening a FIFO")
		}
	})
	for _, tc := range []struct {
		name    string
		path    string
		mention []string
	}{
		{"mode 0640", keyFile("m0640", 0o640), []string{"m0640", "group or others", "0640"}},
		{"mode 0604", keyFile("m0604", 0o604), []string{"m0604", "group or others", "0604"}},
		{"mode 0644", keyFile("m0644", 0o644), []string{"m0644", "group or others"}},
		{"mode 0620", keyFile("m0620", 0o620), []string{"m0620", "group or others"}},
		{"mode 0602", keyFile("m0602", 0o602), []string{"m0602", "group or others"}},
		{"mode 0700 plus group execute", keyFile("m0710", 0o710), []string{"m0710", "group or others"}},
		{"symlink to a good file", symlink, []string{symlink, "symlink"}},
		{"directory", directory, []string{directory, "not a regular file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, err := queuefile.LoadIdentities(tc.path)
			if err == nil {
				t.Fatalf("LoadIdentities accepted it (%d identities)", len(ids))
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
	for _, mode := range []os.FileMode{0o600, 0o400, 0o700} {
		if _, err := queuefile.LoadIdentities(keyFile("ok"+mode.String(), mode)); err != nil {
			t.Errorf("mode %v refused: %v", mode, err)
		}
	}
}

func TestLoadIdentitiesRefusesOtherOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file to another user")
	}
	p := filepath.Join(t.TempDir(), "id")
	if err := os.WriteFile(p, []byte(testIdentity+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	_, err := queuefile.LoadIdentities(p)
	if err == nil || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "uid 4242") {
		t.Errorf("file of another user: %v", err)
	}
}

// Producers running as other users (PHP as www-data) can read the public
// key that keygen writes into a new keys folder, whatever the umask; the
// private key beside it stays 0600. (The folder used to be made 0700.)
func TestGenerateKeysPublicKeyReachable(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	dir := filepath.Join(t.TempDir(), "keys")
	idPath, rcptPath := filepath.Join(dir, "identity.txt"), filepath.Join(dir, "recipient.txt")
	if _, err := queuefile.GenerateKeys(idPath, rcptPath); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o755, rcptPath: 0o644, idPath: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want && !(path == dir && got&0o005 == 0o005) {
			t.Errorf("%s: mode %v, want %v", path, got, want)
		}
	}
}
