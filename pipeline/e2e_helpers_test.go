package pipeline_test

import (
	"context"
	"encoding/xml"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

// startServer starts a fake SMTP server on its own loopback IP, so that the
// pipeline sees it as a host of its own (per-host limits are keyed by the
// IP).
func startServer(t *testing.T, ip string, configure ...func(*smtptest.Server)) *smtptest.Server {
	t.Helper()
	return smtptest.NewServer(t, append([]func(*smtptest.Server){func(s *smtptest.Server) {
		s.Addr = ip + ":0"
	}}, configure...)...)
}

// hostLimits returns complete per-host limits: a hosts entry replaces the
// default as a whole.
func hostLimits(maxConns int) pipeline.HostLimits {
	return pipeline.HostLimits{
		MaxConnections:           maxConns,
		MaxMessagesPerConnection: 100,
		IdleTimeout:              pipeline.Duration(time.Second),
	}
}

// withHost sets the limits of one host.
func withHost(host string, l pipeline.HostLimits) func(*pipeline.Config) {
	return func(c *pipeline.Config) { c.Hosts[host] = l }
}

// waitCtx is a context bounded like every other wait of a test.
func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), pipelinetest.WaitTimeout)
	t.Cleanup(cancel)
	return ctx
}

// releaser is a gate that Fault functions may block on. Open is idempotent;
// register it with t.Cleanup after the servers and the pipeline are started,
// so that it opens before either is stopped.
type releaser struct {
	once sync.Once
	ch   chan struct{}
}

// stallAt returns a function for Server.Fault that, at each point of step,
// fires reached and waits for release before going on normally.
func stallAt(step smtptest.Step, reached *signal, release *releaser) func(smtptest.FaultPoint) smtptest.Fault {
	return func(p smtptest.FaultPoint) smtptest.Fault {
		if p.Step == step {
			reached.Fire()
			release.Wait()
		}
		return smtptest.Fault{}
	}
}

func newReleaser() *releaser { return &releaser{ch: make(chan struct{})} }

func (r *releaser) Open() { r.once.Do(func() { close(r.ch) }) }
func (r *releaser) Wait() { <-r.ch }

// signal is closed the first time Fire is called.
type signal struct {
	once sync.Once
	ch   chan struct{}
}

func newSignal() *signal { return &signal{ch: make(chan struct{})} }

func (s *signal) Fire() { s.once.Do(func() { close(s.ch) }) }

// await waits for the signal or fails the test after WaitTimeout.
func (s *signal) await(t *testing.T, what string) {
	t.Helper()
	select {
	case <-s.ch:
	case <-time.After(pipelinetest.WaitTimeout):
		t.Fatalf("timed out after %v waiting for %s", pipelinetest.WaitTimeout, what)
	}
}

// xmlLog is the part of an Undeliverable log that the tests check, decoded
// independently of stages.XMLLog so that a change of the format shows.
type xmlLog struct {
	XMLName  xml.Name
	File     string   `xml:"file"`
	Attempts int      `xml:"attempts"`
	Host     string   `xml:"smtpHost"`
	From     string   `xml:"envelope>from"`
	To       []string `xml:"envelope>to"`
	Failure  struct {
		Class    string `xml:"class,attr"`
		Code     int    `xml:"code,attr"`
		Enhanced string `xml:"enhancedCode,attr"`
		Step     string `xml:"step,attr"`
		Text     string `xml:",chardata"`
	} `xml:"failure"`
	Recipients []struct {
		Addr     string `xml:"address,attr"`
		Status   string `xml:"status,attr"`
		Code     int    `xml:"code,attr"`
		Enhanced string `xml:"enhancedCode,attr"`
	} `xml:"recipients>recipient"`
	History    []string `xml:"history>attempt"`
	Transcript string   `xml:"transcript"`
}

// rcptStatus maps each recipient of the log to its status.
func (l *xmlLog) rcptStatus() map[string]string {
	m := map[string]string{}
	for _, r := range l.Recipients {
		m[r.Addr] = r.Status
	}
	return m
}

// readXMLLog reads <name without .eml>.xml from Undeliverable.
func readXMLLog(t *testing.T, env *pipelinetest.Env, name string) *xmlLog {
	t.Helper()
	path := filepath.Join(env.Config.UndeliverableDir, strings.TrimSuffix(name, ".eml")+".xml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("XML log of %s: %v", name, err)
	}
	var l xmlLog
	if err := xml.Unmarshal(b, &l); err != nil {
		t.Fatalf("XML log of %s does not parse: %v\n%s", name, err, b)
	}
	if l.XMLName.Local != "smtpqLog" {
		t.Errorf("XML log of %s: root element %q, want smtpqLog", name, l.XMLName.Local)
	}
	if l.File != name {
		t.Errorf("XML log of %s: file %q", name, l.File)
	}
	return &l
}

// filesUnder lists every regular file below dir, as paths relative to it.
func filesUnder(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, path)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// results returns the results filed for name so far, in order.
func results(env *pipelinetest.Env, name string) []string {
	var out []string
	for _, f := range env.Filed() {
		if f.Job.Name == name {
			out = append(out, f.Verdict.String())
		}
	}
	return out
}

// wantSent fails the test unless f is a successful filing in Sent.
func wantSent(t *testing.T, f stages.Filed) {
	t.Helper()
	if f.Verdict != stages.Sent || f.Err != nil {
		t.Fatalf("%s: %s (%v, filing error %v), want sent", f.Job.Name, f.Verdict, f.Job.Outcome.Err, f.Err)
	}
}

// wantAllSent waits for n messages to be filed for good and checks that
// each was sent.
func wantAllSent(t *testing.T, env *pipelinetest.Env, n int) {
	t.Helper()
	for name, f := range env.WaitFinal(n) {
		if f.Verdict != stages.Sent {
			t.Errorf("%s: %s (%v)", name, f.Verdict, f.Job.Outcome.Err)
		}
	}
}

// wantFailed fails the test unless f is a filing in Undeliverable of class.
func wantFailed(t *testing.T, f stages.Filed, class stages.Class) {
	t.Helper()
	if f.Verdict != stages.Failed || f.Err != nil || f.Job.Outcome.Class != class {
		t.Fatalf("%s: %s class %q (%v, filing error %v), want failed class %q",
			f.Job.Name, f.Verdict.String(), f.Job.Outcome.Class, f.Job.Outcome.Err, f.Err, class)
	}
}

// count returns how many filings of name had result.
func count(fs []stages.Filed, name, result string) int {
	n := 0
	for _, f := range fs {
		if f.Job.Name == name && f.Verdict.String() == result {
			n++
		}
	}
	return n
}

// wantRetriedOnce waits for name to be filed for good and checks that it
// was deferred once and then sent, in two attempts. It returns the
// deferral's filing and the final one.
func wantRetriedOnce(t *testing.T, env *pipelinetest.Env, name string) (deferral, final stages.Filed) {
	t.Helper()
	final = env.Wait(name)
	wantSent(t, final)
	if got := results(env, name); !slices.Equal(got, []string{"deferred", "sent"}) {
		t.Fatalf("filings = %v, want [deferred sent]", got)
	}
	if got := final.Job.State.Attempts; got != 2 {
		t.Errorf("attempts = %d, want 2", got)
	}
	for _, f := range env.Filed() {
		if f.Job.Name == name {
			return f, final
		}
	}
	return deferral, final
}

// messageID finds the Message-ID fields of a message.
var messageID = regexp.MustCompile(`(?m)^Message-ID: (<[^>]+>)\r?$`)
