package queuefile_test

import (
	"bytes"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

func TestOpenPickup(t *testing.T) {
	const rest = "From: App <app@example.com>\nX-Sender: late@example.com\nSubject: hi\n\nX-Receiver: body@example.com\n"
	for _, tc := range []struct {
		name     string
		in       string
		wantFrom string
		wantTo   []string
		wantOut  string
	}{
		{
			name:     "LF",
			in:       "X-Sender: <bounce@example.com>\nX-Receiver: <b@example.org>\nX-Receiver: c@example.net\n" + rest,
			wantFrom: "bounce@example.com", wantTo: []string{"b@example.org", "c@example.net"}, wantOut: rest,
		},
		{
			name:     "CRLF, receiver first, odd case",
			in:       "x-receiver: b@example.org\r\nX-SENDER: bounce@example.com\r\nSubject: s\r\nX-Receiver: late@example.org\r\n\r\nbody",
			wantFrom: "bounce@example.com", wantTo: []string{"b@example.org"}, wantOut: "Subject: s\r\nX-Receiver: late@example.org\r\n\r\nbody",
		},
		{
			name:   "no X-Sender: null sender",
			in:     "X-Receiver: b@example.org\n\nbody\n",
			wantTo: []string{"b@example.org"}, wantOut: "\nbody\n",
		},
		{
			name:     "folded receiver",
			in:       "X-Sender: a@example.com\nX-Receiver:\n <b@example.org>\nTo: b@example.org\n\n",
			wantFrom: "a@example.com", wantTo: []string{"b@example.org"}, wantOut: "To: b@example.org\n\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := queuefile.OpenPickup(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if p.From != tc.wantFrom || !slices.Equal(p.To, tc.wantTo) || p.Size != int64(len(tc.wantOut)) {
				t.Errorf("OpenPickup = %+v, want from %q to %q size %d", p, tc.wantFrom, tc.wantTo, len(tc.wantOut))
			}
			var out bytes.Buffer
			if err := queuefile.StripPickup(&out, strings.NewReader(tc.in)); err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.wantOut {
				t.Errorf("StripPickup\n got %q\nwant %q", out.String(), tc.wantOut)
			}
		})
	}
}

func TestOpenPickupErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		is      error
		mention string
	}{
		{"plain message", "From: a@example.com\nTo: b@example.org\n\nbody\n", queuefile.ErrNotPickup, ""},
		{"pickup fields not at the top", "From: a@example.com\nX-Sender: a@example.com\nX-Receiver: b@example.org\n\n", queuefile.ErrNotPickup, ""},
		{"pickup fields in the body only", "Subject: x\n\nX-Sender: a@example.com\nX-Receiver: b@example.org\n", queuefile.ErrNotPickup, ""},
		{"empty file", "", queuefile.ErrNotPickup, ""},
		{"corpus message", string(corpusMessage(t, "plain-crlf.eml")), queuefile.ErrNotPickup, ""},
		{"no X-Receiver", "X-Sender: a@example.com\nSubject: x\n\n", queuefile.ErrNoRecipients, "X-Receiver"},
		{"no separator", "X-Sender: a@example.com\nX-Receiver: b@example.org\nSubject: x\n", queuefile.ErrNoSeparator, ""},
		{"two X-Sender", "X-Sender: a@example.com\nX-Sender: c@example.com\nX-Receiver: b@example.org\n\n", nil, "more than one X-Sender"},
		{"bad receiver", "X-Sender: a@example.com\nX-Receiver: not an address\n\n", nil, "X-Receiver"},
		{"empty receiver", "X-Receiver:\n\n", nil, "X-Receiver"},
		{"bad sender", "X-Sender: a.example.com\nX-Receiver: b@example.org\n\n", nil, "X-Sender"},
		{"field too long", "X-Receiver: b@example.org" + strings.Repeat(" ", queuefile.MaxFieldSize) + "\n\n", queuefile.ErrFieldTooLong, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := queuefile.OpenPickup(strings.NewReader(tc.in))
			if err == nil {
				t.Fatalf("OpenPickup = %+v, want an error", p)
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("error %v, want %v", err, tc.is)
			}
			if tc.is != queuefile.ErrNotPickup && errors.Is(err, queuefile.ErrNotPickup) {
				t.Errorf("error %v is ErrNotPickup", err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

// TestStripPickupKeepsEverythingElse: without leading pickup fields,
// StripPickup is the identity, for every corpus message.
func TestStripPickupKeepsEverythingElse(t *testing.T) {
	for _, c := range corpus(t) {
		var out bytes.Buffer
		if err := queuefile.StripPickup(&out, bytes.NewReader(c.data)); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if !bytes.Equal(out.Bytes(), c.data) {
			t.Errorf("%s changed", c.name)
		}
		// With an envelope on top, exactly the envelope goes.
		in := append([]byte("X-Sender: s@example.com"+firstLineEnding(c.data)+"X-Receiver: r@example.org"+firstLineEnding(c.data)), c.data...)
		out.Reset()
		if err := queuefile.StripPickup(&out, bytes.NewReader(in)); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), c.data) {
			t.Errorf("%s with envelope: output differs from the message", c.name)
		}
		p, err := queuefile.OpenPickup(bytes.NewReader(in))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if p.From != "s@example.com" || !slices.Equal(p.To, []string{"r@example.org"}) || p.Size != int64(len(c.data)) {
			t.Errorf("%s: OpenPickup = %+v", c.name, p)
		}
	}
}

func TestIsPickupField(t *testing.T) {
	for name, want := range map[string]bool{
		"X-Sender": true, "x-sender": true, "X-RECEIVER": true, "X-Receiver": true,
		"X-Sender-Id": false, "Sender": false, "X-Receivers": false, "": false,
	} {
		if got := queuefile.IsPickupField(name); got != want {
			t.Errorf("IsPickupField(%q) = %v, want %v", name, got, want)
		}
	}
}
