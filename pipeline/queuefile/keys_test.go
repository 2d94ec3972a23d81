package queuefile_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

func TestGenerateKeys(t *testing.T) {
	dir := t.TempDir()
	idPath := filepath.Join(dir, "keys", "identity.txt") // parent created
	rcptPath := filepath.Join(dir, "public", "recipient.txt")
	rcpt, err := queuefile.GenerateKeys(idPath, rcptPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rcpt, "age1") {
		t.Errorf("recipient %q", rcpt)
	}
	rcptText, err := os.ReadFile(rcptPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(rcptText), rcpt) || strings.Contains(string(rcptText), "AGE-SECRET-KEY") {
		t.Errorf("recipient file: %q", rcptText)
	}

	// The pair works: seal to the recipient file, open with the identity.
	rs, err := queuefile.LoadRecipients(rcptPath)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := queuefile.LoadIdentities(idPath)
	if err != nil {
		t.Fatal(err)
	}
	q := &queuefile.Queue{Dir: t.TempDir(), Recipients: rs}
	_, file := enqueue(t, q, corpusMessage(t, "plain-lf.eml"), testParams("dave@example.com"))
	if _, err := queuefile.Open(bytes.NewReader(file), ids...); err != nil {
		t.Errorf("Open with the generated identity: %v", err)
	}
	// A second pair is a different key.
	rcpt2, err := queuefile.GenerateKeys(filepath.Join(dir, "id2"), filepath.Join(dir, "rcpt2"))
	if err != nil {
		t.Fatal(err)
	}
	if rcpt2 == rcpt {
		t.Error("two generated keys are equal")
	}
}

func TestGenerateKeysRefusesToOverwrite(t *testing.T) {
	const old = "old content\n"
	for _, tc := range []struct {
		name     string
		existing string // "id" or "rcpt"
	}{
		{"identity exists", "id"},
		{"recipient exists", "rcpt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			paths := map[string]string{"id": filepath.Join(dir, "id"), "rcpt": filepath.Join(dir, "rcpt")}
			if err := os.WriteFile(paths[tc.existing], []byte(old), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := queuefile.GenerateKeys(paths["id"], paths["rcpt"])
			if err == nil {
				t.Fatal("GenerateKeys overwrote an existing file")
			}
			if !strings.Contains(err.Error(), paths[tc.existing]) || !strings.Contains(err.Error(), "exists") {
				t.Errorf("error %q does not name the existing file", err)
			}
			if b, _ := os.ReadFile(paths[tc.existing]); string(b) != old {
				t.Errorf("existing file changed to %q", b)
			}
			for k, p := range paths {
				if k == tc.existing {
					continue
				}
				if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s created although GenerateKeys failed", p)
				}
			}
		})
	}
}

func TestLoadIdentitiesErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badKey := "AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQXXXX"
	for _, tc := range []struct {
		name    string
		path    string
		mention []string
	}{
		{"garbage", write("garbage", "this is not a key\n"), []string{"garbage", "not an age identity file"}},
		{"empty", write("empty", ""), []string{"empty", "not an age identity file"}},
		{"comments only", write("comments", "# nothing here\n"), []string{"comments", "not an age identity file"}},
		{"recipient instead of identity", write("public", testRecipient+"\n"), []string{"public", "not an age identity file"}},
		{"malformed secret key", write("malformed", badKey+"\n"), []string{"malformed", "not an age identity file"}},
		{"binary", write("binary", "\xff\xfe\x00AGE"), []string{"binary", "not an age identity file"}},
		{"too large", write("large", "# "+strings.Repeat("x", 70_000)+"\n"+testIdentity+"\n"), []string{"large", "larger than"}},
		{"missing", filepath.Join(dir, "missing"), []string{"missing"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids, err := queuefile.LoadIdentities(tc.path)
			if err == nil {
				t.Fatalf("LoadIdentities succeeded with %d identities", len(ids))
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
			if strings.Contains(err.Error(), "AGE-SECRET-KEY") {
				t.Errorf("error reveals key material: %v", err)
			}
		})
	}
	if _, err := queuefile.LoadIdentities(); err == nil {
		t.Error("LoadIdentities() without files succeeded")
	}
	if _, err := queuefile.LoadIdentities(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want os.ErrNotExist", err)
	}
	// One bad file among good ones fails the whole load.
	good := write("good", testIdentity+"\n")
	if _, err := queuefile.LoadIdentities(good, filepath.Join(dir, "garbage")); err == nil {
		t.Error("a garbage second identity file was accepted")
	}
	if ids, err := queuefile.LoadIdentities(good, write("good2", "# comment\n"+otherIdentity+"\n")); err != nil || len(ids) != 2 {
		t.Errorf("two good files: %d identities, %v", len(ids), err)
	}
}

func TestLoadRecipients(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rs, err := queuefile.LoadRecipients(write("two", "# current\n"+testRecipient+"\n\n# next\n"+otherRecipient+"\n"))
	if err != nil || len(rs) != 2 {
		t.Fatalf("LoadRecipients: %d recipients, %v", len(rs), err)
	}
	for _, tc := range []struct {
		name, path string
	}{
		{"garbage", write("garbage", "not a recipient\n")},
		{"empty", write("empty", "")},
		{"identity instead of recipient", write("identity", testIdentity+"\n")},
		{"missing", filepath.Join(dir, "missing")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := queuefile.LoadRecipients(tc.path)
			if err == nil {
				t.Fatal("LoadRecipients succeeded")
			}
			if !strings.Contains(err.Error(), "recipient file") || !strings.Contains(err.Error(), filepath.Base(tc.path)) {
				t.Errorf("error %q does not name the recipient file", err)
			}
			if strings.Contains(err.Error(), "AGE-SECRET-KEY") {
				t.Errorf("error reveals key material: %v", err)
			}
		})
	}
}

// TestGenerateKeysLeavesNothingOnError: when the recipient file cannot be
// written, the identity file just written is removed again.
func TestGenerateKeysLeavesNothingOnError(t *testing.T) {
	dir := t.TempDir()
	badRecipient := filepath.Join(dir, strings.Repeat("r", 300)) // name too long
	if _, err := queuefile.GenerateKeys(filepath.Join(dir, "id"), badRecipient); err == nil {
		t.Fatal("GenerateKeys succeeded with an impossible recipient path")
	}
	if es, _ := os.ReadDir(dir); len(es) != 0 {
		t.Errorf("left behind: %v", es)
	}
}
