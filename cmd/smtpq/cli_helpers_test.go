package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// Secrets and names that must never appear in clear text in a queue file.
const (
	relayPassword = "relay-pass-Qx7Zk2"
	hostPassword  = "host-pass-Wm4Jt9"
	envPassword   = "env-pass-Rb8Nc3"
	oauthToken    = "oauth-token-Hy5Lp6"
	hostName      = "smtp-direct-host.example.com"
	userName      = "direct-user-Vd3Ks1"
)

// testEnv is a configuration in a temporary folder with keys made by
// "smtpq keygen".
type testEnv struct {
	t       *testing.T
	dir     string
	cfgPath string
	queue   string
}

// newEnv writes a configuration with two relay profiles; withDefault sets
// default_relay: main. It runs keygen.
func newEnv(t *testing.T, withDefault bool) *testEnv {
	t.Helper()
	t.Setenv("SMTPQ_PASSWORD", "")
	t.Setenv("SMTPQ_CONFIG", "")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "relay.pw"), []byte(relayPassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := `queue_dir: queue
sent_dir: sent
undeliverable_dir: undeliverable
identity_file: keys/identity.txt
recipient_file: keys/recipient.txt
relays:
  main:
    host: relay.example.com
    port: 587
    username: relay-user
    password_file: relay.pw
  backup:
    host: backup.example.com
    tls: implicit
    port: 465
`
	if withDefault {
		cfg += "default_relay: main\n"
	}
	e := &testEnv{t: t, dir: dir, cfgPath: filepath.Join(dir, "smtpq.yaml"), queue: filepath.Join(dir, "queue")}
	if err := os.WriteFile(e.cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, _, stderr := e.run("", "smtpq", "keygen", "--config", e.cfgPath); code != 0 {
		t.Fatalf("keygen: exit %d: %s", code, stderr)
	}
	return e
}

// run runs the command line args with stdin and returns the exit status and
// the output. A failure must print exactly one line "smtpq: ..." on stderr.
func (e *testEnv) run(stdin string, args ...string) (code int, stdout, stderr string) {
	e.t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, strings.NewReader(stdin), &out, &errOut)
	stdout, stderr = out.String(), errOut.String()
	if code != 0 {
		if !strings.HasPrefix(stderr, "smtpq: ") || strings.Count(stderr, "\n") != 1 || !strings.HasSuffix(stderr, "\n") {
			e.t.Errorf("%q: stderr is not one line \"smtpq: ...\": %q", args, stderr)
		}
	}
	return code, stdout, stderr
}

// smtpq runs "smtpq ARGS... --config CFG".
func (e *testEnv) smtpq(stdin string, args ...string) (int, string, string) {
	e.t.Helper()
	return e.run(stdin, append(append([]string{"smtpq"}, args...), "--config", e.cfgPath)...)
}

// queued returns the paths of the files in the queue.
func (e *testEnv) queued() []string {
	e.t.Helper()
	ents, err := os.ReadDir(e.queue)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	var out []string
	for _, ent := range ents {
		if queuefile.IsQueueName(ent.Name()) {
			out = append(out, filepath.Join(e.queue, ent.Name()))
		}
	}
	return out
}

// open opens a queued file with the service's identity and returns its
// parameters and the message as it will be sent.
func (e *testEnv) open(path string) (*queuefile.Params, string) {
	e.t.Helper()
	ids, err := queuefile.LoadIdentities(filepath.Join(e.dir, "keys", "identity.txt"))
	if err != nil {
		e.t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer f.Close()
	p, err := queuefile.Open(f, ids...)
	if err != nil {
		e.t.Fatalf("open %s: %v", path, err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		e.t.Fatal(err)
	}
	var msg bytes.Buffer
	if err := queuefile.StripSealed(&msg, f); err != nil {
		e.t.Fatal(err)
	}
	return p, msg.String()
}

// only returns the single queued file, failing the test if there is not
// exactly one, and removes it so that the next check starts empty.
func (e *testEnv) only() (*queuefile.Params, string, []byte) {
	e.t.Helper()
	files := e.queued()
	if len(files) != 1 {
		e.t.Fatalf("want 1 queued file, have %d: %q", len(files), files)
	}
	raw, err := os.ReadFile(files[0])
	if err != nil {
		e.t.Fatal(err)
	}
	p, msg := e.open(files[0])
	if err := os.Remove(files[0]); err != nil {
		e.t.Fatal(err)
	}
	return p, msg, raw
}

func (e *testEnv) writeFile(name, content string) string {
	e.t.Helper()
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// noClearText fails if the raw queue file holds any of the secrets.
func noClearText(t *testing.T, raw []byte, secrets ...string) {
	t.Helper()
	for _, s := range secrets {
		if bytes.Contains(raw, []byte(s)) {
			t.Errorf("queue file holds %q in clear text", s)
		}
	}
}

func sameStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
