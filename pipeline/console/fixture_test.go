package console_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"
	"golang.org/x/crypto/bcrypt"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/console"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The test user.
const (
	testUser     = "admin"
	testPassword = "correct horse battery staple"
)

// testHash is testPassword's hash, at bcrypt's lowest cost to keep the
// tests quick (the console takes any cost).
var testHash = func() string {
	h, err := bcrypt.GenerateFromPassword([]byte(testPassword), bcrypt.MinCost)
	if err != nil {
		panic(err)
	}
	return string(h)
}()

// failText is the failing host's reply, which the pages must show.
const failText = "mailbox host down for maintenance"

// fixture is a running pipeline whose SMTP server fails (451) while
// failing is set, a DirBackend fed by its filings and the console on an
// httptest server.
type fixture struct {
	t       *testing.T
	env     *pipelinetest.Env
	smtp    *smtptest.Server
	failing atomic.Bool
	backend *console.DirBackend
	svc     *fakeService
	srv     *httptest.Server
}

// fakeService stands in for the pipeline's side of the console.
type fakeService struct {
	mu        sync.Mutex
	reloadErr error
	reloads   int
	lifted    []string
}

func (s *fakeService) Info() console.Info {
	return console.Info{Version: "test-1.2.3", Started: time.Now().Add(-time.Hour), ConfigFile: "/etc/smtpq/test.yaml", MaxThreads: 7}
}
func (s *fakeService) Limits(string) (int, float64) { return 3, 2.5 }
func (s *fakeService) Sessions() map[string]int     { return map[string]int{"127.0.0.1": 1} }
func (s *fakeService) LiftPause(host string, _ bool) {
	s.mu.Lock()
	s.lifted = append(s.lifted, host)
	s.mu.Unlock()
}
func (s *fakeService) Reload() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reloads++
	return s.reloadErr
}
func (s *fakeService) setReloadErr(err error) { s.mu.Lock(); s.reloadErr = err; s.mu.Unlock() }
func (s *fakeService) counts() (reloads int, lifted string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloads, strings.Join(s.lifted, ",")
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, svc: &fakeService{}}
	f.failing.Store(true)
	f.smtp = smtptest.NewServer(t, func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			if p.Step == smtptest.Mail && f.failing.Load() {
				return smtptest.Reply(451, smtp.EnhancedCode{4, 4, 1}, "mailbox host down for maintenance")
			}
			return smtptest.Fault{}
		}
	})
	f.env = pipelinetest.New(t, func(c *pipeline.Config) {
		c.Retry = pipeline.RetryConfig{MinBackoff: pipeline.Duration(time.Hour), MaxBackoff: pipeline.Duration(time.Hour), MaxAttempts: 5, MaxAge: pipeline.Duration(24 * time.Hour)}
	})
	ids, err := queuefile.LoadIdentities(f.env.Config.IdentityFile...)
	if err != nil {
		t.Fatal(err)
	}
	dirs := spool.Dirs{Queue: f.env.Config.QueueDir, Sent: f.env.Config.SentDir, Undeliverable: f.env.Config.UndeliverableDir}
	f.backend = console.NewDirBackend(dirs, ids, time.Now, zaptest.NewLogger(t))
	f.backend.LiftPause = f.svc.LiftPause
	f.env.Start(pipeline.Options{OnFiled: f.backend.Observe})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.backend.Run(ctx)
	}()
	users := func() map[string]string { return map[string]string{testUser: testHash} }
	f.srv = httptest.NewServer(console.NewServer(f.backend, f.svc, users, false, zaptest.NewLogger(t), nil).Handler())
	t.Cleanup(func() {
		f.srv.Close()
		cancel()
		<-done
	})
	return f
}

// enqueue queues msg for the test server and returns its name.
func (f *fixture) enqueue(msg string, from string, to ...string) string {
	f.t.Helper()
	p := f.smtp.Params(to...)
	p.From = from
	return f.env.Enqueue([]byte(msg), p)
}

// deferred enqueues msg while the host fails and waits until it is
// deferred; it returns the message's id.
func (f *fixture) deferred(msg string) (name, id string) {
	f.t.Helper()
	name = f.enqueue(msg, "app@example.com", "user@example.org")
	f.env.WaitFor(name+" deferred", func(fs []stages.Filed) bool {
		for _, x := range fs {
			if x.Job.Name == name && x.Verdict == stages.Deferred {
				id = x.Job.ID
				return true
			}
		}
		return false
	})
	return name, id
}

// client is a browser: it keeps cookies and does not follow redirects.
type client struct {
	t    *testing.T
	base string
	hc   *http.Client
	csrf string
}

func (f *fixture) client() *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: f.t, base: f.srv.URL, hc: &http.Client{
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}}
}

// do sends a request and returns the status, the Location and the body.
func (c *client) do(method, path string, form url.Values, hdr ...string) (int, string, string) {
	c.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, c.base+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Location"), string(b)
}

func (c *client) get(path string) (int, string) {
	c.t.Helper()
	code, _, body := c.do("GET", path, nil)
	return code, body
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// login logs in and keeps the CSRF token of the first page.
func (c *client) login() {
	c.t.Helper()
	code, loc, body := c.do("POST", "/login", url.Values{"username": {testUser}, "password": {testPassword}})
	if code != http.StatusSeeOther || loc != "/" {
		c.t.Fatalf("login: %d %q\n%s", code, loc, body)
	}
	code, page := c.get("/")
	m := csrfRE.FindStringSubmatch(page)
	if code != 200 || m == nil {
		c.t.Fatalf("overview after login: %d, no CSRF token\n%s", code, page)
	}
	c.csrf = m[1]
}

// loggedIn returns a client with a session.
func (f *fixture) loggedIn() *client {
	c := f.client()
	c.login()
	return c
}

// wantAll checks that body holds every one of wants.
func wantAll(t *testing.T, what, body string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(body, w) {
			t.Errorf("%s lacks %q", what, w)
		}
	}
}

// act posts an action on keys (or host), confirmed or not.
func (c *client) act(op string, confirm bool, in, host string, keys ...string) (int, string, string) {
	c.t.Helper()
	form := url.Values{"csrf": {c.csrf}, "action": {op}, "back": {"/queue"}, "key": keys}
	if in != "" {
		form.Set("in", in)
	}
	if host != "" {
		form.Set("host", host)
	}
	if confirm {
		form.Set("confirm", "yes")
	}
	return c.do("POST", "/actions", form)
}

var errReload = errors.New("config /etc/smtpq/test.yaml: max_threads 0 must be at least 1")
