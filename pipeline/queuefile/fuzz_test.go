package queuefile_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// refStrip is a plain reference for Strip(…, IsSealedField): split into
// lines, drop every header line that starts a sealed field and the
// continuation lines after it, stop at the first empty line.
func refStrip(b []byte) (out []byte, removed [][]byte, headerEnd bool) {
	ls := lines(b)
	dropping := false
	for i, l := range ls {
		if string(l) == "\n" || string(l) == "\r\n" {
			return append(out, bytes.Join(ls[i:], nil)...), removed, true
		}
		if l[0] == ' ' || l[0] == '\t' {
			if dropping {
				removed[len(removed)-1] = append(removed[len(removed)-1], l...)
				continue
			}
		} else if dropping = isSealedLine(l); dropping {
			removed = append(removed, bytes.Clone(l))
			continue
		}
		out = append(out, l...)
	}
	return out, removed, false
}

// isSealedLine reports whether a header line starts a field of the sealed
// block, the seal or its padding (obsolete white space before the colon
// allowed).
func isSealedLine(l []byte) bool {
	i := bytes.IndexByte(l, ':')
	name := string(bytes.TrimRight(l[:max(i, 0)], " \t"))
	return i > 0 && (strings.EqualFold(name, queuefile.SealedField) || strings.EqualFold(name, queuefile.PadField))
}

// headerHasSealedLine reports whether a line of b's header section starts
// with "x-smtpq-sealed:", ignoring case.
func headerHasSealedLine(b []byte) bool {
	for _, l := range lines(b) {
		if string(l) == "\n" || string(l) == "\r\n" {
			return false
		}
		if len(l) > len(queuefile.SealedField) && strings.EqualFold(string(l[:len(queuefile.SealedField)+1]), queuefile.SealedField+":") {
			return true
		}
	}
	return false
}

// addCorpusSeeds adds every corpus message, and each as a sealed queue file.
func addCorpusSeeds(f *testing.F) {
	q := newQueue(f)
	for _, c := range corpus(f) {
		f.Add(c.data)
		_, file := enqueue(f, q, c.data, testParams("x@example.com"))
		f.Add(file)
	}
}

func FuzzOpen(f *testing.F) {
	addCorpusSeeds(f)
	file := sealFile(f, []byte("From: a@example.com\nTo: b@example.org\n\nhi\n"), testParams())
	seal, rest := splitSeal(f, file)
	f.Add(bytes.Join([][]byte{seal, seal, rest}, nil))
	f.Add(seal)
	f.Add(file[:len(file)-3])
	f.Add(append(bytes.Clone(seal), "From: a@example.com\n"...))
	f.Add([]byte("X-SmtpQ-Sealed: v1\n\n"))
	f.Add([]byte("X-SmtpQ-Sealed: v2 AAAA\n\n"))
	f.Add([]byte(""))

	id := mustIdentity(f, testIdentity)
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := queuefile.Open(bytes.NewReader(b), id)
		if err != nil {
			if p != nil {
				t.Fatalf("Open returned parameters with error %v", err)
			}
			known := false
			for _, e := range openErrors() {
				known = known || errors.Is(err, e)
			}
			if !known {
				t.Fatalf("Open error %v is none of the documented ones", err)
			}
			return
		}
		var out bytes.Buffer
		if err := queuefile.StripSealed(&out, bytes.NewReader(b)); err != nil {
			t.Fatalf("Open succeeded, StripSealed failed: %v", err)
		}
		if headerHasSealedLine(out.Bytes()) {
			t.Fatalf("StripSealed left a sealed field: %q", out.Bytes())
		}
		res, err := queuefile.Strip(&bytes.Buffer{}, bytes.NewReader(out.Bytes()), queuefile.IsSealedField)
		if err != nil || res.Removed.Len() != 0 {
			t.Fatalf("stripped output still has %d sealed fields (%v)", res.Removed.Len(), err)
		}
		sum := sha256.Sum256(out.Bytes())
		if int64(out.Len()) != p.Size || hex.EncodeToString(sum[:]) != p.Digest {
			t.Fatalf("Open accepted a message that does not match its seal")
		}
	})
}

func FuzzStrip(f *testing.F) {
	addCorpusSeeds(f)
	for _, s := range []string{
		"X-SmtpQ-Sealed: v1\r\n YWdl\r\nFrom: a\r\n\r\nbody",
		"From: a\nx-smtpq-sealed : v1\n\tYWdl\nTo: b\n\nX-SmtpQ-Sealed: body\n",
		"X-SmtpQ-Sealed: v1\n \n\nbody",
		"From: a\nX-SmtpQ-Sealed: v1",
		" leading\nX-SmtpQ-Sealed:\n",
		"nocolon\nX-SMTPQ-SEALED:x\n\r\n",
		"X-SmtpQ-Sealed: v1\r\n YWdl\r\nX-SmtpQ-Pad: 00\r\n 00\r\nFrom: a\r\n\r\nbody",
		"From: a\nx-smtpq-pad:\n 0\n\nX-SmtpQ-Pad: body\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		res, err := queuefile.Strip(&out, bytes.NewReader(b), queuefile.IsSealedField)
		if errors.Is(err, queuefile.ErrFieldTooLong) {
			return
		}
		if err != nil {
			t.Fatalf("Strip: %v", err)
		}
		got := out.Bytes()
		if headerHasSealedLine(got) {
			t.Fatalf("output header has a sealed field: %q", got)
		}
		wantOut, wantRemoved, wantEnd := refStrip(b)
		if !bytes.Equal(got, wantOut) {
			t.Fatalf("output\n got %q\nwant %q", got, wantOut)
		}
		removed := removedFields(res.Removed)
		if len(removed) != len(wantRemoved) || res.HeaderEnd != wantEnd {
			t.Fatalf("removed %d fields, HeaderEnd %v; want %d, %v", len(removed), res.HeaderEnd, len(wantRemoved), wantEnd)
		}
		n := len(got)
		for i, fl := range removed {
			n += len(fl.Raw)
			if !bytes.Equal(fl.Raw, wantRemoved[i]) || !queuefile.IsSealedField(fl.Name) || !bytes.HasPrefix(bytes.ToLower(fl.Raw), []byte(strings.ToLower(fl.Name))) {
				t.Fatalf("removed field %d: %q %q, want %q", i, fl.Name, fl.Raw, wantRemoved[i])
			}
		}
		if n != len(b) {
			t.Fatalf("output and removed fields hold %d bytes, input %d", n, len(b))
		}
		if len(removed) == 0 && !bytes.Equal(got, b) {
			t.Fatalf("nothing removed but output differs")
		}
		if lb := bytes.ToLower(b); !bytes.Contains(lb, []byte("x-smtpq-sealed")) && !bytes.Contains(lb, []byte("x-smtpq-pad")) && len(removed) != 0 {
			t.Fatalf("removed a field from a message without any")
		}
		// Stripping is idempotent.
		var again bytes.Buffer
		if res2, err := queuefile.Strip(&again, bytes.NewReader(got), queuefile.IsSealedField); err != nil || res2.Removed.Len() != 0 || !bytes.Equal(again.Bytes(), got) {
			t.Fatalf("stripping the output again changed it (%v)", err)
		}
	})
}

func FuzzOpenPickup(f *testing.F) {
	for _, c := range corpus(f) {
		f.Add(c.data)
		f.Add(append([]byte("X-Sender: <s@example.com>\r\nX-Receiver: <r@example.org>\r\n"), c.data...))
	}
	for _, s := range []string{
		"X-Sender: a@example.com\nX-Receiver: b@example.org\nX-Receiver: c@example.org\nSubject: x\nX-Sender: late@example.com\n\nbody\n",
		"X-Receiver: b@example.org\n\n",
		"X-Sender: a@example.com\nX-Receiver: b@example.org\n",
		"junk\nX-Receiver: b@example.org\n\n",
		" cont\nX-Receiver:\n <b@example.org>\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := queuefile.OpenPickup(bytes.NewReader(b))
		var out bytes.Buffer
		serr := queuefile.StripPickup(&out, bytes.NewReader(b))
		if err != nil {
			if p != nil {
				t.Fatalf("OpenPickup returned an envelope with error %v", err)
			}
			return
		}
		if serr != nil {
			t.Fatalf("OpenPickup succeeded, StripPickup failed: %v", serr)
		}
		if len(p.To) == 0 {
			t.Fatal("no recipients")
		}
		for _, a := range append([]string{p.From}, p.To...) {
			if a == p.From && a == "" {
				continue
			}
			if err := queuefile.CheckAddress(a); err != nil {
				t.Fatalf("envelope address: %v", err)
			}
		}
		if p.Size != int64(out.Len()) {
			t.Fatalf("Size %d, stripped %d bytes", p.Size, out.Len())
		}
		// The envelope is gone: the stripped message is no pickup file.
		if _, err := queuefile.OpenPickup(bytes.NewReader(out.Bytes())); !errors.Is(err, queuefile.ErrNotPickup) {
			t.Fatalf("stripped message still has an envelope: %v", err)
		}
	})
}

// readSeed reads a file of the go test fuzz v1 format holding one []byte.
func readSeed(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	head, val, ok := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if !ok || head != "go test fuzz v1" || !strings.HasPrefix(val, "[]byte(") || !strings.HasSuffix(val, ")") {
		t.Fatalf("%s: not a go test fuzz v1 []byte seed", path)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(val, "[]byte("), ")"))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return []byte(s)
}

// TestFuzzSeedCorpus pins what the checked-in FuzzOpen seeds are, so that
// they keep covering what their names say (the valid one is sealed to the
// fixed test key).
func TestFuzzSeedCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzOpen")
	id := mustIdentity(t, testIdentity)
	for name, want := range map[string]error{
		"valid-sealed":   nil,
		"truncated-seal": queuefile.ErrMalformedSeal,
		"two-seals":      queuefile.ErrDuplicateSeal,
		"header-only":    queuefile.ErrNoSeparator,
		"truncated-body": queuefile.ErrTruncated,
	} {
		t.Run(name, func(t *testing.T) {
			b := readSeed(t, filepath.Join(dir, name))
			_, err := queuefile.Open(bytes.NewReader(b), id)
			if want == nil {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				return
			}
			errorIsOnly(t, err, want)
		})
	}
	for _, target := range []string{"FuzzStrip", "FuzzOpenPickup"} {
		es, err := os.ReadDir(filepath.Join("testdata", "fuzz", target))
		if err != nil || len(es) == 0 {
			t.Errorf("no seeds for %s: %v", target, err)
		}
		for _, e := range es {
			readSeed(t, filepath.Join("testdata", "fuzz", target, e.Name()))
		}
	}
}
