package queuefile_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"net/mail"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// namePattern is the form of a queue file name: sortable UTC time, random.
const namePattern = `^\d{8}T\d{6}\.\d{9}Z-[a-z2-7]{16}(\+[0-9a-f]{4})?\.eml$`

func isQueueFileName(name string) bool { return regexp.MustCompile(namePattern).MatchString(name) }

// firstLineEnding is the line ending of the first line of msg.
func firstLineEnding(msg []byte) string {
	if i := bytes.IndexByte(msg, '\n'); i > 0 && msg[i-1] == '\r' {
		return "\r\n"
	}
	return "\n"
}

// headerAddresses is an oracle for the envelope recipients Enqueue takes from
// the headers: the addresses of all To, Cc and Bcc fields, parsed with
// net/mail's own header reader, lower-case duplicates removed, sorted.
func headerAddresses(tb testing.TB, msg []byte) []string {
	tb.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		tb.Fatalf("net/mail: %v", err)
	}
	seen := map[string]bool{}
	var out []string
	for _, k := range []string{"To", "Cc", "Bcc"} {
		for _, v := range m.Header[k] {
			list, err := mail.ParseAddressList(v)
			if err != nil {
				tb.Fatalf("net/mail: %s: %v", k, err)
			}
			for _, a := range list {
				if !seen[strings.ToLower(a.Address)] {
					seen[strings.ToLower(a.Address)] = true
					out = append(out, a.Address)
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// withoutField is an oracle for Strip: msg with every header field called
// name (and its continuation lines) removed, found by a plain line scan.
func withoutField(msg []byte, name string) []byte {
	var out []byte
	inHeader, dropping := true, false
	for _, l := range lines(msg) {
		if inHeader {
			switch {
			case string(l) == "\n" || string(l) == "\r\n":
				inHeader = false
			case l[0] == ' ' || l[0] == '\t':
				if dropping {
					continue
				}
			default:
				dropping = len(l) > len(name) && strings.EqualFold(string(l[:len(name)+1]), name+":")
				if dropping {
					continue
				}
			}
		}
		out = append(out, l...)
	}
	return out
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestRoundTripCorpus(t *testing.T) {
	id := mustIdentity(t, testIdentity)
	explicitTo := []string{"rcpt-one@example.org", "rcpt-two@example.net"}
	for _, c := range corpus(t) {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			for _, tc := range []struct {
				name string
				to   []string // nil: recipients from the headers
				want []byte   // the message as it must reach the SMTP server
			}{
				{"explicit recipients", explicitTo, c.data},
				{"recipients from headers", nil, withoutField(c.data, "Bcc")},
			} {
				t.Run(tc.name, func(t *testing.T) {
					q := newQueue(t)
					given := testParams(tc.to...)
					name, file := enqueue(t, q, c.data, given)

					if !isQueueFileName(name) {
						t.Errorf("name %q does not match %s", name, namePattern)
					}
					if got := dirNames(t, q.Dir); !slices.Equal(got, []string{queuefile.TmpDir, name}) {
						t.Errorf("queue directory holds %q, want only %s and %s", got, queuefile.TmpDir, name)
					}
					if left := dirNames(t, filepath.Join(q.Dir, queuefile.TmpDir)); len(left) > 0 {
						t.Errorf("left in %s after success: %q", queuefile.TmpDir, left)
					}

					seal, rest := splitSeal(t, file)
					if !bytes.Equal(rest, tc.want) {
						t.Errorf("queued message differs from the original:\n got %q\nwant %q", rest, tc.want)
					}
					checkSealLines(t, seal, firstLineEnding(c.data))
					checkNoClearText(t, file, tc.want)

					p, err := queuefile.Open(bytes.NewReader(file), id)
					if err != nil {
						t.Fatalf("Open: %v", err)
					}
					want := given
					if tc.to == nil {
						want.To = headerAddresses(t, c.data)
						p.To = slices.Sorted(slices.Values(p.To))
					}
					want.Digest, want.Size = sha256Hex(tc.want), int64(len(tc.want))
					if !reflect.DeepEqual(p, &want) {
						t.Errorf("Open returned\n%+v\nwant\n%+v", p, &want)
					}
					if p.Password.Reveal() != testPassword {
						t.Errorf("password did not survive the round trip")
					}

					if got := stripSealed(t, file); !bytes.Equal(got, tc.want) {
						t.Errorf("StripSealed output differs:\n got %q\nwant %q", got, tc.want)
					}
				})
			}
		})
	}
}

// checkSealLines checks the sealed field's lines: the version line first,
// then base64 continuation lines, each at most 78 characters and ending in
// eol.
func checkSealLines(t *testing.T, seal []byte, eol string) {
	t.Helper()
	ls := lines(seal)
	if len(ls) < 2 {
		t.Fatalf("sealed field has %d lines", len(ls))
	}
	if got, want := string(ls[0]), queuefile.SealedField+": v1"+eol; got != want {
		t.Errorf("first seal line %q, want %q", got, want)
	}
	for i, l := range ls {
		if !bytes.HasSuffix(l, []byte(eol)) || eol == "\n" && bytes.HasSuffix(l, []byte("\r\n")) {
			t.Errorf("seal line %d %q does not end in %q", i, l, eol)
		}
		text := bytes.TrimSuffix(l, []byte(eol))
		if len(text) > 78 {
			t.Errorf("seal line %d is %d characters long, want at most 78", i, len(text))
		}
		if i > 0 && (text[0] != ' ' || bytes.ContainsFunc(text[1:], func(r rune) bool {
			return !strings.ContainsRune("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", r)
		})) {
			t.Errorf("seal line %d %q is not a space and base64 text", i, text)
		}
	}
}

// checkNoClearText checks that the sealed values appear in the queued file no
// more often than in the message itself (several corpus messages mention
// alice or mail.example.com), and not at all in the ciphertext.
func checkNoClearText(t *testing.T, file, msg []byte) {
	t.Helper()
	ct := decodeSeal(t, file)
	for _, s := range []string{testPassword, testUser, testHost} {
		if got, inMsg := bytes.Count(file, []byte(s)), bytes.Count(msg, []byte(s)); got != inMsg {
			t.Errorf("%q occurs %d times in the queued file, %d times in the message", s, got, inMsg)
		}
		if bytes.Contains(ct, []byte(s)) {
			t.Errorf("%q in clear text inside the seal", s)
		}
	}
	if bytes.Contains(file, []byte(testPassword)) {
		t.Errorf("password in clear text in the queued file")
	}
}

// TestRoundTripBcc checks bcc-header.eml in detail: with the recipients taken
// from the headers, the Bcc field (two addresses, one on a continuation line)
// is gone, its addresses are recipients, and nothing else changed.
func TestRoundTripBcc(t *testing.T) {
	msg := corpusMessage(t, "bcc-header.eml")
	bcc := "Bcc: Zelda Example <zelda@example.net>,\r\n audit-archive@example.com\r\n"
	if bytes.Count(msg, []byte(bcc)) != 1 {
		t.Fatalf("bcc-header.eml no longer holds %q once", bcc)
	}
	want := bytes.Replace(msg, []byte(bcc), nil, 1)

	file := sealFile(t, msg, testParams())
	p, err := queuefile.Open(bytes.NewReader(file), mustIdentity(t, testIdentity))
	if err != nil {
		t.Fatal(err)
	}
	wantTo := []string{"xena@example.org", "yusuf@example.org", "zelda@example.net", "audit-archive@example.com"}
	if !slices.Equal(p.To, wantTo) {
		t.Errorf("recipients %q, want %q", p.To, wantTo)
	}
	got := stripSealed(t, file)
	if !bytes.Equal(got, want) {
		t.Errorf("stripped message:\n got %q\nwant %q", got, want)
	}
	if bytes.Contains(bytes.ToLower(got), []byte("bcc")) || bytes.Contains(got, []byte("audit-archive")) {
		t.Errorf("Bcc field or address left in the message: %q", got)
	}
	if p.Size != int64(len(want)) || p.Digest != sha256Hex(want) {
		t.Errorf("seal covers %d bytes %s, want %d bytes %s", p.Size, p.Digest, len(want), sha256Hex(want))
	}

	// With explicit recipients the message, Bcc included, is queued as given.
	file = sealFile(t, msg, testParams("xena@example.org"))
	if got := stripSealed(t, file); !bytes.Equal(got, msg) {
		t.Errorf("explicit recipients: message changed:\n got %q\nwant %q", got, msg)
	}
}
