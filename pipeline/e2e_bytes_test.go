package pipeline_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/stages"
)

// onTheWire is what an SMTP client transmits for msg, as the server sees it
// once dot-stuffing is undone: every bare LF becomes CRLF (SMTP lines end in
// CRLF), and a message that does not end in a line break gets one, because
// the final "." must start a line. Nothing else changes.
func onTheWire(msg []byte) []byte {
	var out []byte
	for i, c := range msg {
		if c == '\n' && (i == 0 || msg[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	if !bytes.HasSuffix(out, []byte("\r\n")) {
		out = append(out, "\r\n"...)
	}
	return out
}

// fakeServerLineLimit is the longest line smtptest accepts, go-smtp's
// default Server.MaxLineLength, which smtptest does not change. A message
// with a longer line (long-lines.eml has one of 5000 characters, over RFC
// 5321's 998 on purpose) is refused by the server with 554.
const fakeServerLineLimit = 2000

func longestLine(b []byte) int {
	n := 0
	for _, l := range bytes.Split(b, []byte("\n")) {
		n = max(n, len(bytes.TrimSuffix(l, []byte("\r"))))
	}
	return n
}

func TestMessagesArriveByteForByte(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("..", "testdata", "messages", "*.eml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no test messages: %v", err)
	}
	srv := startServer(t, "127.0.0.2")
	env := pipelinetest.New(t)
	type sample struct {
		file string
		orig []byte
	}
	byRcpt := map[string]sample{}
	byName := map[string]sample{}
	for i, file := range files {
		orig, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		// Explicit envelope: the message is queued exactly as it is.
		rcpt := fmt.Sprintf("rcpt%d@example.org", i)
		p := srv.Params(rcpt)
		p.From = "app@example.com"
		name := env.Enqueue(orig, p)
		byRcpt[rcpt] = sample{file, orig}
		byName[name] = sample{file, orig}
	}
	env.Start(pipeline.Options{})

	final := env.WaitFinal(len(files))
	for name, s := range byName {
		f := final[name]
		if longestLine(s.orig) > fakeServerLineLimit {
			// Refused by the server, and so filed in Undeliverable as
			// it was queued: not retried, not lost.
			wantFailed(t, f, stages.ClassPermanent)
			if e := f.Job.Outcome.Err; e == nil || e.Code != 554 || e.Step != "data" {
				t.Errorf("%s: failure %v, want the server's 554 to the data", filepath.Base(s.file), e)
			}
			continue
		}
		if f.Verdict != stages.Sent {
			t.Errorf("%s: %s (%v)", filepath.Base(s.file), f.Verdict, f.Job.Outcome.Err)
			continue
		}
		sent, err := os.ReadFile(filepath.Join(env.Config.SentDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sent, s.orig) {
			t.Errorf("%s: Sent copy differs from the original:\n%q\nwant\n%q", filepath.Base(s.file), sent, s.orig)
		}
	}
	msgs := srv.Messages()
	wantReceived := 0
	for _, s := range byName {
		if longestLine(s.orig) <= fakeServerLineLimit {
			wantReceived++
		}
	}
	if len(msgs) != wantReceived {
		t.Errorf("server received %d messages, want %d", len(msgs), wantReceived)
	}
	for _, m := range msgs {
		if len(m.To) != 1 {
			t.Fatalf("message for %v", m.To)
		}
		s := byRcpt[m.To[0]]
		if longestLine(s.orig) > fakeServerLineLimit {
			t.Errorf("%s: the server accepted a line over its limit", filepath.Base(s.file))
			continue
		}
		// For a file in CRLF that ends in a line break, onTheWire is the
		// identity: the comparison is exact.
		want := onTheWire(s.orig)
		if !bytes.Equal(m.Data, want) {
			t.Errorf("%s: the server received\n%q\nwant\n%q", filepath.Base(s.file), m.Data, want)
		}
		if bytes.Contains(bytes.ToLower(m.Data), []byte("x-smtpq-sealed")) {
			t.Errorf("%s: the sealed header reached the server", filepath.Base(s.file))
		}
	}
}
