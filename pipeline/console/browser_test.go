package console_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/emersion/go-smtp"

	"github.com/smtpq/smtpq/pipeline"
	"github.com/smtpq/smtpq/pipeline/pipelinetest"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages"
)

// RequireBrowser is the environment variable that makes a missing
// Chromium a failure instead of a skip (CI sets it: .ci/run).
const RequireBrowser = "SMTPQ_REQUIRE_BROWSER"

// ScreenshotDir is the environment variable naming a folder to copy the
// browser test's screenshots to (they are always saved under the test's
// artifact folder: go test -artifacts keeps them).
const ScreenshotDir = "SMTPQ_SCREENSHOTS"

// chromium finds a Chromium or Chrome binary.
func chromium(t *testing.T) string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv(RequireBrowser) == "1" {
		t.Fatalf("no chromium in PATH and %s=1: install it (apt-get install chromium; .ci/install-packages does)", RequireBrowser)
	}
	t.Skipf("no chromium in PATH: the browser test needs it (apt-get install chromium); set %s=1 to make this a failure", RequireBrowser)
	return ""
}

// TestBrowser drives the console in headless Chromium: log in, see a
// deferred message for a failing host, open it, read the error from its
// log, press retry once the host is back, and watch it reach Sent without
// reloading the page.
func TestBrowser(t *testing.T) {
	exe := chromium(t)
	var failing atomic.Bool
	failing.Store(true)
	srv := smtptest.NewServer(t, func(s *smtptest.Server) {
		s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
			switch {
			case p.Step == smtptest.Mail && failing.Load():
				return smtptest.Reply(451, smtp.EnhancedCode{4, 4, 1}, "mailbox host down for maintenance")
			case p.Step == smtptest.AfterDot:
				// Slow enough that the page shows the message on its way
				// before it is sent.
				return smtptest.Fault{Stall: 1500 * time.Millisecond}
			}
			return smtptest.Fault{}
		}
	})
	env := pipelinetest.New(t, func(c *pipeline.Config) {
		c.Retry = pipeline.RetryConfig{MinBackoff: pipeline.Duration(time.Hour), MaxBackoff: pipeline.Duration(time.Hour), MaxAttempts: 5, MaxAge: pipeline.Duration(24 * time.Hour)}
		c.Console = pipeline.ConsoleConfig{Listen: "127.0.0.1:0", Users: map[string]pipeline.ConsoleUser{testUser: {PasswordHash: testHash}}}
	})
	env.Start(pipeline.Options{Version: "browser-test"})
	p := srv.Params("user@example.org")
	p.From = "app@example.com"
	name := env.Enqueue([]byte("From: App <app@example.com>\r\nTo: user@example.org\r\nSubject: Your invoice <No. 42>\r\n\r\nHello,\r\nyour invoice is attached.\r\n"), p)
	var id string
	env.WaitFor(name+" deferred", func(fs []stages.Filed) bool {
		for _, f := range fs {
			if f.Job.Name == name && f.Verdict == stages.Deferred {
				id = f.Job.ID
				return true
			}
		}
		return false
	})
	base := "http://" + env.Pipeline.ConsoleAddr().String()

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.WindowSize(1280, 900),
		chromedp.UserDataDir(t.TempDir()), chromedp.Flag("disable-dev-shm-usage", true))
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()

	shots := t.ArtifactDir()
	shot := func(file string) {
		t.Helper()
		b, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", file, err)
		}
		for _, dir := range []string{shots, os.Getenv(ScreenshotDir)} {
			if dir == "" {
				continue
			}
			if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		t0 := time.Now()
		defer func() { t.Logf("%s: %v", what, time.Since(t0).Round(time.Millisecond)) }()
		if err := chromedp.Do(ctx, steps...); err != nil {
			shot("failed.png")
			t.Fatalf("%s: %v (screenshots in %s)", what, err, shots)
		}
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return s
	}
	eval := func(js string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Evaluate[string](js))
		if err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		return s
	}

	do("start", chromedp.Navigate(base+"/"))
	do("login page", chromedp.WaitVisible(chromedp.CSS(`input[name="username"]`)))
	do("user", chromedp.SendKeys(chromedp.CSS(`input[name="username"]`), testUser))
	do("password", chromedp.SendKeys(chromedp.CSS(`input[name="password"]`), testPassword))
	do("submit", chromedp.Click(chromedp.CSS(`button[type="submit"]`)))
	do("overview", chromedp.WaitVisible(chromedp.CSS(`body[data-page="overview"] [data-count="deferred"]`)))
	// The overview updates by itself: wait for a poll to have run.
	do("live overview", chromedp.Poll[chromedp.Void](`document.body.dataset.liveUpdates > 0 && document.querySelector('[data-count="deferred"]').textContent === "1"`))
	if hosts := text("#hosts"); !strings.Contains(hosts, srv.Host()) || !strings.Contains(hosts, failText) {
		t.Errorf("host table %q lacks the failing host and its error", hosts)
	}
	shot("overview.png")

	do("queue", chromedp.Navigate(base+"/queue?state=deferred"),
		chromedp.WaitVisible(chromedp.CSS(`a[href="/messages/`+id+`"]`)))
	shot("queue.png")
	do("open the message", chromedp.Click(chromedp.CSS(`a[href="/messages/`+id+`"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#state[data-state="deferred"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#log-failure`)))
	if f := text("#log-failure"); !strings.Contains(f, failText) || !strings.Contains(f, "451 4.4.1") {
		t.Errorf("the XML log shows %q, want the server's reply %q", f, failText)
	}
	if subj := text(".headers"); !strings.Contains(subj, "Your invoice <No. 42>") {
		t.Errorf("header table %q lacks the subject", subj)
	}
	shot("message-deferred.png")

	failing.Store(false) // the host recovers
	do("retry", chromedp.Click(chromedp.CSS(`button[name="action"][value="retry"]`)),
		chromedp.WaitVisible(chromedp.CSS(`body[data-page="confirm"] button[name="action"][value="retry"]`)))
	shot("confirm.png")
	do("confirm", chromedp.Click(chromedp.CSS(`button[name="action"][value="retry"]`)),
		chromedp.WaitVisible(chromedp.CSS(`body[data-page="message"] #result`)))
	if r := text("#result"); !strings.Contains(r, "retry: 1 done") {
		t.Errorf("result %q, want retry: 1 done", r)
	}
	loaded := eval(`document.body.dataset.loadId`)
	before := eval(`document.getElementById("state").dataset.state`)
	if before == "sent" {
		t.Errorf("the page after the retry shows sent at once: the server stalls 1.5 s, so it should show it on its way")
	}
	do("sent, live", chromedp.Poll[chromedp.Void](`document.getElementById("state").dataset.state === "sent"`,
		chromedp.WithPollingInterval(100*time.Millisecond)))
	if now := eval(`document.body.dataset.loadId`); now != loaded {
		t.Error("the page was reloaded: the state should change in place")
	}
	shot("message-sent.png")
	if f := env.Wait(name); f.Verdict != stages.Sent {
		t.Errorf("%s: %v", name, f)
	}
	do("sent list", chromedp.Navigate(base+"/queue?state=sent"),
		chromedp.WaitVisible(chromedp.CSS(`a[href="/messages/`+id+`"]`)))
	t.Logf("screenshots in %s", shots)
}
