package queuefile_test

import (
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
	"github.com/smtpq/smtpq/pipeline/queuefile"
)

func TestParseHeaderKeepsRawFields(t *testing.T) {
	in := "From: a@example.com\nto: B <b@example.org>,\n\tC <c@example.org>\r\nSubject:  x \n\n"
	h, err := queuefile.ParseHeader([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	var raw strings.Builder
	for _, f := range removedFields(h) {
		raw.Write(f.Raw)
	}
	if want := strings.TrimSuffix(in, "\n"); raw.String() != want {
		t.Errorf("raw fields\n got %q\nwant %q", raw.String(), want)
	}
	if got := h.Get("To"); got != "B <b@example.org>, C <c@example.org>" {
		t.Errorf("To = %q", got)
	}
	list, err := queuefile.AddressLists(h, "to", "FROM")
	if err != nil || len(list) != 3 || list[0].Address != "a@example.com" || list[1].Name != "B" || list[2].Address != "c@example.org" {
		t.Errorf("AddressLists = %v, %v", list, err)
	}
}

func TestParseHeaderErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"From: a@example.com\nnot a field\n\n", `"not a field"`},
		{"From: a@example.com\n: empty name\n\n", `": empty name"`},
	} {
		_, err := queuefile.ParseHeader([]byte(tc.in))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseHeader(%q) = %v, want an error naming %s", tc.in, err, tc.want)
		}
	}
	list, err := queuefile.AddressLists(mustParseHeader(t, "To: <broken\n\n"), "To")
	if err == nil || !strings.Contains(err.Error(), "To header") {
		t.Errorf("broken To: %v, %v; want an error naming the To header", list, err)
	}
}

func TestAddressListsDecodesNames(t *testing.T) {
	h := mustParseHeader(t, "From: =?windows-1252?q?Ren=E9?= <r@example.com>\r\nTo: =?koi8-r?B?7s/Xz9PUyQ==?= <k@example.org>, =?x-unheard-of?q?Zed?= <z@example.org>\r\n\r\n")
	list, err := queuefile.AddressLists(h, "From")
	if err != nil || len(list) != 1 || list[0].Name != "René" {
		t.Errorf("From = %v, %v; want René", list, err)
	}
	list, err = queuefile.AddressLists(h, "To")
	if err != nil || len(list) != 2 || list[0].Name != "Новости" || list[1].Address != "z@example.org" {
		t.Errorf("To = %v, %v", list, err)
	}
}

func TestFormatField(t *testing.T) {
	long := strings.Repeat("word ", 30)
	for _, eol := range []string{"\r\n", "\n"} {
		b, err := queuefile.FormatField("X-SmtpQ-Sealed", strings.TrimSpace(long), eol)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		if !strings.HasPrefix(s, "X-SmtpQ-Sealed: word") || !strings.HasSuffix(s, eol) {
			t.Errorf("eol %q: field %q", eol, s)
		}
		lines := strings.SplitAfter(strings.TrimSuffix(s, eol), eol)
		if len(lines) < 2 {
			t.Errorf("eol %q: not folded: %q", eol, s)
		}
		for i, l := range lines {
			if n := len(strings.TrimSuffix(l, eol)); n > 76 || eol == "\n" && strings.Contains(l, "\r") {
				t.Errorf("eol %q: line %d is %q", eol, i, l)
			}
		}
		h := mustParseHeader(t, s+eol)
		if got := h.Get("X-Smtpq-Sealed"); got != strings.TrimSpace(long) {
			t.Errorf("read back %q", got)
		}
	}
	if _, err := queuefile.FormatField("From", "a\r\nBcc: x@example.org", "\n"); err == nil {
		t.Error("FormatField took a value with a line break")
	}
}

func mustParseHeader(t *testing.T, s string) textproto.Header {
	t.Helper()
	h, err := queuefile.ParseHeader([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return h
}
