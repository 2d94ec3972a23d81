package queuefile_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// sealJSON encrypts plain (the JSON inside a seal) to the test recipient and
// returns a complete sealed field, so that tests can seal what SealHeader
// would never write.
func sealJSON(tb testing.TB, plain, eol string) []byte {
	tb.Helper()
	var ct bytes.Buffer
	w, err := age.Encrypt(&ct, mustRecipient(tb, testRecipient))
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.Write([]byte(plain)); err != nil {
		tb.Fatal(err)
	}
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString(ct.Bytes())
	h := queuefile.SealedField + ": v1" + eol
	for len(b64) > 0 {
		n := min(76, len(b64))
		h += " " + b64[:n] + eol
		b64 = b64[n:]
	}
	return []byte(h)
}

// flipSealByte changes the base64 character of the leading seal that covers
// byte j of the decoded ciphertext to another base64 character, and checks
// that the decoded ciphertext really changed at j.
func flipSealByte(tb testing.TB, file []byte, j int) []byte {
	tb.Helper()
	b64, offs := sealCiphertext(tb, file)
	k := j * 8 / 6 // the character holding the first bit of byte j
	out := bytes.Clone(file)
	if out[offs[k]] == 'A' {
		out[offs[k]] = 'B'
	} else {
		out[offs[k]] = 'A'
	}
	before, _ := base64.StdEncoding.DecodeString(b64)
	after := decodeSeal(tb, out)
	if before[j] == after[j] {
		tb.Fatalf("flipping character %d did not change ciphertext byte %d", k, j)
	}
	return out
}

func TestOpenErrors(t *testing.T) {
	small := corpusMessage(t, "plain-crlf.eml")
	large := corpusMessage(t, "multipart-mixed-attachment.eml")
	if len(large) <= len(small) {
		t.Fatal("corpus: multipart-mixed-attachment.eml is not larger than plain-crlf.eml")
	}
	p := testParams("bob@example.org")
	file := sealFile(t, small, p)
	seal, rest := splitSeal(t, file)
	seal2, _ := splitSeal(t, sealFile(t, small, p))
	sealLines := lines(seal)
	largeSeal, largeRest := splitSeal(t, sealFile(t, large, p))
	ct := decodeSeal(t, file)
	mac := bytes.Index(ct, []byte("\n--- ")) + len("\n--- ")
	if mac < len("\n--- ") {
		t.Fatal("no header MAC line in the age ciphertext")
	}
	eol := "\r\n"
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	replaceOnce := func(b []byte, old, new string) []byte {
		if !bytes.Contains(b, []byte(old)) {
			t.Fatalf("%q not in %.80q", old, b)
		}
		return bytes.Replace(bytes.Clone(b), []byte(old), []byte(new), 1)
	}

	// A seal over a message without the empty line after the header.
	noSep := []byte("From: a@example.com\r\nTo: b@example.org\r\n")
	ps := testParams("b@example.org")
	ps.Digest, ps.Size = sha256Hex(noSep), int64(len(noSep))
	noSepSeal, err := queuefile.SealHeader(&ps, eol, mustRecipient(t, testRecipient))
	if err != nil {
		t.Fatal(err)
	}
	_, offs := sealCiphertext(t, file)
	badChar := bytes.Clone(file)
	badChar[offs[10]] = '*'
	bodyStart := bytes.Index(rest, []byte("\r\n\r\n")) + 4 // after the empty line
	digest := sha256Hex(rest)
	validJSON := func(v string) string {
		return `{"v":` + v + `,"host":"h.example.com","from":"","to":["a@example.com"],"sha256":"` + digest + `","size":` + strconv.Itoa(len(rest)) + `}`
	}

	tests := []struct {
		name string
		file []byte
		id   string // identity; default testIdentity
		want error
	}{
		{"no seal", rest, "", queuefile.ErrNoSeal},
		{"seal in the body only", cat(rest[:bodyStart], seal, rest[bodyStart:]), "", queuefile.ErrNoSeal},
		{"two seals on top", cat(seal, seal2, rest), "", queuefile.ErrDuplicateSeal},
		{"same seal twice", cat(seal, seal, rest), "", queuefile.ErrDuplicateSeal},
		{"second seal lower down, lower case", cat(seal, replaceOnce(rest, "Subject:", strings.ToLower(string(seal2))+"Subject:")), "", queuefile.ErrDuplicateSeal},
		{"seal moved onto a larger message", cat(seal, largeRest), "", queuefile.ErrDigest},
		{"seal moved onto a message of the same size", cat(seal, replaceOnce(rest, "Lunch", "Lurch")), "", queuefile.ErrDigest},
		{"body byte changed", cat(seal, replaceOnce(rest, "soup", "soop")), "", queuefile.ErrDigest},
		{"header byte changed", cat(seal, replaceOnce(rest, "Bob Example", "Bob Exbmple")), "", queuefile.ErrDigest},
		{"line ending changed", cat(seal, replaceOnce(rest, "Hi Bob,\r\n", "Hi Bob,\n\r")), "", queuefile.ErrDigest},
		{"byte appended", cat(seal, rest, []byte("x")), "", queuefile.ErrDigest},
		{"truncated in the body", file[:len(file)-10], "", queuefile.ErrTruncated},
		{"truncated to the header", cat(seal, rest[:bodyStart-2]), "", queuefile.ErrTruncated},
		{"truncated to the seal", seal, "", queuefile.ErrTruncated},
		{"large seal on the small message", cat(largeSeal, rest), "", queuefile.ErrTruncated},
		{"flipped in the age payload", flipSealByte(t, file, len(ct)-20), "", queuefile.ErrTampered},
		{"flipped in the age header MAC", flipSealByte(t, file, mac+3), "", queuefile.ErrTampered},
		{"flipped in the age intro line", flipSealByte(t, file, 2), "", queuefile.ErrTampered},
		{"seal truncated by a whole base64 line", cat(bytes.Join(sealLines[:len(sealLines)-1], nil), rest), "", queuefile.ErrTampered},
		{"base64 character replaced by a non-base64 one", badChar, "", queuefile.ErrMalformedSeal},
		{"seal cut mid-quantum", cat(seal[:len(seal)-5], []byte(eol), rest), "", queuefile.ErrMalformedSeal},
		{"garbage base64", cat([]byte("X-SmtpQ-Sealed: v1\r\n !!not*base64!!\r\n"), rest), "", queuefile.ErrMalformedSeal},
		{"version only", cat([]byte("X-SmtpQ-Sealed: v1\r\n"), rest), "", queuefile.ErrMalformedSeal},
		{"empty seal", cat([]byte("X-SmtpQ-Sealed:\r\n"), rest), "", queuefile.ErrMalformedSeal},
		{"valid base64, not age", cat([]byte("X-SmtpQ-Sealed: v1 aGVsbG8gd29ybGQ=\r\n"), rest), "", queuefile.ErrTampered},
		{"unknown version v2", replaceOnce(file, queuefile.SealedField+": v1", queuefile.SealedField+": v2"), "", queuefile.ErrVersion},
		{"version V1 in upper case", replaceOnce(file, queuefile.SealedField+": v1", queuefile.SealedField+": V1"), "", queuefile.ErrVersion},
		{"version 2 inside the seal", cat(sealJSON(t, validJSON("2"), eol), rest), "", queuefile.ErrVersion},
		{"version 0 inside the seal", cat(sealJSON(t, validJSON("0"), eol), rest), "", queuefile.ErrVersion},
		{"sealed JSON is garbage", cat(sealJSON(t, "not json", eol), rest), "", queuefile.ErrMalformedSeal},
		{"sealed JSON has an unknown field", cat(sealJSON(t, strings.Replace(validJSON("1"), "{", `{"bogus":1,`, 1), eol), rest), "", queuefile.ErrMalformedSeal},
		{"sealed JSON has the wrong type", cat(sealJSON(t, strings.Replace(validJSON("1"), `"size":`, `"size":"`, 1)+`"`, eol), rest), "", queuefile.ErrMalformedSeal},
		{"wrong key", file, otherIdentity, queuefile.ErrWrongKey},
		{"no separator", cat(noSepSeal, noSep), "", queuefile.ErrNoSeparator},
		{"oversized seal", cat([]byte("X-SmtpQ-Sealed: v1\r\n"), bytes.Repeat([]byte(" "+strings.Repeat("A", 76)+"\r\n"), queuefile.MaxFieldSize/79+1), rest), "", queuefile.ErrFieldTooLong},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id := testIdentity
			if tc.id != "" {
				id = tc.id
			}
			p, err := queuefile.Open(bytes.NewReader(tc.file), mustIdentity(t, id))
			if p != nil {
				t.Errorf("Open returned parameters %+v with error %v", p, err)
			}
			errorIsOnly(t, err, tc.want)
			if strings.Contains(err.Error(), testPassword) {
				t.Errorf("error reveals the password: %v", err)
			}
		})
	}

	// The unmodified file opens, so the failures above are the changes'.
	if _, err := queuefile.Open(bytes.NewReader(file), mustIdentity(t, testIdentity)); err != nil {
		t.Fatalf("unmodified file: %v", err)
	}
	// A valid hand-made seal opens too, so the JSON cases fail for their
	// change only.
	got, err := queuefile.Open(bytes.NewReader(cat(sealJSON(t, validJSON("1"), eol), rest)), mustIdentity(t, testIdentity))
	if err != nil {
		t.Fatalf("hand-made seal: %v", err)
	}
	if got.Host != "h.example.com" || len(got.To) != 1 || got.To[0] != "a@example.com" {
		t.Errorf("hand-made seal opened to %+v", got)
	}
}

// TestOpenSealedAnywhere: the sealed field need not be the first one, and its
// continuation lines may be folded with tabs, as long as it is in the header.
func TestOpenSealedAnywhere(t *testing.T) {
	msg := corpusMessage(t, "plain-lf.eml")
	seal, rest := splitSeal(t, sealFile(t, msg, testParams("dave@example.com")))
	id := mustIdentity(t, testIdentity)
	i := bytes.Index(rest, []byte("Subject:"))
	b64, _ := sealCiphertext(t, seal)
	for _, tc := range []struct {
		name string
		file []byte
	}{
		{"top", bytes.Join([][]byte{seal, rest}, nil)},
		{"middle", bytes.Join([][]byte{rest[:i], seal, rest[i:]}, nil)},
		{"last field", bytes.Join([][]byte{rest[:bytes.Index(rest, []byte("\n\n"))+1], seal, rest[bytes.Index(rest, []byte("\n\n"))+1:]}, nil)},
		{"tab folded", bytes.Join([][]byte{bytes.ReplaceAll(seal, []byte("\n "), []byte("\n\t")), rest}, nil)},
		{"refolded wider", bytes.Join([][]byte{lines(seal)[0], bytes.Replace(bytes.Join(lines(seal)[1:], nil), []byte("\n "), nil, 1), rest}, nil)},
		{"one line", []byte(queuefile.SealedField + ": v1 " + b64 + "\n" + string(rest))},
		{"CRLF seal on an LF message", bytes.Join([][]byte{bytes.ReplaceAll(seal, []byte("\n"), []byte("\r\n")), rest}, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := queuefile.Open(bytes.NewReader(tc.file), id)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			if p.Digest != sha256Hex(msg) {
				t.Errorf("digest %s, want %s", p.Digest, sha256Hex(msg))
			}
			if got := stripSealed(t, tc.file); !bytes.Equal(got, msg) {
				t.Errorf("StripSealed:\n got %q\nwant %q", got, msg)
			}
		})
	}
}

func TestOpenAllParams(t *testing.T) {
	msg := corpusMessage(t, "plain-crlf.eml")
	notBefore := time.Date(2026, 12, 1, 8, 0, 0, 0, time.UTC)
	for _, p := range []queuefile.Params{
		{Relay: "office365", From: "app@example.com", To: []string{"bob@example.org"}},
		{Host: "192.0.2.1", Port: 465, TLS: queuefile.TLSImplicit, HELO: "app.example.com",
			Username: "svc", OAuth2Token: queuefile.NewSecret("ya29.token"), From: "app@example.com",
			To:        []string{"bob@example.org", "carol@example.net"},
			NotBefore: notBefore, Expires: notBefore.Add(48 * time.Hour)},
		{Host: "[2001:db8::1]", TLS: queuefile.TLSNone, To: []string{"bob@example.org"}, From: "a@example.com"},
	} {
		file := sealFile(t, msg, p)
		got, err := queuefile.Open(bytes.NewReader(file), mustIdentity(t, testIdentity))
		if err != nil {
			t.Fatalf("%+v: %v", p, err)
		}
		p.Digest, p.Size = sha256Hex(msg), int64(len(msg))
		if got.Relay != p.Relay || got.Host != p.Host || got.Port != p.Port || got.TLS != p.TLS ||
			got.Username != p.Username || got.Password.Reveal() != p.Password.Reveal() ||
			got.OAuth2Token.Reveal() != p.OAuth2Token.Reveal() || got.HELO != p.HELO ||
			got.From != p.From || strings.Join(got.To, ",") != strings.Join(p.To, ",") ||
			!got.NotBefore.Equal(p.NotBefore) || !got.Expires.Equal(p.Expires) ||
			got.Digest != p.Digest || got.Size != p.Size {
			t.Errorf("Open returned %+v, want %+v", got, p)
		}
		if !p.OAuth2Token.IsZero() && bytes.Contains(file, []byte(p.OAuth2Token.Reveal())) {
			t.Errorf("OAuth2 token in clear text in the queued file")
		}
	}
}

// TestKeyRotation: a file sealed to the old key still opens once the service
// has a new key, as long as the old identity file is listed after the new one.
func TestKeyRotation(t *testing.T) {
	dir := t.TempDir()
	oldID, oldRcpt := filepath.Join(dir, "old.key"), filepath.Join(dir, "old.pub")
	newID, newRcpt := filepath.Join(dir, "new.key"), filepath.Join(dir, "new.pub")
	for _, pair := range [][2]string{{oldID, oldRcpt}, {newID, newRcpt}} {
		if _, err := queuefile.GenerateKeys(pair[0], pair[1]); err != nil {
			t.Fatal(err)
		}
	}
	seal := func(rcptFile string) []byte {
		rs, err := queuefile.LoadRecipients(rcptFile)
		if err != nil {
			t.Fatal(err)
		}
		q := &queuefile.Queue{Dir: t.TempDir(), Recipients: rs}
		_, b := enqueue(t, q, corpusMessage(t, "plain-lf.eml"), testParams("dave@example.com"))
		return b
	}
	sealedOld, sealedNew := seal(oldRcpt), seal(newRcpt)

	rotated, err := queuefile.LoadIdentities(newID, oldID)
	if err != nil {
		t.Fatal(err)
	}
	onlyNew, err := queuefile.LoadIdentities(newID)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		file []byte
		ids  []age.Identity
		want error
	}{
		{"old file, new and old keys", sealedOld, rotated, nil},
		{"new file, new and old keys", sealedNew, rotated, nil},
		{"new file, new key", sealedNew, onlyNew, nil},
		{"old file, new key only", sealedOld, onlyNew, queuefile.ErrWrongKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := queuefile.Open(bytes.NewReader(tc.file), tc.ids...)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: %v, want %v", err, tc.want)
			}
		})
	}
}

// TestOpenNormalisesTLSMode: a seal made by another or older producer may
// carry a TLS mode in any case: Open turns it into the constant (never
// something the Sender would take for plain text), and refuses a mode it
// does not know.
func TestOpenNormalisesTLSMode(t *testing.T) {
	msg := corpusMessage(t, "plain-crlf.eml")
	sealed := func(tls string) []byte {
		plain := `{"v":1,"host":"h.example.com","tls":"` + tls + `","from":"","to":["a@example.com"],"sha256":"` +
			sha256Hex(msg) + `","size":` + strconv.Itoa(len(msg)) + `}`
		return append(sealJSON(t, plain, "\r\n"), msg...)
	}
	id := mustIdentity(t, testIdentity)
	for in, want := range map[string]queuefile.TLSMode{
		"STARTTLS": queuefile.TLSStartTLS, "Implicit": queuefile.TLSImplicit, " none ": queuefile.TLSNone, "starttls": queuefile.TLSStartTLS,
	} {
		p, err := queuefile.Open(bytes.NewReader(sealed(in)), id)
		if err != nil {
			t.Errorf("sealed TLS mode %q: %v", in, err)
			continue
		}
		if p.TLS != want {
			t.Errorf("sealed TLS mode %q opened as %q, want %q", in, p.TLS, want)
		}
	}
	for _, bad := range []string{"plain", "ssl", "STARTTLS-optional"} {
		p, err := queuefile.Open(bytes.NewReader(sealed(bad)), id)
		if err == nil {
			t.Errorf("sealed TLS mode %q opened as %q, want an error", bad, p.TLS)
			continue
		}
		if !strings.Contains(err.Error(), strconv.Quote(bad)) || !strings.Contains(err.Error(), "tls") {
			t.Errorf("sealed TLS mode %q: error %q does not name the field and the value", bad, err)
		}
	}
}
