package notify_test

import (
	"bytes"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"filippo.io/age"
	"go.uber.org/zap/zaptest"

	"github.com/smtpq/smtpq/pipeline/notify"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// memMessage is a stages.Message held in memory.
type memMessage struct{ b []byte }

func (m memMessage) Stat() (fs.FileInfo, error)   { return nil, fs.ErrInvalid }
func (m memMessage) Open() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(m.b)), nil }
func (m memMessage) Released() bool               { return true }

const testBody = "From: App <app@example.com>\r\nTo: a@example.org, b@example.org\r\nSubject: invoice\r\nMessage-ID: <inv-1@example.com>\r\n\r\nHello.\r\n"

// testPassword is the sealed password of testJob: it must never show.
const testPassword = "hunter2-sealed-secret"

// testJob returns a job for a message sent with a sealed login to
// smtp.example.net, from app@example.com to a@ and b@example.org.
func testJob(queued time.Time) *stages.Job {
	return &stages.Job{
		ID: "0123456789abcdef", Name: "20261204T100000.000000000Z-abc.eml", Msg: memMessage{[]byte(testBody)},
		State:  stages.State{Queued: queued, Attempts: 2},
		Kind:   stages.KindSealed,
		Sender: "app@example.com",
		Params: &queuefile.Params{Host: "smtp.example.net", Port: 587, TLS: queuefile.TLSStartTLS, Username: "app",
			Password: queuefile.NewSecret(testPassword), From: "app@example.com", To: []string{"a@example.org", "b@example.org"}},
		Route: stages.Route{Host: "smtp.example.net", Port: 587, TLS: queuefile.TLSStartTLS, Username: "app",
			Password: queuefile.NewSecret(testPassword)},
	}
}

// keys makes a key pair in dir and returns the identity and recipient.
func keys(t *testing.T, dir string) ([]age.Identity, []age.Recipient) {
	t.Helper()
	idPath, rcptPath := filepath.Join(dir, "keys", "id.txt"), filepath.Join(dir, "keys", "rcpt.txt")
	if _, err := queuefile.GenerateKeys(idPath, rcptPath); err != nil {
		t.Fatal(err)
	}
	ids, err := queuefile.LoadIdentities(idPath)
	if err != nil {
		t.Fatal(err)
	}
	rcpts, err := queuefile.LoadRecipients(rcptPath)
	if err != nil {
		t.Fatal(err)
	}
	return ids, rcpts
}

// fakeClock is a clock whose Now is set by the test; After is real.
type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time                         { return c.now }
func (c *fakeClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// newNotifier returns an opened Notifier on a new queue folder.
func newNotifier(t *testing.T, configure func(*notify.Notifier)) (*notify.Notifier, []age.Identity) {
	t.Helper()
	dir := t.TempDir()
	ids, rcpts := keys(t, dir)
	q := filepath.Join(dir, "queue")
	if err := os.MkdirAll(q, 0o750); err != nil {
		t.Fatal(err)
	}
	n := &notify.Notifier{
		QueueDir: q, Queue: &queuefile.Queue{Dir: q, Recipients: rcpts}, ReportingMTA: "mx.test",
		Clock: &fakeClock{now: time.Now()}, Log: zaptest.NewLogger(t), MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
	}
	if configure != nil {
		configure(n)
	}
	if err := n.Open(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return n, ids
}

// file plays the Archiver filing f: n.Filing before the filing (which has
// no path or error yet), n.Filed after it.
func file(n *notify.Notifier, f stages.Filed) {
	before := f
	before.Path, before.Err = "", nil
	n.Filing(before)
	n.Filed(f)
}

// queued returns the queue files in dir.
func queued(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		if queuefile.IsQueueName(e.Name()) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out
}

// openNotice opens a queued notice: its sealed parameters and message.
func openNotice(t *testing.T, path string, ids []age.Identity) (*queuefile.Params, []byte) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var body bytes.Buffer
	p, err := queuefile.OpenTo(&body, f, ids...)
	if err != nil {
		t.Fatalf("opening the notice: %v", err)
	}
	return p, body.Bytes()
}

// theNotice opens the one notice n queued, checking that it has the null
// sender.
func theNotice(t *testing.T, n *notify.Notifier, ids []age.Identity) (*queuefile.Params, []byte) {
	t.Helper()
	files := queued(t, n.QueueDir)
	if len(files) != 1 {
		t.Fatalf("queued %v, want one notice", files)
	}
	p, msg := openNotice(t, files[0], ids)
	if p.From != "" {
		t.Errorf("notice's envelope sender %q, want the null path", p.From)
	}
	return p, msg
}
