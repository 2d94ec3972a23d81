package main

import (
	"os"
	"os/user"
	"slices"
	"strings"
	"testing"
)

// Bare local names, as cron and mail(1) write them, are qualified with
// sendmail.domain after sendmail.aliases, in the envelope and in the
// address fields; a message that names no sender is sent as the invoking
// user, with a From field.
func TestSendmailBareNames(t *testing.T) {
	e := newEnv(t, true)
	f, err := os.OpenFile(e.cfgPath, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("sendmail:\n  domain: host.example.net\n  aliases:\n    root: [ops@example.org, oncall]\n")
	f.Close()

	// Debian cron's command line and message.
	from, to, msg := e.sendmailOK("From: root (Cron Daemon)\nTo: root\nSubject: Cron <root@host> echo hi\n\nhi\n",
		"-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root")
	if from != "root@host.example.net" || !slices.Equal(to, []string{"ops@example.org", "oncall@host.example.net"}) {
		t.Errorf("cron: envelope %q -> %q", from, to)
	}
	if !strings.HasPrefix(msg, "From: Cron Daemon <root@host.example.net>\nTo: root@host.example.net\nSubject: Cron <root@host> echo hi\n\nhi\n") {
		t.Errorf("cron: queued as %q", msg)
	}

	// mail(1) without -r: no From, no sender; recipients bare and full.
	u, err := user.Current()
	if err != nil {
		t.Skip("no current user to check against")
	}
	from, to, msg = e.sendmailOK("To: bob, carol@example.org\nSubject: x\n\nbody\n", "-t")
	want := u.Username + "@host.example.net"
	if from != want || !slices.Equal(to, []string{"bob@host.example.net", "carol@example.org"}) {
		t.Errorf("mail: envelope %q -> %q, want %s", from, to, want)
	}
	if !strings.HasPrefix(msg, "From: "+want+"\nTo: bob@host.example.net, carol@example.org\nSubject: x\n") {
		t.Errorf("mail: queued as %q", msg)
	}

	// -f with a bare name, -F: the From field names the full name.
	from, _, msg = e.sendmailOK("Subject: y\n\nbody\n", "-f", "backup", "-F", "Backup Job", "admin")
	if from != "backup@host.example.net" || !strings.HasPrefix(msg, "From: Backup Job <backup@host.example.net>\n") {
		t.Errorf("-f backup -F: %q, %q", from, msg)
	}
}

// mailq and sendmail -bp list the queue; newaliases and sendmail -bi
// succeed quietly.
func TestMailqAndNewaliases(t *testing.T) {
	e := newEnv(t, true)
	if code, _, stderr := e.sendmail("From: a@example.com\nSubject: q\n\nbody\n", "x@example.org"); code != 0 {
		t.Fatal(stderr)
	}
	t.Setenv("SMTPQ_CONFIG", e.cfgPath)
	for _, args := range [][]string{{"/usr/bin/mailq"}, {"smtpq", "sendmail", "-bp"}} {
		code, out, stderr := e.run("", args...)
		if code != 0 || !strings.Contains(out, "queued") || strings.Count(out, "\n") != 2 {
			t.Errorf("%q: exit %d, %q, %s; want the header and the queued message", args, code, out, stderr)
		}
	}
	for _, args := range [][]string{{"/usr/bin/newaliases"}, {"/usr/sbin/sendmail", "-bi"}} {
		if code, out, stderr := e.run("", args...); code != 0 || out != "" || stderr != "" {
			t.Errorf("%q: exit %d, %q, %q; want a silent success", args, code, out, stderr)
		}
	}
}
