package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

func TestKeygen(t *testing.T) {
	t.Setenv("SMTPQ_CONFIG", "")
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "smtpq.yaml")
	cfg := "queue_dir: q\nsent_dir: s\nundeliverable_dir: u\nidentity_file: [k/new.txt, k/old.txt]\nrecipient_file: k/pub.txt\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	e := &testEnv{t: t, dir: dir, cfgPath: cfgPath}
	code, out, stderr := e.smtpq("", "keygen")
	if code != 0 {
		t.Fatalf("keygen: exit %d: %s", code, stderr)
	}
	idPath, pubPath := filepath.Join(dir, "k", "new.txt"), filepath.Join(dir, "k", "pub.txt")
	for _, want := range []string{idPath, pubPath, "public key: age1"} {
		if !strings.Contains(out, want) {
			t.Errorf("keygen output lacks %q:\n%s", want, out)
		}
	}
	if fi, err := os.Stat(idPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("identity file: %v, mode %v", err, fi.Mode())
	}
	if _, err := queuefile.LoadIdentities(idPath); err != nil {
		t.Errorf("identity: %v", err)
	}
	rs, err := queuefile.LoadRecipients(pubPath)
	if err != nil || len(rs) != 1 {
		t.Errorf("recipients: %v %d", err, len(rs))
	}
	pub, _ := os.ReadFile(pubPath)
	key := strings.TrimSpace(out[strings.Index(out, "public key: ")+len("public key: "):])
	if !strings.Contains(string(pub), key) {
		t.Errorf("printed key %q is not in %s:\n%s", key, pubPath, pub)
	}
	idBefore, _ := os.ReadFile(idPath)

	// Refuses to overwrite, naming the file.
	code, _, stderr = e.smtpq("", "keygen")
	if code != exitFailure || !strings.Contains(stderr, idPath) || !strings.Contains(stderr, "refusing to overwrite") {
		t.Errorf("second keygen: exit %d: %s", code, stderr)
	}
	if idAfter, _ := os.ReadFile(idPath); string(idAfter) != string(idBefore) {
		t.Error("identity file changed")
	}
	// Only the recipient file there: still refused, naming it.
	if err := os.Remove(idPath); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = e.smtpq("", "keygen")
	if code != exitFailure || !strings.Contains(stderr, pubPath) {
		t.Errorf("keygen with recipient file present: exit %d: %s", code, stderr)
	}
	if _, err := os.Stat(idPath); !os.IsNotExist(err) {
		t.Errorf("identity file left behind: %v", err)
	}

	// Not configured.
	if err := os.WriteFile(cfgPath, []byte("queue_dir: q\nsent_dir: s\nundeliverable_dir: u\nrecipient_file: k/pub.txt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = e.smtpq("", "keygen")
	if code != exitFailure || !strings.Contains(stderr, "identity_file is not set") {
		t.Errorf("keygen without identity_file: exit %d: %s", code, stderr)
	}
	if err := os.WriteFile(cfgPath, []byte("queue_dir: q\nsent_dir: s\nundeliverable_dir: u\nidentity_file: k/x.txt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = e.smtpq("", "keygen")
	if code != exitFailure || !strings.Contains(stderr, "recipient_file is not set") {
		t.Errorf("keygen without recipient_file: exit %d: %s", code, stderr)
	}
	code, _, stderr = e.smtpq("", "keygen", "extra")
	if code != exitUsage {
		t.Errorf("keygen with an argument: exit %d: %s", code, stderr)
	}
}

func TestConfigCheck(t *testing.T) {
	e := newEnv(t, true)
	code, out, stderr := e.smtpq("", "config", "check")
	if code != 0 {
		t.Fatalf("config check: exit %d: %s", code, stderr)
	}
	for _, want := range []string{
		"queue_dir: " + e.queue,
		"default_relay: main",
		"password_file: " + filepath.Join(e.dir, "relay.pw"),
		"max_threads: 16", // defaults filled in
	} {
		if !strings.Contains(out, want) {
			t.Errorf("config check output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, relayPassword) {
		t.Error("config check printed a password")
	}
	idText, _ := os.ReadFile(filepath.Join(e.dir, "keys", "identity.txt"))
	for _, line := range strings.Split(string(idText), "\n") {
		if strings.HasPrefix(line, "AGE-SECRET-KEY-") && strings.Contains(out, line) {
			t.Error("config check printed the private key")
		}
	}

	// SMTPQ_CONFIG is used without --config.
	t.Setenv("SMTPQ_CONFIG", e.cfgPath)
	if code, out2, stderr := e.run("", "smtpq", "config", "check"); code != 0 || out2 != out {
		t.Errorf("config check with SMTPQ_CONFIG: exit %d: %s", code, stderr)
	}
	t.Setenv("SMTPQ_CONFIG", "")

	bad := func(text, want string) {
		t.Helper()
		p := e.writeFile("bad.yaml", text)
		code, out, stderr := e.run("", "smtpq", "config", "check", "--config", p)
		if code != exitFailure || out != "" || !strings.Contains(stderr, want) {
			t.Errorf("config check of %q: exit %d, stdout %q, stderr %q; want exit 1 and %q", text, code, out, stderr, want)
		}
	}
	// An unknown key: the error names it and its line.
	bad("queue_dir: q\nsent_dir: s\nundeliverable_dir: u\nqueue_dri: x\n", `line 4: unknown key "queue_dri" (did you mean queue_dir?)`)
	bad("queue_dir: q\nsent_dir: s\nundeliverable_dir: u\nmax_thread: 4\n", `line 4: unknown key "max_thread" (did you mean max_threads?)`)
	// An enumerated value that is none of those allowed: the setting, the
	// value and what is allowed.
	bad("queue_dir: q\nsent_dir: s\nundeliverable_dir: u\nrelays: {m: {host: h.example.com, tls: ssl}}\n",
		`relays.m.tls: unknown TLS mode "ssl" (allowed: implicit, starttls, none)`)
	bad("queue_dir: q\nsent_dir: s\nundeliverable_dir: u\nlog: {format: text}\n", `log.format: unknown log format "text" (allowed: console, json)`)
	// A wrong type.
	bad("queue_dir: q\nsent_dir: s\nundeliverable_dir: u\nmax_threads: many\n", "line 4")
	// Several missing settings: still one line, naming each.
	bad("max_threads: 2\n", "queue_dir is required; sent_dir is required; undeliverable_dir is required")
	bad("queue_dir: q\nsent_dir: s\nundeliverable_dir: u\ndefault_relay: nope\n", `default_relay "nope"`)
	// Enumerated values in any case: the effective configuration holds
	// their constants.
	odd := e.writeFile("odd.yaml", "queue_dir: q\nsent_dir: s\nundeliverable_dir: u\n"+
		"relays: {m: {host: h.example.com, tls: STARTTLS}}\nlog: {level: ' Debug ', format: JSON}\n")
	code, out, stderr = e.run("", "smtpq", "config", "check", "--config", odd)
	if code != 0 {
		t.Fatalf("config check of values in capitals: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"tls: starttls", "level: debug", "format: json"} {
		if !strings.Contains(out, want) {
			t.Errorf("config check output lacks %q:\n%s", want, out)
		}
	}
	// A missing file.
	code, _, stderr = e.run("", "smtpq", "config", "check", "--config", filepath.Join(e.dir, "none.yaml"))
	if code != exitFailure || !strings.Contains(stderr, "none.yaml") {
		t.Errorf("config check of a missing file: exit %d: %s", code, stderr)
	}
	// Usage errors.
	if code, _, _ := e.smtpq("", "config", "check", "extra"); code != exitUsage {
		t.Errorf("config check extra: exit %d", code)
	}
	if code, _, _ := e.smtpq("", "config", "frobnicate"); code != exitUsage {
		t.Errorf("config frobnicate: exit %d", code)
	}
}
