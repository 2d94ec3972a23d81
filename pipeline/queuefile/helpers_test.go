package queuefile_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/emersion/go-message/textproto"
	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// Fixed X25519 test keys. They are constants (not generated per run) so that
// the checked-in fuzz seeds under testdata/fuzz/FuzzOpen that carry a valid
// seal keep opening. They protect nothing; never use them outside tests.
const (
	testIdentity   = "AGE-SECRET-KEY-1HNWU4NXAH39TDE5L733M3MJ63SPF99WRKTSPCJWRCY3880VY6PXQ7R3SUP"
	testRecipient  = "age10erzasc2jcaf0aznn34qlcfjhxf9myhcfqemgmlh328h7m5tpuqs962sq6"
	otherIdentity  = "AGE-SECRET-KEY-1DS38YRGAE0DUY3TD7YGGXHHRTHYZ3ERC63AF8VUXG07XCTUQP7WS4GZHJL"
	otherRecipient = "age1hwpt6tj2g02886chk2nu3xvwjenyt3nxy5tgyt5d8x8jt04fra3qdpelec"
)

// Values sealed by the tests; none of them may show up in clear text in a
// queued file, an error or a formatted Params.
const (
	testHost     = "mail.example.com"
	testUser     = "alice"
	testPassword = "s3cret-pw"
)

// baseTime is the time the tests' clock stands at.
func baseTime() time.Time { return time.Date(2026, 11, 27, 15, 38, 26, 123456789, time.UTC) }

func mustIdentity(tb testing.TB, s string) *age.X25519Identity {
	tb.Helper()
	id, err := age.ParseX25519Identity(s)
	if err != nil {
		tb.Fatalf("parse identity: %v", err)
	}
	return id
}

func mustRecipient(tb testing.TB, s string) *age.X25519Recipient {
	tb.Helper()
	r, err := age.ParseX25519Recipient(s)
	if err != nil {
		tb.Fatalf("parse recipient: %v", err)
	}
	return r
}

func fixedClock(t time.Time) func() time.Time { return func() time.Time { return t } }

// newQueue returns a queue in a fresh temporary directory, sealing to the
// fixed test recipient, with the clock stopped at baseTime.
func newQueue(tb testing.TB) *queuefile.Queue {
	tb.Helper()
	return &queuefile.Queue{
		Dir:        tb.TempDir(),
		Recipients: []age.Recipient{mustRecipient(tb, testRecipient)},
		Now:        fixedClock(baseTime()),
	}
}

// testParams are the parameters the round-trip tests seal.
func testParams(to ...string) queuefile.Params {
	return queuefile.Params{
		Host:     testHost,
		Port:     587,
		Username: testUser,
		Password: queuefile.NewSecret(testPassword),
		From:     "bounces@example.net",
		To:       to,
	}
}

// enqueue queues msg and returns the file name and the queued file's bytes.
func enqueue(tb testing.TB, q *queuefile.Queue, msg []byte, p queuefile.Params) (string, []byte) {
	tb.Helper()
	name, err := q.Enqueue(bytes.NewReader(msg), p)
	if err != nil {
		tb.Fatalf("Enqueue: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(q.Dir, name))
	if err != nil {
		tb.Fatal(err)
	}
	return name, b
}

// sealFile is a shortcut: the queue file that Enqueue makes of msg.
func sealFile(tb testing.TB, msg []byte, p queuefile.Params) []byte {
	tb.Helper()
	_, b := enqueue(tb, newQueue(tb), msg, p)
	return b
}

// lines splits b after each "\n"; the last element lacks one if b does.
func lines(b []byte) [][]byte {
	ls := bytes.SplitAfter(b, []byte("\n"))
	if len(ls) > 0 && len(ls[len(ls)-1]) == 0 {
		ls = ls[:len(ls)-1]
	}
	return ls
}

// splitSeal splits a queue file into its leading sealed field (first line
// and continuation lines) and the message after it, leaving out the padding
// field (PadField) that Enqueue puts between them. It fails the test if the
// file does not start with the sealed field.
func splitSeal(tb testing.TB, file []byte) (seal, rest []byte) {
	tb.Helper()
	if !bytes.HasPrefix(file, []byte(queuefile.SealedField+":")) {
		tb.Fatalf("queue file does not start with %s: %.60q", queuefile.SealedField, file)
	}
	n := fieldLen(file)
	seal, rest = file[:n], file[n:]
	if bytes.HasPrefix(rest, []byte(queuefile.PadField+":")) {
		rest = rest[fieldLen(rest):]
	}
	return seal, rest
}

// fieldLen returns the length of the header field at the start of b: its
// first line and continuation lines.
func fieldLen(b []byte) int {
	ls := lines(b)
	if len(ls) == 0 {
		return 0
	}
	n := len(ls[0])
	for _, l := range ls[1:] {
		if l[0] != ' ' && l[0] != '\t' {
			break
		}
		n += len(l)
	}
	return n
}

// sealCiphertext returns the base64 text of a queue file's leading seal, and
// the file offset of each of its characters.
func sealCiphertext(tb testing.TB, file []byte) (b64 string, offsets []int) {
	tb.Helper()
	seal, _ := splitSeal(tb, file)
	first := bytes.IndexByte(seal, '\n') + 1
	var sb strings.Builder
	for i := first; i < len(seal); i++ {
		if c := seal[i]; c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			sb.WriteByte(c)
			offsets = append(offsets, i)
		}
	}
	return sb.String(), offsets
}

// decodeSeal returns the age ciphertext in a queue file's leading seal.
func decodeSeal(tb testing.TB, file []byte) []byte {
	tb.Helper()
	b64, _ := sealCiphertext(tb, file)
	ct, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		tb.Fatalf("seal is not base64: %v", err)
	}
	return ct
}

// stripSealed returns StripSealed's output for file.
func stripSealed(tb testing.TB, file []byte) []byte {
	tb.Helper()
	var out bytes.Buffer
	if err := queuefile.StripSealed(&out, bytes.NewReader(file)); err != nil {
		tb.Fatalf("StripSealed: %v", err)
	}
	return out.Bytes()
}

// dirNames lists the names in dir, sorted; a missing dir is empty.
func dirNames(tb testing.TB, dir string) []string {
	tb.Helper()
	es, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		tb.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

// assertQueueEmpty fails unless dir holds no queue file and dir/.tmp is
// empty or absent.
func assertQueueEmpty(tb testing.TB, dir string) {
	tb.Helper()
	for _, n := range dirNames(tb, dir) {
		if n != queuefile.TmpDir {
			tb.Errorf("%s left in the queue directory", n)
		}
	}
	if left := dirNames(tb, filepath.Join(dir, queuefile.TmpDir)); len(left) > 0 {
		tb.Errorf("left in %s: %q", queuefile.TmpDir, left)
	}
}

type corpusFile struct {
	name string
	data []byte
}

// corpus returns the shared test messages (read-only).
func corpus(tb testing.TB) []corpusFile {
	tb.Helper()
	paths, err := filepath.Glob(filepath.Join("..", "..", "testdata", "messages", "*.eml"))
	if err != nil {
		tb.Fatal(err)
	}
	if len(paths) == 0 {
		tb.Fatal("no messages in ../../testdata/messages")
	}
	var cs []corpusFile
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		cs = append(cs, corpusFile{name: filepath.Base(p), data: b})
	}
	return cs
}

func corpusMessage(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "messages", name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// openErrors returns the sentinel errors a queue file can be refused with.
func openErrors() []error {
	return []error{
		queuefile.ErrNoSeal, queuefile.ErrDuplicateSeal, queuefile.ErrMalformedSeal,
		queuefile.ErrVersion, queuefile.ErrWrongKey, queuefile.ErrTampered,
		queuefile.ErrTruncated, queuefile.ErrDigest, queuefile.ErrNoSeparator,
		queuefile.ErrFieldTooLong,
	}
}

// errorIsOnly fails unless err matches want and none of the other sentinel
// errors.
func errorIsOnly(tb testing.TB, err, want error) {
	tb.Helper()
	if !errors.Is(err, want) {
		tb.Fatalf("error %v, want %v", err, want)
	}
	for _, other := range openErrors() {
		if other != want && errors.Is(err, other) {
			tb.Errorf("error %v also matches %v", err, other)
		}
	}
}

// removedField is one field of a StripResult's Removed header.
type removedField struct {
	Name, Value string // canonical name, unfolded value
	Raw         []byte // as written
}

// removedFields lists h's fields in file order.
func removedFields(h textproto.Header) []removedField {
	var out []removedField
	for fs := h.Fields(); fs.Next(); {
		raw, _ := fs.Raw()
		out = append(out, removedField{Name: fs.Key(), Value: fs.Value(), Raw: raw})
	}
	return out
}
