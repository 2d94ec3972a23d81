//go:build !windows

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRunRefusesUnsafeKeys: the service does not start with an identity
// file that others can read, that is a symlink, that is not a key, or that
// is missing; the one error line names the file and the reason.
func TestRunRefusesUnsafeKeys(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, id string)
		want  string
	}{
		{"group readable", func(t *testing.T, id string) { chmod(t, id, 0o640) }, "readable or writable by group or others"},
		{"world readable", func(t *testing.T, id string) { chmod(t, id, 0o604) }, "readable or writable by group or others"},
		{"symlink", func(t *testing.T, id string) {
			real := id + ".real"
			if err := os.Rename(id, real); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(real, id); err != nil {
				t.Fatal(err)
			}
		}, "is a symlink"},
		{"garbage", func(t *testing.T, id string) {
			if err := os.WriteFile(id, []byte("not a key\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, "not an age identity file"},
		{"other owner", func(t *testing.T, id string) {
			if os.Geteuid() != 0 {
				t.Skip("needs root to give the file away")
			}
			if err := os.Chown(id, 4242, 4242); err != nil {
				t.Fatal(err)
			}
		}, "owned by uid 4242"},
		{"missing", func(t *testing.T, id string) {
			if err := os.Remove(id); err != nil {
				t.Fatal(err)
			}
		}, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, true)
			id := filepath.Join(e.dir, "keys", "identity.txt")
			tc.spoil(t, id)
			code, _, stderr := e.smtpq("", "run")
			if code != exitFailure {
				t.Fatalf("run: exit %d, want %d (%s)", code, exitFailure, stderr)
			}
			if !strings.Contains(stderr, id) || !strings.Contains(stderr, tc.want) {
				t.Errorf("run: %q, want the file %s and %q", stderr, id, tc.want)
			}
		})
	}
}

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}
