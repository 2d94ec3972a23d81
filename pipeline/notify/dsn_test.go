package notify_test

import (
	"bufio"
	"bytes"
	"io"
	netmail "net/mail"
	"strings"
	"testing"
	"time"

	message "github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"github.com/smtpq/smtpq/pipeline/notify"
)

// parsedDSN is a notice read back with go-message.
type parsedDSN struct {
	header   mail.Header
	human    string
	perMsg   textproto.Header
	perRcpt  []textproto.Header
	original *textproto.Header // nil if the notice has no headers part
}

// parseDSN reads a notice back with go-message and checks its structure:
// multipart/report; report-type=delivery-status, a text/plain part, a
// message/delivery-status part and an optional text/rfc822-headers part.
func parseDSN(t *testing.T, b []byte) *parsedDSN {
	t.Helper()
	e, err := message.Read(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("reading the notice: %v\n%s", err, b)
	}
	mt, params, err := e.Header.ContentType()
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("Content-Type %q %v (%v), want multipart/report; report-type=delivery-status", mt, params, err)
	}
	out := &parsedDSN{header: mail.Header{Header: e.Header}}
	mr := e.MultipartReader()
	var types []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("next part: %v", err)
		}
		ct, _, _ := p.Header.ContentType()
		types = append(types, ct)
		body, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatal(err)
		}
		switch ct {
		case "text/plain":
			out.human = string(body)
		case "message/delivery-status":
			out.perMsg, out.perRcpt = readStatusBlocks(t, body)
		case "text/rfc822-headers":
			h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(append(body, "\r\n"...))))
			if err != nil {
				t.Fatalf("original headers: %v", err)
			}
			out.original = &h
		}
	}
	if len(types) < 2 || types[0] != "text/plain" || types[1] != "message/delivery-status" ||
		len(types) > 2 && (len(types) != 3 || types[2] != "text/rfc822-headers") {
		t.Fatalf("parts %v, want text/plain, message/delivery-status[, text/rfc822-headers]", types)
	}
	return out
}

// readStatusBlocks reads the per-message block and the per-recipient
// blocks of a message/delivery-status body.
func readStatusBlocks(t *testing.T, body []byte) (textproto.Header, []textproto.Header) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(body))
	perMsg, err := textproto.ReadHeader(br)
	if err != nil {
		t.Fatalf("per-message fields: %v", err)
	}
	var rcpts []textproto.Header
	for {
		if _, err := br.Peek(1); err == io.EOF {
			break
		}
		h, err := textproto.ReadHeader(br)
		if err != nil {
			t.Fatalf("per-recipient fields: %v\n%s", err, body)
		}
		rcpts = append(rcpts, h)
	}
	return perMsg, rcpts
}

// parseDSNWith is parseDSN for a notice that must have n recipient
// blocks.
func parseDSNWith(t *testing.T, b []byte, n int) *parsedDSN {
	t.Helper()
	d := parseDSN(t, b)
	if len(d.perRcpt) != n {
		t.Fatalf("%d recipient blocks, want %d", len(d.perRcpt), n)
	}
	return d
}

// wantFields checks fields of h: name, value, name, value...
func wantFields(t *testing.T, h textproto.Header, kv ...string) {
	t.Helper()
	for i := 0; i+1 < len(kv); i += 2 {
		if got := h.Get(kv[i]); got != kv[i+1] {
			t.Errorf("%s: %q, want %q", kv[i], got, kv[i+1])
		}
	}
}

func TestBuildDSNParsesBack(t *testing.T) {
	arrival := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	r := &notify.Report{
		ReportingMTA: "mx.example.net", To: "app@example.com", Arrival: arrival, Now: arrival.Add(time.Hour),
		Name: "x.eml",
		Recipients: []notify.Recipient{
			{Addr: "gone@example.org", Action: notify.ActionFailed, Status: "5.1.1", RemoteMTA: "smtp.example.org",
				Diagnostic: "550 5.1.1 no such\r\nuser", FromServer: true},
			{Addr: "late@example.org", Action: notify.ActionFailed, Status: "4.4.7", Diagnostic: "connect: connection refused"},
		},
		Headers: []byte("From: app@example.com\nTo: gone@example.org\nSubject: the report\nMessage-ID: <m1@example.com>\n"),
	}
	b, err := notify.BuildDSN(r)
	if err != nil {
		t.Fatal(err)
	}
	d := parseDSNWith(t, b, 2)
	if from, err := d.header.AddressList("From"); err != nil || len(from) != 1 || from[0].Address != "MAILER-DAEMON@mx.example.net" {
		t.Errorf("From %v (%v)", from, err)
	}
	if to, err := d.header.AddressList("To"); err != nil || len(to) != 1 || to[0].Address != "app@example.com" {
		t.Errorf("To %v (%v)", to, err)
	}
	if s, _ := d.header.Subject(); !strings.Contains(s, "Undelivered") {
		t.Errorf("Subject %q", s)
	}
	if d.header.Get("Auto-Submitted") != "auto-replied" {
		t.Errorf("Auto-Submitted %q", d.header.Get("Auto-Submitted"))
	}
	if id, err := d.header.MessageID(); err != nil || !strings.HasSuffix(id, "@mx.example.net") {
		t.Errorf("Message-ID %q (%v)", id, err)
	}
	wantFields(t, d.perMsg, "Reporting-MTA", "dns; mx.example.net")
	if got, err := netmail.ParseDate(d.perMsg.Get("Arrival-Date")); err != nil || !got.Equal(arrival) {
		t.Errorf("Arrival-Date %q: %v (%v)", d.perMsg.Get("Arrival-Date"), got, err)
	}
	g, l := d.perRcpt[0], d.perRcpt[1]
	wantFields(t, g,
		"Final-Recipient", "rfc822; gone@example.org",
		"Action", "failed",
		"Status", "5.1.1",
		"Remote-MTA", "dns; smtp.example.org",
		"Diagnostic-Code", "smtp; 550 5.1.1 no such  user",
	)
	wantFields(t, l,
		"Final-Recipient", "rfc822; late@example.org",
		"Status", "4.4.7",
		"Diagnostic-Code", "X-SmtpQ; connect: connection refused",
	)
	if l.Has("Remote-MTA") {
		t.Errorf("Remote-MTA %q for a recipient no server was named for", l.Get("Remote-MTA"))
	}
	if d.original == nil {
		t.Fatal("no text/rfc822-headers part")
	}
	if got := d.original.Get("Subject"); got != "the report" {
		t.Errorf("original Subject %q", got)
	}
	if got := d.original.Get("Message-Id"); got != "<m1@example.com>" {
		t.Errorf("original Message-ID %q", got)
	}
	if !strings.Contains(d.human, "<gone@example.org>: 550 5.1.1 no such  user") {
		t.Errorf("human part does not name the recipient and the reply:\n%s", d.human)
	}
}

func TestBuildDSNDelayed(t *testing.T) {
	r := &notify.Report{
		ReportingMTA: "mx.example.net", To: "app@example.com", Now: time.Now(),
		Recipients: []notify.Recipient{{Addr: "slow@example.org", Action: notify.ActionDelayed, Status: "4.2.0",
			Diagnostic: "451 4.2.0 try later", FromServer: true}},
	}
	b, err := notify.BuildDSN(r)
	if err != nil {
		t.Fatal(err)
	}
	d := parseDSN(t, b)
	if s, _ := d.header.Subject(); !strings.Contains(s, "Delayed") {
		t.Errorf("Subject %q", s)
	}
	wantFields(t, d.perRcpt[0], "Action", "delayed")
	if d.original != nil {
		t.Error("a headers part without headers")
	}
	if d.perMsg.Has("Arrival-Date") {
		t.Error("Arrival-Date without an arrival time")
	}
	if _, err := notify.BuildDSN(&notify.Report{ReportingMTA: "x", To: "a@b"}); err == nil {
		t.Error("a notice with no recipient was built")
	}
}
