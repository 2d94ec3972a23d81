package smtpclient

import (
	"encoding/base64"
	"strings"
	"testing"
	"unicode/utf8"
)

// A server chooses the bytes it sends, and go-smtp writes them to the same
// writer as ours: no line, however odd, may panic the redactor.
func TestTranscriptOddAuthLines(t *testing.T) {
	for _, l := range []string{"AUTH ", "AUTH  ", "AUTH \t", "auth \r", "AUTH \x00"} {
		t.Run(strings.TrimSpace(strings.ToValidUTF8(l, "?")), func(t *testing.T) {
			tr := newTranscript("s3cret-password")
			if _, err := tr.Write([]byte(l + "\r\n334 \r\nc2VjcmV0\r\n235 ok\r\n")); err != nil {
				t.Fatal(err)
			}
			got := tr.String()
			if !strings.Contains(got, "C: AUTH") || !strings.Contains(got, "S: 235 ok") || strings.Contains(got, "c2VjcmV0") {
				t.Fatalf("transcript:\n%s", got)
			}
		})
	}
}

// FuzzTranscript feeds hostile bytes, in hostile pieces, to the transcript:
// it must not panic, must stay within its bound, valid UTF-8 without
// control characters, and must never show the password or its base64.
func FuzzTranscript(f *testing.F) {
	const pw = "fuzz-Secret-9pw"
	plain := base64.StdEncoding.EncodeToString([]byte("\x00user\x00" + pw))
	f.Add([]byte("220 hi\r\nEHLO me\r\n250-x\r\n250 AUTH PLAIN\r\nAUTH PLAIN "+plain+"\r\n235 ok\r\n"), uint8(7))
	f.Add([]byte("AUTH \r\n"), uint8(0))
	f.Add([]byte("AUTH LOGIN\r\n334 VXNlcm5hbWU6\r\ndXNlcg==\r\n334 UGFzc3dvcmQ6\r\n"+base64.StdEncoding.EncodeToString([]byte(pw))+"\r\n235 ok\r\n"), uint8(3))
	f.Add([]byte("\xff\xfe\x00\x1b[31m\r\r\n"+strings.Repeat("x", 5000)), uint8(200))
	f.Fuzz(func(t *testing.T, b []byte, chunk uint8) {
		tr := newTranscript(pw)
		n := int(chunk) + 1
		for len(b) > 0 {
			k := min(n, len(b))
			if w, err := tr.Write(b[:k]); w != k || err != nil {
				t.Fatalf("Write = %d, %v; want %d, nil", w, err, k)
			}
			b = b[k:]
		}
		got := tr.String()
		if len(got) > maxTranscript+64 {
			t.Fatalf("transcript of %d bytes, over its bound %d", len(got), maxTranscript)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("transcript is not valid UTF-8: %q", got)
		}
		for _, r := range got {
			if r != '\n' && r != '\t' && (r < ' ' || r == 0x7f) {
				t.Fatalf("control character %U in the transcript: %q", r, got)
			}
		}
		if strings.Contains(got, pw) || strings.Contains(got, plain) {
			t.Fatalf("the password shows in the transcript:\n%s", got)
		}
	})
}
