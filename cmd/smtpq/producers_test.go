//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline/smtptest"
)

// requireProducersEnv is set by "make test-producers" (and so by .ci/run):
// with it, TestProducers runs and fails if it cannot (not root, a program
// missing); without it, it skips, since it adds a user and a group to this
// machine and needs the producer programs installed.
const requireProducersEnv = "SMTPQ_REQUIRE_PRODUCERS"

// Names in the README's recipes ("File permissions", "Producer recipes"),
// and the test's stand-ins for them: the test runs the README's lines with
// its own folder, user and group, as root instead of through sudo.
type recipeNames struct {
	sudo, bin, user, conf, spool, keys, sendmail string
}

var readmeNames = recipeNames{
	sudo:     "sudo ",
	bin:      "/usr/local/bin/smtpq",
	user:     "smtpq",
	conf:     "/etc/smtpq/smtpq.yaml",
	spool:    "/var/spool/smtpq",
	keys:     "/var/lib/smtpq",
	sendmail: "/usr/sbin/sendmail",
}

// python3 is Debian's, which www-data can run (not one under /root).
const python3 = "/usr/bin/python3"

// The test's service user and group (one name for both, as the .deb's
// smtpq). Removed at the end.
const producersUser = "smtpq-ptest"

// permRecipe is README.md's recipe for producers that run as other users
// than the service (File permissions), one command a line.
const permRecipe = `{sudo}adduser www-data {user}
{sudo}mkdir -p {spool}/queue/.tmp
{sudo}chgrp {user} {spool}/queue {spool}/queue/.tmp
{sudo}chmod 2770 {spool}/queue {spool}/queue/.tmp
{sudo}chgrp {user} {conf}
{sudo}chmod 640 {conf}
{sudo}chmod 755 {keys}`

// The producer recipes of README.md (As sendmail): PHP's sendmail_path
// without the .deb, git send-email's sendmailCmd, and the Python script.
const (
	phpRecipe = `sendmail_path = "{bin} sendmail -C {conf} -t -i"`
	gitRecipe = `git config --global sendemail.sendmailCmd "{bin} sendmail -C {conf}"`
	pyRecipe  = `import subprocess
from email.message import EmailMessage

msg = EmailMessage()
msg["From"] = "Reports <reports@example.org>"
msg["To"] = "ann@example.org"
msg["Bcc"] = "audit@example.org"
msg["Subject"] = "Nightly report"
msg.set_content("All green.\n")
subprocess.run(["{sendmail}", "-t", "-oi"], input=msg.as_bytes(), check=True)`
)

func (n recipeNames) render(recipe string) string {
	return strings.NewReplacer("{sudo}", n.sudo, "{bin}", n.bin, "{user}", n.user, "{conf}", n.conf,
		"{spool}", n.spool, "{keys}", n.keys, "{sendmail}", n.sendmail).Replace(recipe)
}

// TestProducersRecipesAreTheReadmes: the recipes TestProducers runs are
// the README's, line for line (with the README's names).
func TestProducersRecipesAreTheReadmes(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []string{permRecipe, phpRecipe, gitRecipe, pyRecipe} {
		for _, line := range strings.Split(readmeNames.render(r), "\n") {
			if !strings.Contains(string(readme), line) {
				t.Errorf("README.md does not have the line %q", line)
			}
		}
	}
}

// producersEnv is the machine TestProducers builds: a service running as
// its own user on a spool under dir, delivering to an in-process sink.
type producersEnv struct {
	t     *testing.T
	names recipeNames
	dir   string
	sink  *smtptest.Server
	svc   *proc
}

// TestProducers sends mail with the real programs that call sendmail, each
// as its users run it, through bin/smtpq to a sink, and checks what
// arrived: bsd-mailx with and without -r, PHP's mail() as www-data set up
// with the README's recipe, git send-email with the README's sendmailCmd,
// and Python piping a message to "sendmail -t -oi" (as www-data too).
// cron's command line and message are sent by "make test-packages" through
// the installed .deb, and not again here.
func TestProducers(t *testing.T) {
	if os.Getenv(requireProducersEnv) == "" {
		t.Skipf("adds a user and a group to this machine: run by make test-producers (%s=1, as root)", requireProducersEnv)
	}
	if os.Geteuid() != 0 {
		t.Fatal("needs root (it adds a user and runs producers as www-data)")
	}
	for _, prog := range []string{"mail", "php", "git", python3, "setpriv", "useradd", "adduser"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Fatalf("%s is missing: bash .ci/install-packages installs the producers", prog)
		}
	}
	if out, err := exec.Command("git", "send-email", "--help").CombinedOutput(); err != nil && strings.Contains(string(out), "not a git command") {
		t.Fatal("git send-email is missing (Debian's git-email)")
	}
	e := newProducersEnv(t)
	e.startService()
	e.applyRecipe(permRecipe)

	type want struct {
		from    string
		to      []string
		headers []string // lines the message must have
	}
	checks := map[string]want{} // by Subject
	e.mailx(true)
	checks["mailx with -r"] = want{"app@example.org", []string{"admin@example.org"},
		[]string{"From: app@example.org"}}
	e.mailx(false)
	checks["mailx without -r"] = want{"root@host.example.net", []string{"ops@example.org"},
		[]string{"From: root@host.example.net", "To: root@host.example.net"}}
	e.php()
	checks["PHP mail() as www-data"] = want{"app@example.org", []string{"ann@example.org"},
		[]string{"From: Web App <app@example.org>", "To: ann@example.org"}}
	e.gitSendEmail()
	checks["[PATCH] Fix the frobnicator"] = want{"dev@example.org", []string{"list@example.org"},
		[]string{"From: Dev <dev@example.org>", "To: list@example.org"}}
	e.python()
	checks["Nightly report"] = want{"reports@example.org", []string{"ann@example.org", "audit@example.org"},
		[]string{"From: Reports <reports@example.org>", "To: ann@example.org"}}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs, err := e.sink.WaitMessages(ctx, len(checks))
	if err != nil {
		t.Fatalf("the sink has %d of %d messages: %v\nservice:\n%s", len(e.sink.Messages()), len(checks), err, e.svc.output())
	}
	for _, m := range msgs {
		data := strings.ReplaceAll(string(m.Data), "\r\n", "\n")
		subject := headerValue(data, "Subject")
		w, ok := checks[subject]
		if !ok {
			t.Errorf("unexpected message %q:\n%s", subject, data)
			continue
		}
		delete(checks, subject)
		if m.From != w.from || !slices.Equal(m.To, w.to) {
			t.Errorf("%s: envelope %s -> %q, want %s -> %q", subject, m.From, m.To, w.from, w.to)
		}
		for _, h := range w.headers {
			if !slices.Contains(headerLines(data), h) {
				t.Errorf("%s: no header line %q in\n%s", subject, h, data)
			}
		}
		for _, field := range []string{"X-SmtpQ-Sealed", "Bcc"} {
			if headerValue(data, field) != "" {
				t.Errorf("%s: the %s field reached the server", subject, field)
			}
		}
	}
	for subject := range checks {
		t.Errorf("%q did not arrive", subject)
	}
	e.stopService()
	e.checkSpool(len(msgs))
}

func newProducersEnv(t *testing.T) *producersEnv {
	dir, err := os.MkdirTemp("", "smtpq-producers-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e := &producersEnv{t: t, dir: dir, names: recipeNames{
		bin:      filepath.Join(dir, "usr/local/bin/smtpq"),
		user:     producersUser,
		conf:     filepath.Join(dir, "etc/smtpq/smtpq.yaml"),
		spool:    filepath.Join(dir, "var/spool/smtpq"),
		keys:     filepath.Join(dir, "var/lib/smtpq"),
		sendmail: filepath.Join(dir, "usr/sbin/sendmail"),
	}}
	e.must("chmod", "755", dir) // MkdirTemp makes it 0700: the users must get through
	for _, d := range []string{"usr/local/bin", "usr/sbin", "etc/smtpq"} {
		e.must("install", "-d", "-m", "755", filepath.Join(dir, d))
	}
	out, err := exec.Command("go", "build", "-o", e.names.bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	// The .deb's link: the binary invoked as sendmail.
	if err := os.Symlink(e.names.bin, e.names.sendmail); err != nil {
		t.Fatal(err)
	}
	e.addUser()
	e.sink = smtptest.NewServer(t)
	// As an administrator writes it: root's, world-readable until the
	// recipe makes it the group's.
	cfg := fmt.Sprintf(`queue_dir: %[1]s/queue
sent_dir: %[1]s/sent
undeliverable_dir: %[1]s/undeliverable
identity_file: %[2]s/identity.txt
recipient_file: %[2]s/recipient.txt
relays:
  sink:
    host: 127.0.0.1
    port: %[3]d
    tls: none
default_relay: sink
allowed_hosts:
  - 127.0.0.1:%[3]d
scan_interval: 1s
sendmail:
  domain: host.example.net
  aliases:
    root: [ops@example.org]
`, e.names.spool, e.names.keys, e.sink.Port())
	if err := os.WriteFile(e.names.conf, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// The service's own folders, as the .deb's postinst makes them.
	e.must("install", "-d", "-o", producersUser, "-g", producersUser, "-m", "755", e.names.spool, e.names.keys)
	return e
}

// addUser adds the service's user and group (a system user, as the .deb
// does) and removes them, and www-data's membership, at the end.
func (e *producersEnv) addUser() {
	if exec.Command("getent", "passwd", producersUser).Run() == nil {
		e.t.Fatalf("user %s exists (left by an interrupted run?): userdel %s; groupdel %s", producersUser, producersUser, producersUser)
	}
	e.must("useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
		"--shell", "/usr/sbin/nologin", producersUser)
	e.t.Cleanup(func() {
		exec.Command("userdel", producersUser).Run()
		exec.Command("groupdel", producersUser).Run() // if www-data kept it
	})
}

func (e *producersEnv) must(args ...string) string {
	e.t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		e.t.Fatalf("%q: %v\n%s", args, err, out)
	}
	return string(out)
}

// as returns a command that runs args as user (with the user's groups from
// /etc/group, as a login or a service manager gives them).
func as(user string, args ...string) *exec.Cmd {
	return exec.Command("setpriv", append([]string{"--reuid=" + user, "--regid=" + user, "--init-groups", "--"}, args...)...)
}

// startService runs "smtpq run --init" as the service user, with the
// unit's umask, as an operator does before any producer is set up: --init
// makes the queue folders and the key pair.
func (e *producersEnv) startService() {
	e.t.Helper()
	cmd := as(producersUser, "sh", "-c", `umask 0007; exec "$0" run --init --config "$1"`, e.names.bin, e.names.conf)
	cmd.Env = childEnv()
	e.svc = startProc(e.t, cmd)
	e.svc.waitLine(runningLine)
}

func (e *producersEnv) stopService() {
	e.t.Helper()
	e.svc.signal(syscall.SIGTERM)
	if code := e.svc.exitCode(); code != 0 {
		e.t.Errorf("smtpq run exited %d:\n%s", code, e.svc.output())
	}
}

// applyRecipe runs the recipe's lines, with the test's names, as root.
func (e *producersEnv) applyRecipe(recipe string) {
	e.t.Helper()
	for _, line := range strings.Split(e.names.render(recipe), "\n") {
		if out, err := exec.Command("sh", "-ec", line).CombinedOutput(); err != nil {
			e.t.Fatalf("recipe line %q: %v\n%s", line, err, out)
		}
	}
}

// produce runs a producer with stdin and fails the test if it does not
// exit 0.
func (e *producersEnv) produce(cmd *exec.Cmd, stdin string) {
	e.t.Helper()
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		e.t.Fatalf("%q: %v\n%s", cmd.Args, err, out)
	}
}

// mailx sends with bsd-mailx as root, which runs the sendmail of its
// mailrc (the .deb's /usr/sbin/sendmail is its default).
func (e *producersEnv) mailx(withR bool) {
	e.t.Helper()
	rc := filepath.Join(e.dir, "mailrc")
	if err := os.WriteFile(rc, []byte("set sendmail="+e.names.sendmail+"\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	args := []string{"-s", "mailx without -r", "root"}
	if withR {
		args = []string{"-r", "app@example.org", "-s", "mailx with -r", "admin@example.org"}
	}
	cmd := exec.Command("mail", args...)
	cmd.Env = childEnv("MAILRC="+rc, "SMTPQ_CONFIG="+e.names.conf, "LOGNAME=root", "USER=root")
	e.produce(cmd, "body from mailx\n")
}

// php calls mail() as www-data, with the README's sendmail_path.
func (e *producersEnv) php() {
	e.t.Helper()
	ini := e.names.render(phpRecipe)
	value := strings.TrimPrefix(ini, "sendmail_path = ")
	cmd := as("www-data", "php", "-n", "-d", "sendmail_path="+value, "-r",
		`exit(mail("ann@example.org", "PHP mail() as www-data", "Hello from PHP.\n", "From: Web App <app@example.org>") ? 0 : 1);`)
	cmd.Env = childEnv()
	e.produce(cmd, "")
}

// gitSendEmail sends a patch with git send-email as root, set up with the
// README's git config line (in a HOME of its own).
func (e *producersEnv) gitSendEmail() {
	e.t.Helper()
	home := filepath.Join(e.dir, "git-home")
	repo := filepath.Join(home, "repo")
	if err := os.MkdirAll(repo, 0o755); err != nil {
		e.t.Fatal(err)
	}
	env := childEnv("HOME="+home, "GIT_CONFIG_NOSYSTEM=1", "GIT_AUTHOR_NAME=Dev", "GIT_AUTHOR_EMAIL=dev@example.org",
		"GIT_COMMITTER_NAME=Dev", "GIT_COMMITTER_EMAIL=dev@example.org")
	run := func(args ...string) {
		e.t.Helper()
		cmd := exec.Command("sh", "-ec", strings.Join(args, " "))
		cmd.Dir, cmd.Env = repo, env
		e.produce(cmd, "")
	}
	run(e.names.render(gitRecipe))
	run("git init -q .")
	run("echo frob > frob.txt && git add frob.txt && git commit -q -m 'Fix the frobnicator'")
	run("git format-patch -q -1 -o ../patches")
	run("git send-email --quiet --confirm=never --suppress-cc=all --from='Dev <dev@example.org>' --to=list@example.org ../patches/*.patch")
}

// python runs the README's script as www-data.
func (e *producersEnv) python() {
	e.t.Helper()
	cmd := as("www-data", python3, "-c", e.names.render(pyRecipe))
	cmd.Env = childEnv("SMTPQ_CONFIG=" + e.names.conf)
	e.produce(cmd, "")
}

// checkSpool: every message was filed in Sent, none in Undeliverable,
// and nothing is left in the queue.
func (e *producersEnv) checkSpool(n int) {
	e.t.Helper()
	count := func(dir string) int {
		m, err := filepath.Glob(filepath.Join(e.names.spool, dir, "*.eml"))
		if err != nil {
			e.t.Fatal(err)
		}
		return len(m)
	}
	if s, u, q := count("sent"), count("undeliverable"), count("queue"); s != n || u != 0 || q != 0 {
		e.t.Errorf("sent %d (want %d), undeliverable %d, queue %d", s, n, u, q)
	}
}

var headerLine = regexp.MustCompile(`^([A-Za-z-]+):\s*(.*)$`)

// headerLines returns the header lines of msg (LF line endings), not
// unfolded.
func headerLines(msg string) []string {
	head, _, _ := strings.Cut(msg, "\n\n")
	return strings.Split(head, "\n")
}

// headerValue returns the value of the first field called name.
func headerValue(msg, name string) string {
	for _, l := range headerLines(msg) {
		if m := headerLine.FindStringSubmatch(l); m != nil && strings.EqualFold(m[1], name) {
			return m[2]
		}
	}
	return ""
}
