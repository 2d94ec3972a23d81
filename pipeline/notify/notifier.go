package notify

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	message "github.com/emersion/go-message"
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
	"github.com/sourcegraph/conc"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// CrashRecorded is the crash point (see Notifier.Crash) between an event's
// durable record and its delivery.
const CrashRecorded = "event-recorded"

// Notifier tells senders and applications what became of their mail: it
// queues delivery status notices and records and delivers webhook events.
// Set its fields, call Open, give Filing and Filed every filing (the
// Archiver's OnFiling and OnFiled), run Run, and Close it when no filing is
// left; Filing and Filed may be called before Run starts and after it has
// returned (events then wait in the outbox for the next start).
type Notifier struct {
	QueueDir string           // queue_dir: the outbox and the delay marks live in hidden folders of it
	Queue    *queuefile.Queue // where notices are queued (the service's own queue and public key)

	Failure      bool          // a notice when a message fails for good
	Delay        time.Duration // a notice, once, when a message is still deferred this long after it was queued; 0: none
	ReportingMTA string        // the name notices report (Reporting-MTA, MAILER-DAEMON@)
	DefaultRelay string        // the route of notices about pickup files

	Webhooks   []Webhook
	Client     *http.Client  // nil: a client of its own, whose idle connections Run closes
	Timeout    time.Duration // per POST; default 30s
	MinBackoff time.Duration // first retry delay after a failed POST; default 1s
	MaxBackoff time.Duration // the doubling stops here; default 10m

	Clock stages.Clock
	Log   *zap.Logger
	// Locate, if set, finds the messages whose filing a crash may have cut
	// short, when Open resolves the intents a dead instance left; nil (a
	// stream) tells them all.
	Locate Locate
	// Crash, if set, is called at CrashFiled and CrashRecorded, for crash
	// tests.
	Crash func(point string)

	box     outbox
	hooks   []*hook
	filings *filings

	idMu   sync.Mutex
	lastID int64 // the time part of the last event id (newEventID)
}

// Enabled reports whether n has anything to do.
func (n *Notifier) Enabled() bool { return n.Failure || n.Delay > 0 || len(n.Webhooks) > 0 }

// Open fills in defaults and creates the outbox, delay-mark and intent
// folders, clearing what a crash left half-written and telling what the
// filings a crash cut short call for (see Locate).
func (n *Notifier) Open() error {
	if n.Client == nil {
		n.Client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	}
	if n.Timeout <= 0 {
		n.Timeout = 30 * time.Second
	}
	if n.MinBackoff <= 0 {
		n.MinBackoff = time.Second
	}
	if n.MaxBackoff < n.MinBackoff {
		n.MaxBackoff = max(n.MinBackoff, 10*time.Minute)
	}
	if n.Clock == nil {
		n.Clock = stages.SystemClock{}
	}
	if n.Log == nil {
		n.Log = zap.NewNop()
	}
	n.box = outbox{dir: filepath.Join(n.QueueDir, EventsDir)}
	var keys []string
	n.hooks = nil
	for _, w := range n.Webhooks {
		h := &hook{Webhook: w, key: HookKey(w.URL), wake: make(chan struct{}, 1)}
		n.hooks = append(n.hooks, h)
		keys = append(keys, h.key)
	}
	if err := os.MkdirAll(filepath.Join(n.QueueDir, DelayedDir), 0o750); err != nil {
		return err
	}
	if err := n.box.open(keys); err != nil {
		return err
	}
	return n.openFilings()
}

// Run delivers webhook events, one worker per webhook, until ctx is done,
// and returns when every worker has stopped. Events recorded before Run
// (a previous run's) are delivered first.
func (n *Notifier) Run(ctx context.Context) {
	var wg conc.WaitGroup
	for _, h := range n.hooks {
		wg.Go(func() { n.deliverAll(ctx, h) })
	}
	wg.Wait()
	n.Client.CloseIdleConnections()
}

// Filed is the Archiver's OnFiled hook, called after each filing. It
// completes what Filing prepared for a filing that took place: the notice
// moved into the queue, the event recorded durably (fsynced) for each
// webhook that asked for it, before it returns; delivery happens in Run.
// A filing that failed drops what Filing prepared: the message stays in
// the queue and tells when it is filed again. It never fails the filing:
// errors are logged.
func (n *Notifier) Filed(f stages.Filed) {
	fs := n.filings
	if f.Job == nil || fs == nil {
		return
	}
	it := fs.take(f.Job.ID)
	if f.Err != nil {
		if it != nil {
			n.abandon(fs.dir, it)
		}
		return
	}
	if n.Delay > 0 && (f.Verdict == stages.Sent || f.Verdict == stages.Failed) {
		n.forgetDelay(f.Job.ID)
	}
	if it == nil {
		return
	}
	if n.Crash != nil {
		n.Crash(CrashFiled)
	}
	n.complete(fs.dir, it, &f)
}

// headersOnce returns a function that reads j's original header section
// the first time it is called.
func (n *Notifier) headersOnce(j *stages.Job) func() []byte {
	return sync.OnceValue(func() []byte { return originalHeaders(j) })
}

func (n *Notifier) now() time.Time { return n.Clock.Now() }

// maxHeaders bounds the original header section a notice carries and an
// event's Message-ID is looked for in.
const maxHeaders = 64 << 10

// originalHeaders returns the header section of j's message as it was
// sent (without the sealed field), at most maxHeaders bytes cut at a line
// end, or nil if the message can no longer be read.
func originalHeaders(j *stages.Job) []byte {
	c := &headerCapture{}
	if err := j.WriteMessage(c); err != nil && !errors.Is(err, errCaptured) {
		return nil
	}
	return c.buf
}

var errCaptured = errors.New("header section captured")

// headerCapture keeps what is written to it up to the end of the header
// section, then stops the writer with errCaptured.
type headerCapture struct {
	buf  []byte
	done bool
}

func (c *headerCapture) Write(p []byte) (int, error) {
	if c.done {
		return 0, errCaptured
	}
	from := max(0, len(c.buf)-3)
	c.buf = append(c.buf, p[:min(len(p), maxHeaders+1-len(c.buf))]...)
	if i := endOfHeader(c.buf[from:]); i >= 0 {
		c.buf, c.done = c.buf[:from+i], true
		return len(p), errCaptured
	}
	if len(c.buf) > maxHeaders {
		c.buf, c.done = c.buf[:bytes.LastIndexByte(c.buf, '\n')+1], true
		return len(p), errCaptured
	}
	return len(p), nil
}

// endOfHeader returns where the header section in b ends (after the last
// header line's end, before the empty line), or -1.
func endOfHeader(b []byte) int {
	end := -1
	for _, sep := range []string{"\n\r\n", "\n\n"} {
		if i := bytes.Index(b, []byte(sep)); i >= 0 && (end < 0 || i+1 < end) {
			end = i + 1
		}
	}
	return end
}

// messageID returns the Message-ID in a header section, or "".
func messageID(hdr []byte) string {
	if len(hdr) == 0 {
		return ""
	}
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(append(hdr, "\r\n"...))))
	if err != nil {
		return ""
	}
	mh := mail.Header{Header: message.Header{Header: h}}
	id, err := mh.MessageID()
	if err != nil {
		return ""
	}
	return id
}
