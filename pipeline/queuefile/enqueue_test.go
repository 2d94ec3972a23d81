package queuefile_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"filippo.io/age"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

func TestEnqueueNameSortsByClock(t *testing.T) {
	q := newQueue(t)
	msg := corpusMessage(t, "plain-lf.eml")
	zone := time.FixedZone("UTC+2", 2*60*60)
	// Enqueued out of order; several in the same second, one a nanosecond
	// apart, one given in another zone.
	times := []time.Time{
		time.Date(2026, 3, 1, 12, 0, 0, 500, time.UTC),
		time.Date(2025, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2026, 3, 1, 12, 0, 0, 499, time.UTC),
		time.Date(2026, 3, 1, 14, 0, 0, 501, zone), // 12:00:00.000000501 UTC
		time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	byName := map[string]time.Time{}
	for _, tm := range times {
		q.Now = fixedClock(tm)
		name, err := q.Enqueue(bytes.NewReader(msg), testParams("dave@example.com"))
		if err != nil {
			t.Fatal(err)
		}
		if !isQueueFileName(name) {
			t.Errorf("name %q does not match %s", name, namePattern)
		}
		if want := tm.UTC().Format("20060102T150405.000000000Z") + "-"; !strings.HasPrefix(name, want) {
			t.Errorf("name %q for %v, want prefix %q", name, tm, want)
		}
		if !queuefile.IsQueueName(name) {
			t.Errorf("IsQueueName(%q) = false", name)
		}
		byName[name] = tm
	}
	names := dirNames(t, q.Dir) // sorted
	if names[0] != queuefile.TmpDir {
		t.Fatalf("no %s directory: %q", queuefile.TmpDir, names)
	}
	names = names[1:]
	if len(names) != len(times) {
		t.Fatalf("queue holds %d files, want %d", len(names), len(times))
	}
	for i := 1; i < len(names); i++ {
		if !byName[names[i-1]].Before(byName[names[i]]) {
			t.Errorf("%s (%v) sorts before %s (%v)", names[i-1], byName[names[i-1]], names[i], byName[names[i]])
		}
	}
}

func TestEnqueueSameInstantDistinctNames(t *testing.T) {
	q := newQueue(t) // clock stopped: every name has the same time
	msg := corpusMessage(t, "plain-crlf.eml")
	const n = 16
	names := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			names[i], errs[i] = q.Enqueue(bytes.NewReader(msg), testParams("bob@example.org"))
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(names)
	if len(slices.Compact(slices.Clone(names))) != n {
		t.Errorf("duplicate names: %q", names)
	}
	if got := dirNames(t, q.Dir); len(got) != n+1 {
		t.Errorf("queue holds %d entries, want %d files and %s", len(got), n, queuefile.TmpDir)
	}
	for _, name := range names {
		b, err := os.ReadFile(filepath.Join(q.Dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := queuefile.Open(bytes.NewReader(b), mustIdentity(t, testIdentity)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestNewName(t *testing.T) {
	tm := time.Date(2026, 11, 27, 15, 38, 26, 1, time.FixedZone("x", -5*3600))
	a, err := queuefile.NewName(tm)
	if err != nil {
		t.Fatal(err)
	}
	b, err := queuefile.NewName(tm)
	if err != nil {
		t.Fatal(err)
	}
	if !isQueueFileName(a) || !strings.HasPrefix(a, "20261127T203826.000000001Z-") {
		t.Errorf("NewName = %q", a)
	}
	if a == b {
		t.Errorf("two names for the same time are equal: %q", a)
	}
}

func TestIsQueueName(t *testing.T) {
	for name, want := range map[string]bool{
		"20261127T153826.123456789Z-abcdefghijklmnop.eml": true,
		"x.eml":                  true,
		".eml":                   false,
		".hidden.eml":            false,
		".tmp":                   false,
		"message.eml.xml":        false,
		"message.EML":            false,
		"message.txt":            false,
		"sub/message.eml":        false,
		`sub\message.eml`:        false,
		"20261127T153826Z.eml~":  false,
		"":                       false,
		"eml":                    false,
		"message.eml.body":       false,
		"20261127T153826Z-a.eml": true,
	} {
		if got := queuefile.IsQueueName(name); got != want {
			t.Errorf("IsQueueName(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestEnqueueSender(t *testing.T) {
	id := mustIdentity(t, testIdentity)
	for _, tc := range []struct {
		name, msg, from, want string
	}{
		{"Sender header wins over From", "sender-header.eml", "", "assistant@example.org"},
		{"From header", "plain-lf.eml", "", "carol@example.net"},
		{"From header CRLF", "plain-crlf.eml", "", "alice@example.com"},
		{"UTF-8 From header", "smtputf8-address.eml", "", "jörg@example.org"},
		{"given sender wins", "sender-header.eml", "bounces@example.net", "bounces@example.net"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testParams("x@example.com")
			p.From = tc.from
			file := sealFile(t, corpusMessage(t, tc.msg), p)
			got, err := queuefile.Open(bytes.NewReader(file), id)
			if err != nil {
				t.Fatal(err)
			}
			if got.From != tc.want {
				t.Errorf("sender %q, want %q", got.From, tc.want)
			}
		})
	}
}

// TestEnqueueHeaderRecipients covers how recipients come from the headers:
// To, Cc and Bcc in file order, repeated fields, folded fields, duplicates
// removed ignoring case, Bcc removed wherever it stands.
func TestEnqueueHeaderRecipients(t *testing.T) {
	id := mustIdentity(t, testIdentity)
	long := "X-Long: " + strings.Repeat("x", 40_000) + "\n"
	for _, tc := range []struct {
		name, msg string
		wantTo    []string
		wantMsg   string
	}{
		{
			name:    "To Cc Bcc",
			msg:     "From: a@example.com\nTo: b@example.org\nBcc: c@example.net\nCc: d@example.org\n\nbody\n",
			wantTo:  []string{"b@example.org", "c@example.net", "d@example.org"},
			wantMsg: "From: a@example.com\nTo: b@example.org\nCc: d@example.org\n\nbody\n",
		},
		{
			name:    "repeated and folded fields, case-insensitive duplicates",
			msg:     "From: a@example.com\r\nto: B <b@example.org>,\r\n\tC <c@example.org>\r\nCC: b@EXAMPLE.org\r\nbcc: e@example.org,\r\n f@example.org\r\nBCC: g@example.org\r\nSubject: x\r\n\r\nBcc: body@example.org\r\n",
			wantTo:  []string{"b@example.org", "c@example.org", "e@example.org", "f@example.org", "g@example.org"},
			wantMsg: "From: a@example.com\r\nto: B <b@example.org>,\r\n\tC <c@example.org>\r\nCC: b@EXAMPLE.org\r\nSubject: x\r\n\r\nBcc: body@example.org\r\n",
		},
		{
			name:    "empty Bcc removed",
			msg:     "From: a@example.com\nTo: b@example.org\nBcc:\n\nbody\n",
			wantTo:  []string{"b@example.org"},
			wantMsg: "From: a@example.com\nTo: b@example.org\n\nbody\n",
		},
		{
			name:    "Bcc only",
			msg:     "From: a@example.com\nBcc: hidden@example.org\n\nbody\n",
			wantTo:  []string{"hidden@example.org"},
			wantMsg: "From: a@example.com\n\nbody\n",
		},
		{
			// net/mail alone fails these lists ("charset not supported"):
			// go-message decodes windows-1252 and koi8-r, and a charset
			// nobody knows leaves the name encoded but the address read.
			name:    "display names encoded in other charsets",
			msg:     "From: =?windows-1252?q?Ren=E9?= <rene@example.com>\r\nTo: =?windows-1252?q?Ren=E9e?= <b@example.org>, =?koi8-r?B?7s/Xz9PUyQ==?= <c@example.org>\r\nCc: =?x-unheard-of?q?Zed?= <d@example.org>\r\n\r\nbody\r\n",
			wantTo:  []string{"b@example.org", "c@example.org", "d@example.org"},
			wantMsg: "From: =?windows-1252?q?Ren=E9?= <rene@example.com>\r\nTo: =?windows-1252?q?Ren=E9e?= <b@example.org>, =?koi8-r?B?7s/Xz9PUyQ==?= <c@example.org>\r\nCc: =?x-unheard-of?q?Zed?= <d@example.org>\r\n\r\nbody\r\n",
		},
		{
			name:    "fields after an unrelated field larger than MaxFieldSize",
			msg:     "From: a@example.com\nTo: b@example.org\nX-Big: " + strings.Repeat("y", queuefile.MaxFieldSize) + "\nBcc: hidden@example.org\n\nbody\n",
			wantTo:  []string{"b@example.org", "hidden@example.org"},
			wantMsg: "From: a@example.com\nTo: b@example.org\nX-Big: " + strings.Repeat("y", queuefile.MaxFieldSize) + "\n\nbody\n",
		},
		{
			name:    "fields after a header line longer than the read buffer",
			msg:     "From: a@example.com\nTo: b@example.org\n" + long + "Bcc: hidden@example.org\n\nbody\n",
			wantTo:  []string{"b@example.org", "hidden@example.org"},
			wantMsg: "From: a@example.com\nTo: b@example.org\n" + long + "\nbody\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := sealFile(t, []byte(tc.msg), testParams())
			p, err := queuefile.Open(bytes.NewReader(file), id)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(p.To, tc.wantTo) {
				t.Errorf("recipients %q, want %q", p.To, tc.wantTo)
			}
			if got := stripSealed(t, file); string(got) != tc.wantMsg {
				t.Errorf("message\n got %q\nwant %q", got, tc.wantMsg)
			}
		})
	}
}

// TestEnqueueHeaderAtBufferBoundary: a header line whose line ending falls
// at the edge of Enqueue's 32 KiB read buffer (so that the LF, or the CR LF,
// arrives alone) must not be taken for the empty line that ends the header:
// the recipients in the fields after it would be lost.
func TestEnqueueHeaderAtBufferBoundary(t *testing.T) {
	id := mustIdentity(t, testIdentity)
	const buf = 32 << 10
	for _, eol := range []string{"\n", "\r\n"} {
		for _, n := range []int{buf - 1, buf, buf + 1, buf + 2, 2*buf + 1, 2*buf + 2} {
			t.Run(fmt.Sprintf("%q/%d", eol, n), func(t *testing.T) {
				head := "From: a@example.com" + eol + "To: b@example.org" + eol
				long := "X-Long: " + strings.Repeat("x", n-8-len(eol)) + eol
				msg := head + long + "Bcc: hidden@example.org" + eol + eol + "body" + eol
				file := sealFile(t, []byte(msg), testParams())
				p, err := queuefile.Open(bytes.NewReader(file), id)
				if err != nil {
					t.Fatal(err)
				}
				if want := []string{"b@example.org", "hidden@example.org"}; !slices.Equal(p.To, want) {
					t.Errorf("recipients %q, want %q", p.To, want)
				}
				if got, want := string(stripSealed(t, file)), head+long+eol+"body"+eol; got != want {
					t.Errorf("Bcc not removed or message changed")
				}
			})
		}
	}
}

// failingReader returns data, then err.
func failingReader(data string, err error) io.Reader {
	return io.MultiReader(strings.NewReader(data), iotest.ErrReader(err))
}

func TestEnqueueErrors(t *testing.T) {
	msg := string(corpusMessage(t, "plain-crlf.eml"))
	good := testParams("bob@example.org")
	with := func(f func(*queuefile.Params)) queuefile.Params {
		p := good
		f(&p)
		return p
	}
	boom := errors.New("disk on fire")
	for _, tc := range []struct {
		name    string
		msg     io.Reader
		p       queuefile.Params
		noKey   bool
		is      error    // errors.Is target, if any
		mention []string // the error names the problem
	}{
		{name: "no recipients anywhere", msg: strings.NewReader("From: a@example.com\nSubject: x\n\nbody\n"), p: testParams(),
			is: queuefile.ErrNoRecipients, mention: []string{"no recipients"}},
		{name: "recipient with CR LF", msg: strings.NewReader(msg), p: testParams("bob@example.org\r\nRCPT TO:<evil@example.com>"),
			mention: []string{"recipient", "CR or LF"}},
		{name: "recipient with LF", msg: strings.NewReader(msg), p: testParams("bob@example.org\n"),
			mention: []string{"recipient", "CR or LF"}},
		{name: "recipient without @", msg: strings.NewReader(msg), p: testParams("bob.example.org"),
			mention: []string{"recipient", `"bob.example.org"`, "local@domain"}},
		{name: "second recipient bad", msg: strings.NewReader(msg), p: testParams("bob@example.org", "@example.org"),
			mention: []string{"recipient", `"@example.org"`}},
		{name: "sender with CR", msg: strings.NewReader(msg), p: with(func(p *queuefile.Params) { p.From = "a@example.com\r" }),
			mention: []string{"sender", "CR or LF"}},
		{name: "port 70000", msg: strings.NewReader(msg), p: with(func(p *queuefile.Params) { p.Port = 70000 }),
			mention: []string{"port 70000"}},
		{name: "no server", msg: strings.NewReader(msg), p: with(func(p *queuefile.Params) { p.Host = "" }),
			is: queuefile.ErrNoServer},
		{name: "no header/body separator", msg: strings.NewReader("From: a@example.com\r\nTo: b@example.org\r\n"), p: good,
			is: queuefile.ErrNoSeparator, mention: []string{"no empty line"}},
		{name: "header only, no final newline", msg: strings.NewReader("From: a@example.com\r\nTo: b@example.org"), p: good,
			is: queuefile.ErrNoSeparator},
		{name: "empty message", msg: strings.NewReader(""), p: good,
			mention: []string{"empty message"}},
		{name: "no header fields", msg: strings.NewReader("\r\nbody\r\n"), p: good,
			mention: []string{"no header fields"}},
		{name: "starts with a continuation line", msg: strings.NewReader(" x\r\nFrom: a@example.com\r\n\r\n"), p: good,
			mention: []string{"continuation"}},
		{name: "header section too long", msg: strings.NewReader(strings.Repeat("X-Pad: "+strings.Repeat("p", 1000)+"\n", queuefile.MaxHeaderSection/1000+1) + "\nbody"), p: good,
			mention: []string{"header section longer than"}},
		{name: "bad To header", msg: strings.NewReader("From: a@example.com\nTo: <<nonsense\n\nbody\n"), p: testParams(),
			mention: []string{"To header"}},
		{name: "address field larger than MaxFieldSize", msg: strings.NewReader("From: a@example.com\nTo: b@example.org,\n" + strings.Repeat(" c@example.org,\n", queuefile.MaxFieldSize/16) + " d@example.org\nBcc: e@example.org\n\nbody\n"), p: testParams(),
			is: queuefile.ErrFieldTooLong, mention: []string{"To"}},
		{name: "no sender anywhere", msg: strings.NewReader("To: b@example.org\n\nbody\n"), p: with(func(p *queuefile.Params) { p.From = "" }),
			mention: []string{"no sender"}},
		{name: "already sealed", msg: bytes.NewReader(sealFile(t, []byte(msg), good)), p: good,
			is: queuefile.ErrDuplicateSeal, mention: []string{queuefile.SealedField}},
		{name: "no public key", msg: strings.NewReader(msg), p: good, noKey: true,
			mention: []string{"no public key"}},
		{name: "read error in the header", msg: failingReader(msg[:40], boom), p: good,
			is: boom},
		{name: "read error in the body", msg: failingReader(msg[:len(msg)-20], boom), p: good,
			is: boom},
		{name: "read error after a large body", msg: io.MultiReader(strings.NewReader(msg), &repeatReader{unit: []byte("more body\r\n"), n: 100_000}, iotest.ErrReader(boom)), p: good,
			is: boom},
		{name: "read timeout", msg: iotest.TimeoutReader(strings.NewReader(msg)), p: good,
			is: iotest.ErrTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newQueue(t)
			if tc.noKey {
				q.Recipients = nil
			}
			name, err := q.Enqueue(tc.msg, tc.p)
			if err == nil {
				t.Fatalf("Enqueue succeeded: %s", name)
			}
			if name != "" {
				t.Errorf("Enqueue returned name %q with error %v", name, err)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v, want %v", err, tc.is)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
			if strings.Contains(err.Error(), testPassword) {
				t.Errorf("error reveals the password: %v", err)
			}
			assertQueueEmpty(t, q.Dir)
		})
	}
}

// TestEnqueueUnwritableQueue: when the queue directory cannot be created,
// Enqueue fails and leaves nothing behind.
func TestEnqueueUnwritableQueue(t *testing.T) {
	dir := t.TempDir()
	notADir := filepath.Join(dir, "file")
	if err := os.WriteFile(notADir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	q := &queuefile.Queue{Dir: notADir, Recipients: []age.Recipient{mustRecipient(t, testRecipient)}}
	if _, err := q.Enqueue(bytes.NewReader(corpusMessage(t, "plain-lf.eml")), testParams("dave@example.com")); err == nil {
		t.Fatal("Enqueue into a file succeeded")
	}
	if got := dirNames(t, dir); !slices.Equal(got, []string{"file"}) {
		t.Errorf("left behind: %q", got)
	}
}

// TestEnqueueDoesNotModifyParams: Enqueue works on a copy; the caller's
// slices are not written to.
func TestEnqueueDoesNotModifyParams(t *testing.T) {
	to := []string{"bob@example.org", "carol@example.net"}
	p := testParams(to...)
	p.From = ""
	_, file := enqueue(t, newQueue(t), corpusMessage(t, "plain-crlf.eml"), p)
	if p.From != "" || p.Digest != "" || p.Size != 0 || !slices.Equal(p.To, []string{"bob@example.org", "carol@example.net"}) {
		t.Errorf("caller's Params changed: %+v", p)
	}
	if len(file) == 0 {
		t.Fatal("empty queue file")
	}
}

// TestEnqueueMultipleRecipientKeys: a file sealed to several service keys
// opens with each.
func TestEnqueueMultipleRecipientKeys(t *testing.T) {
	q := newQueue(t)
	q.Recipients = append(q.Recipients, mustRecipient(t, otherRecipient))
	_, file := enqueue(t, q, corpusMessage(t, "plain-lf.eml"), testParams("dave@example.com"))
	for _, id := range []string{testIdentity, otherIdentity} {
		if _, err := queuefile.Open(bytes.NewReader(file), mustIdentity(t, id)); err != nil {
			t.Errorf("Open: %v", err)
		}
	}
}

func TestSyncDir(t *testing.T) {
	if err := queuefile.SyncDir(t.TempDir()); err != nil {
		t.Errorf("SyncDir: %v", err)
	}
	if err := queuefile.SyncDir(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("SyncDir of a missing directory succeeded")
	}
}

// TestEnqueueSealsTheTLSConstant: a producer's TLS mode in capitals is
// sealed as the constant, so that a service that compares it exactly
// (an older one) still sees STARTTLS.
func TestEnqueueSealsTheTLSConstant(t *testing.T) {
	p := testParams("bob@example.org")
	p.TLS = " STARTTLS"
	_, file := enqueue(t, newQueue(t), corpusMessage(t, "plain-crlf.eml"), p)
	r, err := age.Decrypt(bytes.NewReader(decodeSeal(t, file)), mustIdentity(t, testIdentity))
	if err != nil {
		t.Fatal(err)
	}
	plain, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(plain, []byte(`"tls":"starttls"`)) {
		t.Errorf("sealed parameters carry the TLS mode as given, not the constant: %s", bytes.ReplaceAll(plain, []byte(testPassword), []byte("***")))
	}
	if p.TLS != " STARTTLS" {
		t.Errorf("Enqueue changed the caller's Params: TLS %q", p.TLS)
	}
}

// With Publish set, Enqueue hands over the bytes it would have written (the
// same seal and message, opened alike) and returns the name Publish gives;
// nothing is left in the queue folder.
func TestEnqueuePublish(t *testing.T) {
	msg := corpusMessage(t, "plain-lf.eml")
	var gotName string
	var got []byte
	q := newQueue(t)
	q.Publish = func(name string, sealed []byte) (string, error) {
		gotName, got = name, sealed
		return "id0123456789abcd", nil
	}
	name, err := q.Enqueue(bytes.NewReader(msg), testParams("dave@example.com"))
	if err != nil || name != "id0123456789abcd" {
		t.Fatalf("Enqueue with Publish: %q, %v", name, err)
	}
	if !queuefile.IsQueueName(gotName) {
		t.Errorf("published under %q, not a queue file name", gotName)
	}
	var body bytes.Buffer
	p, err := queuefile.OpenTo(&body, bytes.NewReader(got), mustIdentity(t, testIdentity))
	if err != nil {
		t.Fatalf("the published bytes do not open: %v", err)
	}
	if !bytes.Equal(body.Bytes(), msg) || p.Host != testHost || p.Size != int64(len(msg)) {
		t.Errorf("published message: host %q size %d, body equal %v", p.Host, p.Size, bytes.Equal(body.Bytes(), msg))
	}
	ents, _ := os.ReadDir(q.Dir)
	for _, e := range ents {
		if e.Name() != queuefile.TmpDir {
			t.Errorf("left in the queue folder: %s", e.Name())
		}
	}
	if tmp, _ := os.ReadDir(filepath.Join(q.Dir, queuefile.TmpDir)); len(tmp) != 0 {
		t.Errorf("left in .tmp: %d files", len(tmp))
	}
	q.Publish = func(string, []byte) (string, error) { return "", errors.New("stream unavailable") }
	if _, err := q.Enqueue(bytes.NewReader(msg), testParams("dave@example.com")); err == nil || !strings.Contains(err.Error(), "stream unavailable") {
		t.Errorf("a failed publish: %v", err)
	}
}
