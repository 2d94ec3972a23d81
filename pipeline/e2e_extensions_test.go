package pipeline_test

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

// TestXOAuth2 sends with an OAuth2 token: the server sees XOAUTH2 with the
// user, and a wrong token ends in Undeliverable (535).
func TestXOAuth2(t *testing.T) {
	srv := smtptest.NewServer(t, func(s *smtptest.Server) {
		s.Users = map[string]string{"mailer@example.com": "ya29.token-1"}
	})
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{})
	p := srv.Params("user@example.org")
	p.Username, p.OAuth2Token = "mailer@example.com", queuefile.NewSecret("ya29.token-1")
	good := env.Enqueue(testMessage(1), p)
	p.OAuth2Token = queuefile.NewSecret("ya29.wrong")
	bad := env.Enqueue(testMessage(2), p)
	wantSent(t, env.Wait(good))
	f := env.Wait(bad)
	wantFailed(t, f, stages.ClassPermanent)
	if e := f.Job.Outcome.Err; e == nil || e.Code != 535 {
		t.Errorf("wrong token: error %v, want 535", e)
	}
	msgs := srv.Messages()
	if len(msgs) != 1 || msgs[0].AuthUser != "mailer@example.com" {
		t.Fatalf("server messages %+v, want one from mailer@example.com", msgs)
	}
}

// TestOverSizeFailsBeforeData refuses, without sending its data, a message
// larger than the server's advertised SIZE.
func TestOverSizeFailsBeforeData(t *testing.T) {
	var mails atomic.Int32
	srv := smtptest.NewServer(t, func(s *smtptest.Server) {
		s.MaxMessageBytes = 1000
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Mail {
				mails.Add(1)
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{})
	big := append([]byte("From: app@example.com\r\nTo: user@example.org\r\nSubject: big\r\n\r\n"), bytes.Repeat([]byte("0123456789abcdef\r\n"), 200)...)
	name := env.Enqueue(big, srv.Params("user@example.org"))
	f := env.Wait(name)
	wantFailed(t, f, stages.ClassPermanent)
	if e := f.Job.Outcome.Err; e == nil || e.Code != 552 || !strings.Contains(e.Text, "SIZE") {
		t.Errorf("error %v, want 552 naming SIZE", e)
	}
	if n := mails.Load(); n != 0 {
		t.Errorf("%d MAIL commands sent for a message over SIZE, want none", n)
	}
	if len(srv.Messages()) != 0 {
		t.Error("the server received the message")
	}
}

// TestEightBitAndSMTPUTF8 asks for SMTPUTF8 when an address needs it and
// announces 8-bit data (BODY=8BITMIME) for a message with 8-bit bytes; a
// server without SMTPUTF8 gets nothing for a non-ASCII address.
func TestEightBitAndSMTPUTF8(t *testing.T) {
	utf8srv := smtptest.NewServer(t, func(s *smtptest.Server) { s.EnableSMTPUTF8 = true })
	plain := startServer(t, "127.0.0.2")
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{})
	msg := []byte("From: app@example.com\r\nTo: jörg@example.org\r\nSubject: Grüße\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus München\r\n")
	ok := env.Enqueue(msg, utf8srv.Params("jörg@example.org"))
	refused := env.Enqueue(msg, plain.Params("jörg@example.org"))
	wantSent(t, env.Wait(ok))
	wantFailed(t, env.Wait(refused), stages.ClassPermanent)
	msgs := utf8srv.Messages()
	if len(msgs) != 1 {
		t.Fatalf("%d messages at the SMTPUTF8 server", len(msgs))
	}
	if !msgs[0].MailOptions.UTF8 {
		t.Error("MAIL without SMTPUTF8 for a non-ASCII recipient")
	}
	if msgs[0].MailOptions.Body != "8BITMIME" {
		t.Errorf("MAIL BODY=%q, want 8BITMIME", msgs[0].MailOptions.Body)
	}
	if len(plain.Messages()) != 0 {
		t.Error("a server without SMTPUTF8 got a message for a non-ASCII address")
	}
}
