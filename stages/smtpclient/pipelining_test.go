package smtpclient

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// scriptServer is a hand-written SMTP server for one connection: it offers
// PIPELINING and answers the commands of a transaction only once it has
// read all of them up to DATA, as a strict test of pipelining (a client
// that waits for the MAIL reply first would never get it). replies maps a
// command (MAIL, RCPT <addr>, DATA) to the reply to send instead of the
// usual one. It returns what it read, on got, when the client quits.
func scriptServer(t *testing.T, replies map[string]string) (addr string, got <-chan []string) {
	t.Helper()
	return oneConnServer(t, func(c net.Conn) []string {
		r := bufio.NewReader(c)
		var lines []string
		say := func(s string) { c.Write([]byte(s + "\r\n")) }
		say("220 script ESMTP")
		var group []string
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return lines
			}
			l = strings.TrimRight(l, "\r\n")
			lines = append(lines, l)
			verb := strings.ToUpper(strings.Fields(l + " x")[0])
			switch verb {
			case "EHLO":
				say("250-script\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n250 8BITMIME")
				continue
			case "QUIT":
				say("221 bye")
				return lines
			case "RSET", "NOOP":
				say("250 ok")
				continue
			case "MAIL", "RCPT":
				group = append(group, l)
				continue
			case "DATA":
				group = append(group, l)
			default:
				say("500 what")
				continue
			}
			// DATA: answer the whole group now.
			dataOK := false
			for _, cmd := range group {
				key := strings.Fields(cmd)[0]
				if key == "RCPT" {
					key = "RCPT " + strings.Trim(strings.TrimPrefix(strings.Fields(cmd)[1], "TO:"), "<>")
				}
				reply, ok := replies[key]
				if !ok {
					reply = "250 2.0.0 ok"
					if key == "DATA" {
						reply = "354 go on"
					}
				}
				say(reply)
				if key == "DATA" {
					dataOK = strings.HasPrefix(reply, "354")
				}
			}
			group = nil
			if !dataOK {
				continue
			}
			n := 0
			for {
				l, err := r.ReadString('\n')
				if err != nil {
					return lines
				}
				if l == ".\r\n" {
					break
				}
				n += len(l)
			}
			lines = append(lines, "[data "+strconv.Itoa(n)+" bytes]")
			if reply, ok := replies["."]; ok {
				say(reply)
			} else {
				say("250 2.0.0 queued")
			}
		}
	})
}

// oneConnServer listens on 127.0.0.1, serves one connection with serve
// (within 10 seconds) and sends what serve returns (what it read) on got.
func oneConnServer(t *testing.T, serve func(c net.Conn) []string) (addr string, got <-chan []string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan []string, 1)
	go func() {
		defer ln.Close()
		c, err := ln.Accept()
		if err != nil {
			ch <- nil
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		ch <- serve(c)
	}()
	return ln.Addr().String(), ch
}

// testConfig is a session's configuration for the server at addr, in
// plain text.
func testConfig(addr string) Config {
	host, _, _ := net.SplitHostPort(addr)
	return Config{Addr: addr, Host: host, TLS: queuefile.TLSNone, HELO: "client.example",
		Timeouts: Timeouts{Command: 5 * time.Second, Data: 5 * time.Second}}
}

// testMessage is a small message held in memory, and its envelope.
func testMessage(to ...string) (Envelope, Message) {
	body := []byte("Subject: hi\r\n\r\nhello\r\n")
	return Envelope{From: "from@example.com", To: to, Size: int64(len(body))}, memMessage(body)
}

// memMessage is the message b, held in memory.
func memMessage(b []byte) Message {
	return Message{Bytes: b, Write: func(w io.Writer) (int64, error) {
		n, err := w.Write(b)
		return int64(n), err
	}}
}

func pipeSession(t *testing.T, cfg Config) *Session {
	t.Helper()
	sess, e := Dial(context.Background(), cfg)
	if e != nil {
		t.Fatal(e)
	}
	if !sess.Pipelined() {
		t.Fatal("a server offering PIPELINING got an unpipelined session")
	}
	return sess
}

// wantAccepted checks that the reply to a command was an acceptance.
func wantAccepted(t *testing.T, what string, e *Error) {
	t.Helper()
	if e != nil {
		t.Fatalf("%s: %v, want accepted", what, e)
	}
}

// MAIL, every RCPT and DATA go out before any reply: the script server
// answers nothing until DATA, so a client that waits would fail.
func TestPipelinedTransaction(t *testing.T) {
	addr, got := scriptServer(t, map[string]string{
		"RCPT bad@example.org": "550 5.1.1 no such user",
	})
	mails := 0
	cfg := testConfig(addr)
	cfg.AfterMail = func() { mails++ }
	sess := pipeSession(t, cfg)
	tx := sess.Send(testMessage("a@example.org", "bad@example.org", "b@example.org"))
	if tx.Broken || !tx.DataAccepted || tx.NoReply || mails != 1 {
		t.Fatalf("transaction %+v, AfterMail called %d times; want the data accepted, the session kept, one call", tx, mails)
	}
	wantAccepted(t, "MAIL", tx.Mail)
	wantAccepted(t, "DATA", tx.Data)
	wantAccepted(t, "the data", tx.Dot)
	if len(tx.Rcpt) != 3 || tx.Rcpt[0] != nil || tx.Rcpt[2] != nil {
		t.Fatalf("RCPT replies %v, want a and b accepted, bad refused", tx.Rcpt)
	}
	if r := tx.Rcpt[1]; r == nil || r.Code != 550 || r.Enhanced != "5.1.1" || r.Text != "no such user" || r.Step != "rcpt" || r.Temporary {
		t.Fatalf("the refused recipient: %+v, want 550 5.1.1 no such user at rcpt", r)
	}
	sess.Close(true)
	lines := <-got
	want := []string{
		"EHLO client.example",
		"MAIL FROM:<from@example.com> BODY=8BITMIME SIZE=22",
		"RCPT TO:<a@example.org>", "RCPT TO:<bad@example.org>", "RCPT TO:<b@example.org>",
		"DATA", "[data 22 bytes]", "QUIT",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the server read:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	tr := sess.Transcript()
	if !strings.Contains(tr, "C: RCPT TO:<bad@example.org>") || !strings.Contains(tr, "S: 550 5.1.1 no such user") ||
		!strings.Contains(tr, "C: [message data: 22 bytes]") || strings.Contains(tr, "hello") {
		t.Fatalf("transcript:\n%s", tr)
	}
}

// When every recipient is refused and the server still accepts DATA, the
// transaction is ended with an empty message and nothing is sent; when the
// sender is refused, so is everything after it, and the session is reset
// and kept.
func TestPipelinedRefusals(t *testing.T) {
	for _, tc := range []struct {
		name    string
		replies map[string]string
		refused func(*Transaction) *Error // the refusal that matters
		code    int
		reset   bool // the transaction was left open: RSET
	}{
		{"all recipients refused, DATA accepted", map[string]string{"RCPT a@example.org": "550 5.1.1 no"},
			func(tx *Transaction) *Error { return tx.Rcpt[0] }, 550, false},
		{"all recipients refused, DATA refused", map[string]string{"RCPT a@example.org": "550 5.1.1 no", "DATA": "554 5.5.1 no valid recipients"},
			func(tx *Transaction) *Error { return tx.Rcpt[0] }, 550, true},
		{"sender refused", map[string]string{"MAIL": "553 5.1.8 bad sender", "RCPT a@example.org": "503 5.5.1 need MAIL", "DATA": "503 5.5.1 need RCPT"},
			func(tx *Transaction) *Error { return tx.Mail }, 553, true},
		{"data refused", map[string]string{"DATA": "451 4.3.0 try later"},
			func(tx *Transaction) *Error { return tx.Data }, 451, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, got := scriptServer(t, tc.replies)
			sess := pipeSession(t, testConfig(addr))
			tx := sess.Send(testMessage("a@example.org"))
			if tx.Broken || tx.DataAccepted {
				t.Fatalf("transaction %+v: want the session kept, no data accepted", tx)
			}
			if len(tx.Rcpt) != 1 {
				t.Fatalf("%d RCPT replies, want 1", len(tx.Rcpt))
			}
			if e := tc.refused(tx); e == nil || e.Code != tc.code {
				t.Fatalf("refusal %v, want %d", e, tc.code)
			}
			sess.Close(true)
			reset := false
			for _, l := range <-got {
				if strings.HasPrefix(l, "[data") && l != "[data 0 bytes]" {
					t.Fatalf("message data sent with no recipient accepted: %s", l)
				}
				reset = reset || l == "RSET"
			}
			if reset != tc.reset {
				t.Errorf("RSET sent: %v, want %v", reset, tc.reset)
			}
		})
	}
}

func TestSMTPErrorEnhancedCode(t *testing.T) {
	e := smtpError(550, "5.1.1 no such user\n5.1.1 really")
	if e.EnhancedCode != (smtp.EnhancedCode{5, 1, 1}) || e.Message != "no such user\nreally" {
		t.Fatalf("%+v", e)
	}
	e = smtpError(550, "no enhanced code")
	if e.EnhancedCode != smtp.NoEnhancedCode || e.Message != "no enhanced code" {
		t.Fatalf("%+v", e)
	}
}

// writeDotted writes exactly what net/textproto's DotWriter writes, for
// every message made of dots, CRs, LFs and letters up to 8 bytes, and for
// longer random ones.
func TestWriteDottedMatchesTextproto(t *testing.T) {
	ref := func(msg []byte) string {
		var b strings.Builder
		w := bufio.NewWriter(&b)
		dw := textproto.NewWriter(w).DotWriter()
		dw.Write(msg)
		dw.Close()
		return b.String()
	}
	got := func(msg []byte) string {
		var b strings.Builder
		w := bufio.NewWriter(&b)
		if err := writeDotted(w, msg); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	alphabet := []byte{'.', '\r', '\n', 'a'}
	var walk func(prefix []byte)
	walk = func(prefix []byte) {
		if g, r := got(prefix), ref(prefix); g != r {
			t.Fatalf("%q: wrote %q, DotWriter writes %q", prefix, g, r)
		}
		if len(prefix) == 8 {
			return
		}
		for _, c := range alphabet {
			walk(append(bytes.Clone(prefix), c))
		}
	}
	walk(nil)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		lines := make([]string, rng.IntN(50))
		for i := range lines {
			lines[i] = strings.Repeat(".", rng.IntN(3)) + strings.Repeat("x", rng.IntN(100))
		}
		msg := []byte(strings.Join(lines, "\r\n"))
		if rng.IntN(2) == 0 {
			msg = append(msg, "\r\n"...)
		}
		if g, r := got(msg), ref(msg); g != r {
			t.Fatalf("%q: wrote %q, DotWriter writes %q", msg, g, r)
		}
	}
}

// A server that does not understand EHLO cannot offer STARTTLS: with tls:
// starttls that is the temporary "starttls" failure, and nothing is sent.
func TestStartTLSWithoutEHLO(t *testing.T) {
	addr, got := oneConnServer(t, func(c net.Conn) []string {
		c.Write([]byte("220 old ESMTP\r\n"))
		r := bufio.NewReader(c)
		var lines []string
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return lines
			}
			lines = append(lines, strings.TrimSpace(l))
			c.Write([]byte("502 5.5.1 what\r\n"))
		}
	})
	cfg := testConfig(addr)
	cfg.TLS = queuefile.TLSStartTLS
	_, e := Dial(context.Background(), cfg)
	if e == nil || e.Step != "starttls" || !e.Temporary {
		t.Fatalf("open: %v, want a temporary starttls failure", e)
	}
	if lines := <-got; len(lines) < 1 || lines[0] != "EHLO client.example" {
		t.Fatalf("server read %q, want EHLO client.example first", lines)
	}
}
