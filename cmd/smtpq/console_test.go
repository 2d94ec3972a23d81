package main

import (
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/smtpq/smtpq/pipeline"
)

// TestConsolePasswd: the hash printed opens with the password read from
// standard input (not a terminal: the first line), is accepted by the
// configuration, and the password is never printed.
func TestConsolePasswd(t *testing.T) {
	e := &testEnv{t: t}
	const pw = "s3cret pass phrase"
	code, out, stderr := e.run(pw+"\r\nsecond line\n", "smtpq", "console", "passwd")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	h := strings.TrimSpace(out)
	if err := bcrypt.CompareHashAndPassword([]byte(h), []byte(pw)); err != nil {
		t.Fatalf("hash %q does not match the password: %v", h, err)
	}
	if strings.Contains(out+stderr, pw) {
		t.Error("the password is printed")
	}
	yaml := "queue_dir: q\nsent_dir: s\nundeliverable_dir: u\nconsole: {listen: 127.0.0.1:8025, users: {admin: {password_hash: '" + h + "'}}}\n"
	if _, err := pipeline.ParseConfig([]byte(yaml), "/etc/smtpq/x.yaml"); err != nil {
		t.Errorf("the configuration refuses the hash: %v", err)
	}
	for _, in := range []string{"", "\n"} {
		if code, _, stderr := e.run(in, "smtpq", "console", "passwd"); code != 2 || !strings.Contains(stderr, "no password") {
			t.Errorf("stdin %q: exit %d %q, want 2 and no password", in, code, stderr)
		}
	}
	if code, _, stderr := e.run(strings.Repeat("x", 100)+"\n", "smtpq", "console", "passwd"); code != 1 || !strings.Contains(stderr, "longer than 72") {
		t.Errorf("long password: exit %d %q", code, stderr)
	}
}
