package console

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/stages"
)

// The message page reads a file as the service does: fields in file order,
// the seal and its padding shown by size only, words in any charset
// go-message knows decoded, the body after the empty line.
func TestReadContent(t *testing.T) {
	const seal, pad = "X-SmtpQ-Sealed: v1\r\n QUJD\r\n", "X-SmtpQ-Pad: 000\r\n 000\r\n"
	msg := seal + pad + "Subject: =?windows-1252?q?caf=E9?=\r\nFrom: a@example.com\r\nTo: b@example.org\r\n\r\nhello\r\n"
	path := filepath.Join(t.TempDir(), "m.eml")
	if err := os.WriteFile(path, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := readContent(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range c.headers {
		got = append(got, h.Name+"="+h.Value)
	}
	want := fmt.Sprintf("X-Smtpq-Sealed=[sealed parameters, %d bytes]|X-Smtpq-Pad=[sealed parameters, %d bytes]|Subject=café|From=a@example.com|To=b@example.org", len(seal), len(pad))
	if strings.Join(got, "|") != want {
		t.Errorf("headers\n got %s\nwant %s", strings.Join(got, "|"), want)
	}
	if c.subject != "café" || strings.TrimSpace(c.body) != "hello" {
		t.Errorf("subject %q, body %q", c.subject, c.body)
	}
	if s, err := readSubject(path); err != nil || s != "café" {
		t.Errorf("readSubject: %q, %v", s, err)
	}
}

// A field longer than the page shows is cut at a character boundary and
// keeps what comes before the cut, even when it holds a byte that is not
// UTF-8 (a raw Latin-1 header): the cut never empties the value.
func TestClipTextKeepsTheTextBeforeTheCut(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"caf\xe9 " + strings.Repeat("a", 20), 10, "caf\xe9 aaaaa…"},
		{"héhé", 2, "h…"},
		{"héhé", 3, "hé…"},
		{"abc", 10, "abc"},
	} {
		if got := clipText(tc.in, tc.n); got != tc.want {
			t.Errorf("clipText(%q, %d) = %q, want %q", tc.in, tc.n, got, tc.want)
		}
	}
}

// The message page lists the envelope's recipients not in the delivery
// state (compared in any case) as pending, after the known ones.
func TestMergeRcpts(t *testing.T) {
	known := []stages.RcptResult{{Addr: "A@example.org", Status: stages.RcptDelivered}}
	got := mergeRcpts(known, []string{"a@EXAMPLE.org", "b@example.org"})
	var s []string
	for _, r := range got {
		s = append(s, r.Addr+"="+string(r.Status))
	}
	if want := "A@example.org=" + string(stages.RcptDelivered) + "|b@example.org=pending"; strings.Join(s, "|") != want {
		t.Errorf("got %s, want %s", strings.Join(s, "|"), want)
	}
}

// A header section of many small fields (within what is read of it) is
// shown as its first maxHeaderFields and a line counting the rest: the
// page stays small.
func TestReadContentBoundsTheFieldsShown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.eml")
	msg := "Subject: many\r\n" + strings.Repeat("X-A: b\r\n", 5000) + "\r\nbody\r\n"
	if err := os.WriteFile(path, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := readContent(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.headers) != maxHeaderFields+1 {
		t.Fatalf("%d header rows, want %d", len(c.headers), maxHeaderFields+1)
	}
	if last := c.headers[maxHeaderFields]; !strings.Contains(last.Value, fmt.Sprintf("%d more fields", 5001-maxHeaderFields)) {
		t.Errorf("last row %+v", last)
	}
	if c.subject != "many" || strings.TrimSpace(c.body) != "body" {
		t.Errorf("subject %q, body %q", c.subject, c.body)
	}
}
