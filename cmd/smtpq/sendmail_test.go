package main

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sendmail runs "smtpq sendmail ARGS..." with -C CFG.
func (e *testEnv) sendmail(stdin string, args ...string) (int, string, string) {
	e.t.Helper()
	return e.run(stdin, append([]string{"smtpq", "sendmail", "-C", e.cfgPath}, args...)...)
}

// sendmailOK runs sendmail, wants silent success and returns the queued file.
func (e *testEnv) sendmailOK(stdin string, args ...string) (from string, to []string, msg string) {
	e.t.Helper()
	code, out, stderr := e.sendmail(stdin, args...)
	if code != 0 || out != "" || stderr != "" {
		e.t.Fatalf("sendmail %q: exit %d, stdout %q, stderr %q; want a silent success", args, code, out, stderr)
	}
	p, msg, raw := e.only()
	if p.Relay != "main" {
		e.t.Errorf("relay %q, want the default relay", p.Relay)
	}
	noClearText(e.t, raw, relayPassword, "relay-user", "relay.example.com")
	return p.From, p.To, msg
}

func TestSendmail(t *testing.T) {
	e := newEnv(t, true)
	const plain = "From: App <app@example.com>\nTo: ann@example.org\nSubject: hi\n\nbody\n"

	t.Run("args", func(t *testing.T) {
		e.t = t
		from, to, msg := e.sendmailOK(plain, "x@example.org", "Yan <y@example.org>, z@example.org", "X@EXAMPLE.ORG")
		if from != "app@example.com" || !sameStrings(to, []string{"x@example.org", "y@example.org", "z@example.org"}) {
			t.Errorf("envelope %q -> %q", from, to)
		}
		if msg != plain {
			t.Errorf("message changed: %q", msg)
		}
	})
	t.Run("-t", func(t *testing.T) {
		e.t = t
		from, to, msg := e.sendmailOK(testMsg, "-t")
		if from != "app@example.com" || !sameStrings(to, testMsgRcpts) {
			t.Errorf("envelope %q -> %q", from, to)
		}
		// Without -i the lone "." line ends the message.
		want := strings.Replace(testMsgNoBcc, ".\r\nmore\r\n", "", 1)
		if msg != want {
			t.Errorf("message:\n%q\nwant\n%q", msg, want)
		}
	})
	t.Run("-t with args adds them", func(t *testing.T) {
		e.t = t
		_, to, _ := e.sendmailOK(testMsg, "-t", "-i", "extra@example.com", "ann@example.org")
		want := append([]string{"extra@example.com"}, testMsgRcpts...)
		if !sameStrings(to, want) {
			t.Errorf("recipients %q, want %q", to, want)
		}
	})
	t.Run("Bcc removed without -t", func(t *testing.T) {
		e.t = t
		_, to, msg := e.sendmailOK(testMsg, "-oi", "x@example.org")
		if !sameStrings(to, []string{"x@example.org"}) || msg != testMsgNoBcc {
			t.Errorf("recipients %q, message %q", to, msg)
		}
	})
	t.Run("-i and -oi keep dot lines", func(t *testing.T) {
		for _, flags := range [][]string{{"-i"}, {"-oi"}, {"-ti"}, {"-O", "IgnoreDots=true"}, {"-o", "i"}} {
			e.t = t
			_, _, msg := e.sendmailOK(testMsg, append(flags, "-t")...)
			if msg != testMsgNoBcc {
				t.Errorf("%q: message %q", flags, msg)
			}
		}
	})
	t.Run("dot line ends the message", func(t *testing.T) {
		e.t = t
		for _, in := range []string{"Subject: x\n\nbody\n.\nrest\n", "Subject: x\n\nbody\n.", "Subject: x\n\nbody\n.\r\n"} {
			_, _, msg := e.sendmailOK(in, "-f", "a@example.com", "x@example.org")
			if msg != "Subject: x\n\nbody\n" {
				t.Errorf("%q queued as %q", in, msg)
			}
		}
		// Dots that are not alone on a line are kept as they are.
		in := "Subject: x\n\n.. not alone\n .\n.x\n"
		if _, _, msg := e.sendmailOK(in, "-f", "a@example.com", "x@example.org"); msg != in {
			t.Errorf("queued as %q", msg)
		}
	})
	t.Run("-f", func(t *testing.T) {
		for _, args := range [][]string{
			{"-f", "bounce@example.com"}, {"-fbounce@example.com"}, {"-f", "<bounce@example.com>"},
			{"-r", "bounce@example.com"}, {"-f", "ignored@example.com", "-fbounce@example.com"},
		} {
			e.t = t
			from, _, msg := e.sendmailOK(plain, append(args, "x@example.org")...)
			if from != "bounce@example.com" || msg != plain {
				t.Errorf("%q: sender %q, message %q", args, from, msg)
			}
		}
	})
	t.Run("-F", func(t *testing.T) {
		e.t = t
		const noFrom = "To: ann@example.org\r\nSubject: hi\r\n\r\nbody\r\n"
		from, _, msg := e.sendmailOK(noFrom, "-FCron Daemon", "-f", "root@example.com", "-t")
		if from != "root@example.com" || msg != "From: Cron Daemon <root@example.com>\r\n"+noFrom {
			t.Errorf("sender %q, message %q", from, msg)
		}
		_, _, msg = e.sendmailOK(strings.ReplaceAll(noFrom, "\r\n", "\n"), "-F", `Smith, J. "Jo"`, "-froot@example.com", "-t")
		if msg != `From: "Smith, J. \"Jo\"" <root@example.com>`+"\n"+strings.ReplaceAll(noFrom, "\r\n", "\n") {
			t.Errorf("message %q", msg)
		}
		_, _, msg = e.sendmailOK("Sender: s@example.com\n"+noFrom, "-F", "Jörg", "-t")
		if !strings.HasPrefix(msg, "From: =?utf-8?q?J=C3=B6rg?= <s@example.com>\nSender: s@example.com\n") {
			t.Errorf("message %q", msg)
		}
		// The message has a From field: -F changes nothing.
		_, _, msg = e.sendmailOK(plain, "-F", "Cron Daemon", "-f", "root@example.com", "-t")
		if msg != plain {
			t.Errorf("message %q", msg)
		}
	})
	t.Run("-t, names encoded in other charsets", func(t *testing.T) {
		// Outlook and PHP write windows-1252 words; net/mail alone refused
		// the whole list ("charset not supported").
		e.t = t
		const in = "From: =?windows-1252?q?Ren=E9?= <rene@example.com>\r\n" +
			"To: =?windows-1252?q?Ren=E9e?= <b@example.org>, =?koi8-r?B?7s/Xz9PUyQ==?= <c@example.org>\r\n" +
			"Bcc: =?x-unheard-of?q?Zed?= <d@example.org>\r\nSubject: x\r\n\r\nbody\r\n"
		from, to, msg := e.sendmailOK(in, "-t")
		if from != "rene@example.com" || !sameStrings(to, []string{"b@example.org", "c@example.org", "d@example.org"}) {
			t.Errorf("envelope %q -> %q", from, to)
		}
		if want := strings.Replace(in, "Bcc: =?x-unheard-of?q?Zed?= <d@example.org>\r\n", "", 1); msg != want {
			t.Errorf("message %q, want %q", msg, want)
		}
	})
	t.Run("ignored options", func(t *testing.T) {
		e.t = t
		from, to, msg := e.sendmailOK(plain, "-odi", "-oem", "-om", "-B8BITMIME", "-N", "never", "-G", "-U", "-bm", "-n", "-h", "5", "--", "x@example.org")
		if from != "app@example.com" || !sameStrings(to, []string{"x@example.org"}) || msg != plain {
			t.Errorf("envelope %q -> %q, message %q", from, to, msg)
		}
	})
	t.Run("-v", func(t *testing.T) {
		e.t = t
		code, out, stderr := e.sendmail(plain, "-v", "x@example.org")
		files := e.queued()
		if code != 0 || stderr != "" || len(files) != 1 || out != "queued "+files[0]+"\n" {
			t.Errorf("exit %d, stdout %q, stderr %q, queued %q", code, out, stderr, files)
		}
		e.only()
	})
	t.Run("header only", func(t *testing.T) {
		e.t = t
		for in, want := range map[string]string{
			"Subject: x\n":                    "Subject: x\n\n",
			"Subject: x":                      "Subject: x\n\n",
			"Subject: x\r\nTo: y@example.org": "Subject: x\r\nTo: y@example.org\r\n\r\n",
			"Subject: x\n.\nbody\n":           "Subject: x\n\n",
		} {
			if _, _, msg := e.sendmailOK(in, "-f", "a@example.com", "x@example.org"); msg != want {
				t.Errorf("%q queued as %q, want %q", in, msg, want)
			}
		}
	})
	t.Run("mbox From_ line", func(t *testing.T) {
		e.t = t
		if _, _, msg := e.sendmailOK("From app@example.com Thu Jan  1 00:00:00 2026\n"+plain, "x@example.org"); msg != plain {
			t.Errorf("message %q", msg)
		}
	})
	t.Run("link named sendmail", func(t *testing.T) {
		e.t = t
		t.Setenv("SMTPQ_CONFIG", e.cfgPath)
		code, out, stderr := e.run(plain, "/usr/sbin/sendmail", "-oi", "-t")
		if code != 0 || out != "" || stderr != "" {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, stderr)
		}
		if p, msg, _ := e.only(); !sameStrings(p.To, []string{"ann@example.org"}) || msg != plain {
			t.Errorf("recipients %q, message %q", p.To, msg)
		}
		// --config also works there.
		t.Setenv("SMTPQ_CONFIG", "")
		code, _, stderr = e.run(plain, "sendmail", "--config", e.cfgPath, "x@example.org")
		if code != 0 {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		e.only()
		code, _, stderr = e.run(plain, "smtpq", "--config", e.cfgPath, "sendmail", "x@example.org")
		if code != 0 {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		e.only()
	})
	t.Run("help", func(t *testing.T) {
		e.t = t
		code, out, _ := e.run("", "sendmail", "--help")
		if code != 0 || !strings.Contains(out, "Usage:") {
			t.Errorf("exit %d, stdout %q", code, out)
		}
	})
	e.t = t
}

func TestSendmailErrors(t *testing.T) {
	e := newEnv(t, true)
	const plain = "From: app@example.com\nTo: ann@example.org\nSubject: hi\n\nbody\n"
	tests := []struct {
		name  string
		stdin string
		args  []string
		code  int
		want  string
	}{
		{"no recipients", plain, nil, exUsage, "no recipients: give addresses or -t"},
		{"unknown option", plain, []string{"-Q", "x@example.org"}, exUsage, "unknown option -Q"},
		{"unknown long option", plain, []string{"--frob", "x@example.org"}, exUsage, "unknown option --frob"},
		{"missing value", plain, []string{"x@example.org", "-f"}, exUsage, "option -f needs a value"},
		{"mode", plain, []string{"-bs"}, exUsage, "-bs is not supported"},
		{"queue run", plain, []string{"-q"}, exUsage, "-q (queue run) is not supported"},
		{"null sender", plain, []string{"-f", "<>", "x@example.org"}, exUsage, "null sender"},
		{"name with newline", plain, []string{"-F", "a\nFrom: evil@example.com", "x@example.org"}, exUsage, "-F"},
		{"recipient not a name nor an address", plain, []string{"ro ot"}, exDataErr, `address "ro ot"`},
		{"header address neither", "From: a@example.com\nTo: ann smith\n\nbody\n", []string{"-t"}, exDataErr, "To field"},
		{"recipient CR LF", plain, []string{"x@example.org\r\nRCPT TO:<y@example.org>"}, exDataErr, "contains CR or LF"},
		{"-t without recipients", "From: a@example.com\nSubject: x\n\nbody\n", []string{"-t"}, exDataErr, "no recipients"},
		{"no header", "hello world\n", []string{"x@example.org"}, exDataErr, "line 1 is neither a header field"},
		{"starts with empty line", "\nbody\n", []string{"x@example.org"}, exDataErr, "no header fields"},
		{"empty message", "", []string{"x@example.org"}, exDataErr, "empty message"},
		{"only a dot", ".\n", []string{"x@example.org"}, exDataErr, "empty message"},
		{"already sealed", "X-SmtpQ-Sealed: v1\n AAAA\n" + plain, []string{"x@example.org"}, exDataErr, "already sealed"},
		{"missing config", plain, []string{"-C", filepath.Join(e.dir, "none.yaml"), "x@example.org"}, exConfig, "none.yaml"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			code, out, stderr := e.sendmail(tc.stdin, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) || !strings.HasPrefix(stderr, "smtpq: sendmail: ") {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.want)
			}
			if out != "" {
				t.Errorf("stdout %q", out)
			}
			if q := e.queued(); len(q) != 0 {
				t.Errorf("left in the queue: %q", q)
			}
		})
	}
	e.t = t

	// Reading standard input fails: EX_IOERR.
	var out, errOut bytes.Buffer
	in := io.MultiReader(strings.NewReader("Subject: x\n\nbody"), errReader{})
	if code := run([]string{"sendmail", "-C", e.cfgPath, "-f", "a@example.com", "x@example.org"}, in, &out, &errOut); code != exIOErr || !strings.Contains(errOut.String(), "reading the message") {
		t.Errorf("read error: exit %d: %s", code, errOut.String())
	}
	in = io.MultiReader(strings.NewReader("Subject: x\n"), errReader{})
	errOut.Reset()
	if code := run([]string{"sendmail", "-C", e.cfgPath, "-f", "a@example.com", "x@example.org"}, in, &out, &errOut); code != exIOErr {
		t.Errorf("read error in the header: exit %d: %s", code, errOut.String())
	}
	if q := e.queued(); len(q) != 0 {
		t.Errorf("left in the queue: %q", q)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("device on fire") }

func TestSendmailConfigErrors(t *testing.T) {
	const plain = "From: app@example.com\nTo: ann@example.org\nSubject: hi\n\nbody\n"
	e := newEnv(t, false)
	code, _, stderr := e.sendmail(plain, "x@example.org")
	if code != exConfig || !strings.Contains(stderr, "no default_relay") {
		t.Errorf("no default relay: exit %d: %s", code, stderr)
	}

	e = newEnv(t, true)
	pub := filepath.Join(e.dir, "keys", "recipient.txt")
	if err := os.Rename(pub, pub+".old"); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = e.sendmail(plain, "x@example.org")
	if code != exConfig || !strings.Contains(stderr, pub) {
		t.Errorf("missing recipient file: exit %d: %s", code, stderr)
	}
	if err := os.Rename(pub+".old", pub); err != nil {
		t.Fatal(err)
	}

	// The queue cannot be created: EX_CANTCREAT.
	blocker := e.writeFile("not-a-dir", "")
	cfg, err := os.ReadFile(e.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg = bytes.Replace(cfg, []byte("queue_dir: queue"), []byte("queue_dir: "+filepath.Join(blocker, "queue")), 1)
	e.cfgPath = e.writeFile("blocked.yaml", string(cfg))
	code, _, stderr = e.sendmail(plain, "x@example.org")
	if code != exCantCreat {
		t.Errorf("queue cannot be created: exit %d: %s", code, stderr)
	}
}

// Lines longer than the read buffers, in the header and in the body, and a
// body line that starts with a dot but is not a lone dot.
func TestSendmailLongLines(t *testing.T) {
	e := newEnv(t, true)
	long := strings.Repeat("x", 100<<10)
	in := "From: app@example.com\nX-Long: " + long + "\n continued " + long + "\nSubject: x\n\n" + long + "\n." + long + "\n" + long + "\n.\nafter\n"
	want := strings.TrimSuffix(in, ".\nafter\n")
	if _, _, msg := e.sendmailOK(in, "x@example.org"); msg != want {
		t.Errorf("message of %d bytes queued as %d bytes", len(want), len(msg))
	}
	if _, _, msg := e.sendmailOK(in, "-i", "x@example.org"); msg != in {
		t.Errorf("with -i: message of %d bytes queued as %d bytes", len(in), len(msg))
	}
}
