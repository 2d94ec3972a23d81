package queuefile_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// fakeSeal returns a sealed field of exactly n bytes (at least 24) on one
// line: PadSeal cares only for its length.
func fakeSeal(n int, eol string) []byte {
	head := queuefile.SealedField + ": v1 "
	return []byte(head + strings.Repeat("A", n-len(head)-len(eol)) + eol)
}

// PadSeal fills the sealed block to whole blocks for every seal size, with a
// field that is valid (lines within 78 characters, none blank, the file's
// line ending) and that Strip removes with the seal, leaving the message
// byte for byte.
func TestPadSeal(t *testing.T) {
	for _, eol := range []string{"\r\n", "\n"} {
		msg := "From: a@example.com" + eol + "Subject: x" + eol + eol + "body" + eol
		for n := 24; n < 2*queuefile.SealBlock+200; n++ {
			seal := fakeSeal(n, eol)
			if len(seal) != n {
				t.Fatalf("fakeSeal(%d) made %d bytes", n, len(seal))
			}
			block := queuefile.PadSeal(seal, eol, 0)
			if len(block)%queuefile.SealBlock != 0 || !bytes.HasPrefix(block, seal) {
				t.Fatalf("seal of %d: block of %d bytes, not whole %d-byte blocks starting with the seal", n, len(block), queuefile.SealBlock)
			}
			pad := block[n:]
			if !bytes.HasPrefix(pad, []byte(queuefile.PadField+": ")) {
				t.Fatalf("seal of %d: padding starts %.20q", n, pad)
			}
			for i, l := range bytes.SplitAfter(pad, []byte("\n")) {
				if len(l) == 0 {
					continue
				}
				body, ok := bytes.CutSuffix(l, []byte(eol))
				if !ok || len(body) > 77 || bytes.ContainsAny(body, "\r\n") || len(bytes.TrimSpace(body)) == 0 || (i > 0 && body[0] != ' ') {
					t.Fatalf("seal of %d, eol %q: bad padding line %d: %q", n, eol, i, l)
				}
			}
			var out bytes.Buffer
			res, err := queuefile.Strip(&out, strings.NewReader(string(block)+msg), queuefile.IsSealedField)
			if err != nil || out.String() != msg || res.Removed.Len() != 2 || !res.LeadingBlock {
				t.Fatalf("seal of %d: Strip gave %q, %d fields removed, %v", n, out.String(), res.Removed.Len(), err)
			}
		}
	}
}

// Enqueue pads the sealed block of the files it writes to whole blocks; the
// file still opens, to the message byte for byte.
func TestEnqueuePadsTheSealedBlock(t *testing.T) {
	for _, c := range corpus(t) {
		file := sealFile(t, c.data, testParams("x@example.com"))
		want := stripSealed(t, file)
		block := len(file) - len(want)
		if block <= 0 || block%queuefile.SealBlock != 0 || !bytes.Equal(file[block:], want) {
			t.Errorf("%s: the sealed block is %d bytes, or the message does not follow it", c.name, block)
		}
		if !bytes.Contains(file[:block], []byte(queuefile.PadField+": ")) {
			t.Errorf("%s: no %s field in the sealed block", c.name, queuefile.PadField)
		}
		var body bytes.Buffer
		if _, err := queuefile.OpenTo(&body, bytes.NewReader(file), mustIdentity(t, testIdentity)); err != nil || !bytes.Equal(body.Bytes(), want) {
			t.Errorf("%s: OpenTo: %v", c.name, err)
		}
	}
}

// The padding is the service's: a message that carries a padding field
// of its own is refused as already sealed, and a file whose padding comes
// without a seal has none.
func TestPadFieldIsPartOfTheSeal(t *testing.T) {
	msg := "X-SmtpQ-Pad: 000\r\nFrom: a@example.com\r\nTo: b@example.org\r\n\r\nhi\r\n"
	if _, err := newQueue(t).Enqueue(strings.NewReader(msg), testParams("b@example.org")); !errors.Is(err, queuefile.ErrDuplicateSeal) {
		t.Errorf("Enqueue of a message with a padding field: %v, want ErrDuplicateSeal", err)
	}
	if _, err := queuefile.Open(strings.NewReader(msg), mustIdentity(t, testIdentity)); !errors.Is(err, queuefile.ErrNoSeal) {
		t.Errorf("Open of padding without a seal: %v, want ErrNoSeal", err)
	}
}
