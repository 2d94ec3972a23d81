package pipeline_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func testMessage(i int) []byte {
	return fmt.Appendf(nil, "From: app@example.com\r\nTo: user%d@example.org\r\nSubject: test %d\r\nMessage-ID: <m%d@example.com>\r\n\r\nHello %d.\r\n.leading dot\r\n", i, i, i, i)
}

func TestSendsAndFilesInSent(t *testing.T) {
	srv := smtptest.NewServer(t)
	env := pipelinetest.New(t)
	env.Start(pipeline.Options{})
	names := map[string][]byte{}
	for i := range 20 {
		msg := testMessage(i)
		name := env.Enqueue(msg, srv.Params(fmt.Sprintf("user%d@example.org", i)))
		names[name] = msg
	}
	final := env.WaitFinal(len(names))
	for name, msg := range names {
		f := final[name]
		if f.Verdict != stages.Sent {
			t.Fatalf("%s: %s (%v)", name, f.Verdict, f.Job.Outcome.Err)
		}
		got, err := os.ReadFile(filepath.Join(env.Config.SentDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Errorf("Sent copy of %s differs:\n%q\nwant\n%q", name, got, msg)
		}
	}
	msgs := srv.Messages()
	if len(msgs) != len(names) {
		t.Fatalf("server got %d messages, want %d", len(msgs), len(names))
	}
	for _, m := range msgs {
		if bytes.Contains(bytes.ToLower(m.Data), []byte("x-smtpq-sealed")) {
			t.Errorf("sealed header reached the server")
		}
	}
	if s := srv.Sessions(); s >= len(names) {
		t.Errorf("%d sessions for %d messages: connections were not reused", s, len(names))
	}
	if left := pipelinetest.Files(t, env.Config.QueueDir); len(left) != 0 {
		t.Errorf("left in queue: %v", left)
	}
}
