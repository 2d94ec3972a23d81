package smtpclient

import (
	"bytes"
	"encoding/base64"
	"strings"
	"unicode/utf8"
)

// maxTranscript bounds a recorded transcript; the rest is cut.
const maxTranscript = 32 << 10

// transcript records an SMTP conversation with AUTH exchanges redacted and
// the message data left out. go-smtp writes both directions to one debug
// writer; a line that starts with a three-digit code is the server's.
type transcript struct {
	buf     bytes.Buffer
	partial []byte
	muted   bool
	inAuth  bool
	cut     bool
	skip    string   // a line not to record, once (skipOnce)
	secrets []string // also scrubbed from every line, in case they appear anywhere
}

// skipOnce leaves the next line equal to l out of the transcript.
func (t *transcript) skipOnce(l string) { t.skip = l }

func newTranscript(secrets ...string) *transcript {
	t := &transcript{}
	for _, s := range secrets {
		if s == "" {
			continue
		}
		t.secrets = append(t.secrets, s)
		// The secret's base64 at each of the three alignments, as it
		// would appear inside an AUTH PLAIN or LOGIN payload.
		for pad := 0; pad < 3; pad++ {
			enc := base64.StdEncoding.EncodeToString(append(bytes.Repeat([]byte{0}, pad), s...))
			// Skip the characters influenced by the padding bytes and the
			// last, partial group.
			start := (pad*8 + 5) / 6
			end := len(strings.TrimRight(enc, "=")) - 2
			if end-start >= 4 {
				t.secrets = append(t.secrets, enc[start:end])
			}
		}
	}
	return t
}

func (t *transcript) Write(b []byte) (int, error) {
	if t.muted {
		return len(b), nil
	}
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			t.partial = append(t.partial, b...)
			if len(t.partial) > 4096 {
				t.line(t.partial)
				t.partial = t.partial[:0]
			}
			break
		}
		t.partial = append(t.partial, b[:i]...)
		t.line(t.partial)
		t.partial = t.partial[:0]
		b = b[i+1:]
	}
	return n, nil
}

func isReply(l string) bool {
	return len(l) >= 3 && l[0] >= '2' && l[0] <= '5' && l[1] >= '0' && l[1] <= '9' && l[2] >= '0' && l[2] <= '9' &&
		(len(l) == 3 || l[3] == ' ' || l[3] == '-')
}

func (t *transcript) line(raw []byte) {
	l := strings.TrimRight(string(raw), "\r")
	if t.skip != "" && l == t.skip {
		t.skip = ""
		return
	}
	dir := "C: "
	switch {
	case isReply(l):
		dir = "S: "
		if t.inAuth {
			if strings.HasPrefix(l, "334") {
				l = "334 [redacted]"
			} else {
				t.inAuth = false
			}
		}
	case t.inAuth:
		l = "[redacted]"
	case len(l) >= 5 && strings.EqualFold(l[:5], "AUTH "):
		// The mechanism is kept, anything after it redacted. The line may
		// be the server's (go-smtp writes both directions here) and say
		// anything: "AUTH " alone has no mechanism.
		f := strings.Fields(l)
		l = "AUTH"
		if len(f) > 1 {
			l += " " + f[1]
		}
		if len(f) > 2 {
			l += " [redacted]"
		}
		t.inAuth = true
	}
	t.note(dir + l)
}

// scrub returns l printable and without the secrets.
func (t *transcript) scrub(l string) string {
	l = strings.Map(printable, l)
	for _, s := range t.secrets {
		l = strings.ReplaceAll(l, s, "[redacted]")
	}
	return l
}

// note adds a line of our own.
func (t *transcript) note(l string) {
	l = t.scrub(l)
	if t.cut {
		return
	}
	if t.buf.Len()+len(l) > maxTranscript {
		t.buf.WriteString("[transcript cut]\n")
		t.cut = true
		return
	}
	t.buf.WriteString(l)
	t.buf.WriteByte('\n')
}

func (t *transcript) reset() {
	t.buf.Reset()
	t.cut = false
}

func (t *transcript) String() string { return t.buf.String() }

// Redact returns s printable and without the secrets, or their base64 as
// an AUTH exchange would carry them: as the transcript records a line.
func Redact(s string, secrets ...string) string { return newTranscript(secrets...).scrub(s) }

// printable replaces control characters and invalid UTF-8, which a hostile
// server may send, so that the transcript stays valid text (and XML).
func printable(r rune) rune {
	if r == '\t' || (r >= ' ' && r != 0x7f && r != utf8.RuneError && (r < 0xfffe)) {
		return r
	}
	return '?'
}
