package queuefile_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// manyRecipients returns n distinct addresses of 18 bytes each.
func manyRecipients(n int) []string {
	to := make([]string, n)
	for i := range to {
		to[i] = fmt.Sprintf("r%06d@example.org", i)
	}
	return to
}

// TestEnqueueOnlyWhatOpens: whatever Enqueue accepts, the service can open.
// The recipients are sealed, and a sealed field over MaxFieldSize is refused
// by Open (ErrFieldTooLong), so a message with enough recipients used to be
// queued and then filed as invalid. Around the largest recipient count that
// fits, each count must either be refused at enqueue with ErrSealTooLarge or
// make a file that opens.
func TestEnqueueOnlyWhatOpens(t *testing.T) {
	id := mustIdentity(t, testIdentity)
	msg := corpusMessage(t, "plain-crlf.eml")
	q := newQueue(t)
	fits := func(n int) (bool, []byte) {
		t.Helper()
		name, err := q.Enqueue(bytes.NewReader(msg), testParams(manyRecipients(n)...))
		if errors.Is(err, queuefile.ErrSealTooLarge) {
			return false, nil
		}
		if err != nil {
			t.Fatalf("%d recipients: %v", n, err)
		}
		_, file := readQueued(t, q, name)
		return true, file
	}
	// Bisect for the largest count that Enqueue accepts (below 20,000: at 18
	// bytes an address, that many cannot fit in 256 KiB of base64).
	lo, hi := 1, 20_000
	if ok, file := fits(hi); ok {
		_, err := queuefile.Open(bytes.NewReader(file), id)
		t.Fatalf("Enqueue accepted %d recipients, and the service refuses the file: %v", hi, err)
	}
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if ok, _ := fits(mid); ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	for _, n := range []int{lo - 1, lo} {
		ok, file := fits(n)
		if !ok {
			t.Fatalf("%d recipients refused, %d accepted", n, lo)
		}
		p, err := queuefile.Open(bytes.NewReader(file), id)
		if err != nil {
			t.Fatalf("%d recipients: Enqueue accepted a file the service refuses: %v", n, err)
		}
		if len(p.To) != n {
			t.Fatalf("opened %d recipients, want %d", len(p.To), n)
		}
	}
	if ok, _ := fits(lo + 1); ok {
		t.Fatalf("%d recipients accepted after %d was refused", lo+1, lo+1)
	}
	t.Logf("at most %d recipients of 18 bytes fit in a seal", lo)
}

// TestEnqueueSealTooLarge: the refusal names the limit and what made the
// parameters large, reveals no credential, and leaves nothing in the queue.
func TestEnqueueSealTooLarge(t *testing.T) {
	msg := string(corpusMessage(t, "plain-crlf.eml"))
	bigSecret := strings.Repeat("Zq9", queuefile.MaxFieldSize/3)
	limit := strconv.Itoa(queuefile.MaxFieldSize)
	var toHeader strings.Builder
	toHeader.WriteString("From: a@example.com\r\nTo: r000000@example.org")
	for _, a := range manyRecipients(11_000)[1:] {
		toHeader.WriteString(",\r\n " + a)
	}
	toHeader.WriteString("\r\nSubject: many\r\n\r\nbody\r\n")
	for _, tc := range []struct {
		name    string
		msg     string
		p       queuefile.Params
		mention []string
	}{
		{name: "recipients given", msg: msg, p: testParams(manyRecipients(15_000)...),
			mention: []string{"15000 recipients", limit, "MaxFieldSize"}},
		{name: "recipients from the To header", msg: toHeader.String(), p: testParams(),
			mention: []string{"11000 recipients", limit}},
		{name: "OAuth2 token", msg: msg, p: func() queuefile.Params {
			p := testParams("bob@example.org")
			p.Password, p.OAuth2Token = queuefile.Secret{}, queuefile.NewSecret(bigSecret)
			return p
		}(), mention: []string{"OAuth2 token", limit}},
		{name: "password", msg: msg, p: func() queuefile.Params {
			p := testParams("bob@example.org")
			p.Password = queuefile.NewSecret(bigSecret)
			return p
		}(), mention: []string{"password", limit}},
		{name: "HELO name", msg: msg, p: func() queuefile.Params {
			p := testParams("bob@example.org")
			p.HELO = strings.Repeat("h", queuefile.MaxFieldSize)
			return p
		}(), mention: []string{"HELO name", limit}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newQueue(t)
			name, err := q.Enqueue(strings.NewReader(tc.msg), tc.p)
			if err == nil {
				t.Fatalf("Enqueue succeeded: %s", name)
			}
			if !errors.Is(err, queuefile.ErrSealTooLarge) {
				t.Errorf("error %v, want ErrSealTooLarge", err)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
			if strings.Contains(err.Error(), "Zq9Zq9") || strings.Contains(err.Error(), testPassword) {
				t.Errorf("error reveals a credential: %.200s", err)
			}
			if len(err.Error()) > 400 {
				t.Errorf("error is %d bytes long: %.200s...", len(err.Error()), err)
			}
			assertQueueEmpty(t, q.Dir)
		})
	}
}

// TestEnqueueRefusesWhatTheSealWouldChange: the sealed parameters are JSON,
// and encoding/json turns invalid UTF-8 into U+FFFD, so an address or
// credential that is not UTF-8 would reach the service as another value
// (mail to another mailbox, a password that fails). Enqueue refuses it.
func TestEnqueueRefusesWhatTheSealWouldChange(t *testing.T) {
	msg := corpusMessage(t, "plain-crlf.eml")
	for _, tc := range []struct {
		name    string
		set     func(*queuefile.Params)
		mention string
	}{
		{"recipient", func(p *queuefile.Params) { p.To = []string{"bob@example.org", "b\xffb@example.org"} }, "recipient"},
		{"sender", func(p *queuefile.Params) { p.From = "a\xc3@example.com" }, "sender"},
		{"password", func(p *queuefile.Params) { p.Password = queuefile.NewSecret("pw\xfe" + testPassword) }, "password"},
		{"user", func(p *queuefile.Params) { p.Username = "al\xffice" }, "user name"},
		{"HELO name", func(p *queuefile.Params) { p.HELO = "mx\xff.example.com" }, "HELO name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newQueue(t)
			p := testParams("bob@example.org")
			tc.set(&p)
			name, err := q.Enqueue(bytes.NewReader(msg), p)
			if err == nil {
				got, err := queuefile.Open(bytes.NewReader(readQueuedFile(t, q, name)), mustIdentity(t, testIdentity))
				if err != nil {
					t.Fatalf("Enqueue accepted it; the service refuses it: %v", err)
				}
				t.Fatalf("Enqueue accepted it; the service reads sender %q, recipients %q, user %q, HELO %q",
					got.From, got.To, got.Username, got.HELO)
			}
			if !errors.Is(err, queuefile.ErrNotUTF8) || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q is not ErrNotUTF8 or does not mention %q", err, tc.mention)
			}
			if strings.Contains(err.Error(), testPassword) {
				t.Errorf("error reveals the password: %v", err)
			}
			assertQueueEmpty(t, q.Dir)
		})
	}
}

// readQueued returns a queued file's name and bytes.
func readQueued(tb testing.TB, q *queuefile.Queue, name string) (string, []byte) {
	tb.Helper()
	return name, readQueuedFile(tb, q, name)
}

func readQueuedFile(tb testing.TB, q *queuefile.Queue, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(q.Dir, name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}
