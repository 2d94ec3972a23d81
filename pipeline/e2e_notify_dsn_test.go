package pipeline_test

import (
	"bufio"
	"bytes"
	"io"
	"path/filepath"
	"testing"
	"time"

	message "github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
	"github.com/emersion/go-smtp"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/notify"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

// refuseRcpt refuses the recipients named, with 550 5.1.1, at every
// attempt.
func refuseRcpt(addrs ...string) func(*smtptest.Server) {
	return func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			for _, a := range addrs {
				if p.Step == smtptest.Rcpt && p.Arg == a {
					return smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user here")
				}
			}
			return smtptest.Fault{}
		}
	}
}

func withDSN(c *pipeline.Config) { c.Notify.DSN.Failure = true }

// notices returns the filings of messages with the null sender.
func notices(fs []stages.Filed, v stages.Verdict) []stages.Filed {
	var out []stages.Filed
	for _, f := range fs {
		if f.Job.Sender == "" && f.Job.Params != nil && f.Verdict == v && f.Err == nil {
			out = append(out, f)
		}
	}
	return out
}

// nullSenderMessages returns the messages srv accepted with the null
// sender: the notices.
func nullSenderMessages(srv *smtptest.Server) []smtptest.Message {
	var out []smtptest.Message
	for _, m := range srv.Messages() {
		if m.From == "" {
			out = append(out, m)
		}
	}
	return out
}

// statusBlocks reads the message/delivery-status part of a notice back
// with go-message: the per-message block and the per-recipient ones.
func statusBlocks(t *testing.T, notice []byte) (perMsg textproto.Header, rcpts []textproto.Header, original []byte) {
	t.Helper()
	e, err := message.Read(bytes.NewReader(notice))
	if err != nil {
		t.Fatalf("reading the notice: %v", err)
	}
	if mt, params, _ := e.Header.ContentType(); mt != "multipart/report" || params["report-type"] != "delivery-status" {
		t.Fatalf("notice is %s %v", mt, params)
	}
	mr := e.MultipartReader()
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return perMsg, rcpts, original
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(p.Body)
		switch ct, _, _ := p.Header.ContentType(); ct {
		case "message/delivery-status":
			br := bufio.NewReader(bytes.NewReader(body))
			if perMsg, err = textproto.ReadHeader(br); err != nil {
				t.Fatal(err)
			}
			for {
				if _, err := br.Peek(1); err != nil {
					break
				}
				h, err := textproto.ReadHeader(br)
				if err != nil {
					t.Fatal(err)
				}
				rcpts = append(rcpts, h)
			}
		case "text/rfc822-headers":
			original = body
		}
	}
}

func TestNotifyFailureNoticeReachesTheSender(t *testing.T) {
	srv := startServer(t, "127.0.0.1", refuseRcpt("gone@example.org"))
	env := pipelinetest.Start(t, pipelinetest.Config(withDSN))
	msg := []byte("From: app@example.com\r\nTo: gone@example.org\r\nSubject: your invoice\r\nMessage-ID: <inv@example.com>\r\n\r\nHello.\r\n")
	p := srv.Params("gone@example.org")
	p.From = "app@example.com"
	name := env.Enqueue(msg, p)
	wantFailed(t, env.Wait(name), stages.ClassPermanent)
	env.WaitFor("the notice to be sent", func(fs []stages.Filed) bool { return len(notices(fs, stages.Sent)) == 1 })

	got := nullSenderMessages(srv)
	if len(got) != 1 {
		t.Fatalf("the server got %d notices, want 1", len(got))
	}
	if len(got[0].To) != 1 || got[0].To[0] != "app@example.com" {
		t.Errorf("notice sent to %v, want the sender", got[0].To)
	}
	if bytes.Contains(bytes.ToLower(got[0].Data), []byte("x-smtpq-sealed")) {
		t.Error("the notice carries the sealed field")
	}
	perMsg, rcpts, original := statusBlocks(t, got[0].Data)
	if perMsg.Get("Reporting-Mta") != "dns; pipelinetest.local" || perMsg.Get("Arrival-Date") == "" {
		t.Errorf("per-message fields %v", perMsg.Map())
	}
	if len(rcpts) != 1 {
		t.Fatalf("%d recipient blocks, want 1", len(rcpts))
	}
	for k, want := range map[string]string{
		"Final-Recipient": "rfc822; gone@example.org", "Action": "failed", "Status": "5.1.1",
		"Remote-Mta": "dns; 127.0.0.1", "Diagnostic-Code": "smtp; 550 5.1.1 no such user here",
	} {
		if got := rcpts[0].Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if !bytes.Contains(original, []byte("Message-ID: <inv@example.com>")) || bytes.Contains(original, []byte("Hello.")) {
		t.Errorf("original headers part:\n%s", original)
	}
}

func TestNotifyNoNoticeForANotice(t *testing.T) {
	// The sender's own address is refused too: its notice fails, and that
	// failure must not make another notice.
	srv := startServer(t, "127.0.0.1", refuseRcpt("gone@example.org", "app@example.com"))
	env := pipelinetest.Start(t, pipelinetest.Config(withDSN))
	p := srv.Params("gone@example.org")
	p.From = "app@example.com"
	name := env.Enqueue([]byte("From: app@example.com\r\nSubject: x\r\n\r\nx\r\n"), p)
	wantFailed(t, env.Wait(name), stages.ClassPermanent)
	env.WaitFor("the notice to fail", func(fs []stages.Filed) bool { return len(notices(fs, stages.Failed)) == 1 })
	// A notice is queued before the filing that calls for it is reported:
	// had the notice's failure made one, it would be in the queue now.
	if left := pipelinetest.Files(t, env.Config.QueueDir); len(left) != 0 {
		t.Fatalf("queued after the notice failed: %v", left)
	}
	if n := len(notices(env.Filed(), stages.Failed)) + len(notices(env.Filed(), stages.Sent)); n != 1 {
		t.Errorf("%d notices filed, want 1", n)
	}
	env.Stop()
	if got := nullSenderMessages(srv); len(got) != 0 {
		t.Errorf("the server accepted %d null-sender messages, want none", len(got))
	}
}

func TestNotifyConfigRefusesBadWebhooks(t *testing.T) {
	for _, tc := range []struct {
		name string
		hook pipeline.NotifyWebhook
	}{
		{"no url", pipeline.NotifyWebhook{SecretFile: "s"}},
		{"ftp", pipeline.NotifyWebhook{URL: "ftp://127.0.0.1/x", SecretFile: "s"}},
		{"user in url", pipeline.NotifyWebhook{URL: "http://u:p@127.0.0.1/x", SecretFile: "s"}},
		{"no secret", pipeline.NotifyWebhook{URL: "http://127.0.0.1/x"}},
		{"unknown event", pipeline.NotifyWebhook{URL: "http://127.0.0.1/x", SecretFile: "s", Events: pipeline.StringList{"bounced"}}},
	} {
		env := pipelinetest.New(t)
		env.Config.Notify.Webhooks = []pipeline.NotifyWebhook{tc.hook}
		if _, err := pipeline.New(env.Config, pipeline.Options{}); err == nil {
			t.Errorf("%s: accepted", tc.name)
		} else if bytes.Contains([]byte(err.Error()), []byte("u:p")) {
			t.Errorf("%s: the error shows the URL's password: %v", tc.name, err)
		}
	}
	env := pipelinetest.New(t)
	env.Config.RecipientFile = ""
	env.Config.Notify.DSN.Failure = true
	if _, err := pipeline.New(env.Config, pipeline.Options{}); err == nil {
		t.Error("notify.dsn without recipient_file accepted")
	}
}

func TestNotifyDelayNoticeOnceWhileRetried(t *testing.T) {
	srv := startServer(t, "127.0.0.1", func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Rcpt && p.Arg == "slow@example.org" {
				return smtptest.Reply(451, smtp.EnhancedCode{4, 2, 0}, "mailbox busy")
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.Start(t, pipelinetest.Config(func(c *pipeline.Config) {
		c.Notify.DSN.Delay = pipeline.Duration(time.Millisecond) // due at the first deferral
	}))
	p := srv.Params("slow@example.org")
	p.From = "app@example.com"
	name := env.Enqueue([]byte("From: app@example.com\r\nSubject: x\r\n\r\nx\r\n"), p)
	// Retried three times (the test configuration's retry.max_attempts),
	// then given up: one delay notice, and no failure notice (off).
	wantFailed(t, env.Wait(name), stages.ClassPermanent)
	env.WaitFor("the delay notice to be sent", func(fs []stages.Filed) bool { return len(notices(fs, stages.Sent)) == 1 })
	got := nullSenderMessages(srv)
	if len(got) != 1 {
		t.Fatalf("the server got %d notices, want one delay notice", len(got))
	}
	_, rcpts, _ := statusBlocks(t, got[0].Data)
	if len(rcpts) != 1 || rcpts[0].Get("Action") != "delayed" || rcpts[0].Get("Status") != "4.2.0" {
		t.Errorf("recipient blocks %v", rcpts)
	}
	if left := pipelinetest.Files(t, filepath.Join(env.Config.QueueDir, notify.DelayedDir)); len(left) != 0 {
		t.Errorf("delay marks left after the message was given up: %v", left)
	}
}
