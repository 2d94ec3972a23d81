package console_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/console"
	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

func TestLoginIsRequired(t *testing.T) {
	f := newFixture(t)
	c := f.client()
	for _, p := range []string{"/", "/queue", "/messages/x.eml"} {
		code, loc, _ := c.do("GET", p, nil)
		if code != http.StatusSeeOther || loc != "/login" {
			t.Errorf("GET %s without a session: %d %q, want 303 to /login", p, code, loc)
		}
	}
	if code, _ := c.get("/api/summary"); code != http.StatusUnauthorized {
		t.Errorf("GET /api/summary without a session: %d, want 401", code)
	}
	for _, p := range []string{"/actions", "/reload", "/logout"} {
		if code, _, _ := c.do("POST", p, url.Values{"action": {"purge"}}); code != http.StatusUnauthorized {
			t.Errorf("POST %s without a session: %d, want 401", p, code)
		}
	}
	code, body := c.get("/login")
	if code != 200 || !strings.Contains(body, `name="username"`) || !strings.Contains(body, `name="password"`) || !strings.Contains(body, `action="/login"`) {
		t.Errorf("login page: %d\n%s", code, body)
	}
}

func TestLoginWrongPasswordAndCookie(t *testing.T) {
	f := newFixture(t)
	c := f.client()
	code, _, body := c.do("POST", "/login", url.Values{"username": {testUser}, "password": {"wrong"}})
	if code != http.StatusUnauthorized || !strings.Contains(body, "Wrong user name or password") {
		t.Fatalf("wrong password: %d\n%s", code, body)
	}
	if strings.Contains(body, "wrong\"") || strings.Contains(body, testHash) {
		t.Error("the login page echoes the password or shows the hash")
	}
	if code, _, _ := c.do("POST", "/login", url.Values{"username": {"nobody"}, "password": {testPassword}}); code != http.StatusUnauthorized {
		t.Errorf("unknown user: %d, want 401", code)
	}
	req, _ := http.NewRequest("POST", f.srv.URL+"/login", strings.NewReader(url.Values{"username": {testUser}, "password": {testPassword}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cookies := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || len(cookies) != 1 {
		t.Fatalf("login: %d, cookies %v", resp.StatusCode, cookies)
	}
	ck := cookies[0]
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Secure || len(ck.Value) < 40 {
		t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, not Secure without TLS, a long random value", ck)
	}
	if strings.Contains(ck.Value, testUser) {
		t.Error("the session id contains the user name")
	}
}

func TestLoginRateLimited(t *testing.T) {
	f := newFixture(t)
	c := f.client()
	limited := false
	for i := 0; i < 8; i++ {
		code, _, _ := c.do("POST", "/login", url.Values{"username": {testUser}, "password": {"guess"}})
		if code == http.StatusTooManyRequests {
			limited = true
			break
		}
	}
	if !limited {
		t.Fatal("8 wrong passwords in a row for one user were never rate-limited")
	}
	// Limited, even the right password is refused for now.
	if code, _, _ := c.do("POST", "/login", url.Values{"username": {testUser}, "password": {testPassword}}); code != http.StatusTooManyRequests {
		t.Errorf("right password while limited: %d, want 429", code)
	}
}

func TestCSRFAndOrigin(t *testing.T) {
	f := newFixture(t)
	name, id := f.deferred("Subject: csrf\r\n\r\nbody\r\n")
	c := f.loggedIn()
	form := url.Values{"action": {"hold"}, "key": {id}, "confirm": {"yes"}, "back": {"/queue"}}
	if code, _, _ := c.do("POST", "/actions", form); code != http.StatusForbidden {
		t.Errorf("action without a CSRF token: %d, want 403", code)
	}
	form.Set("csrf", "forged")
	if code, _, _ := c.do("POST", "/actions", form); code != http.StatusForbidden {
		t.Errorf("action with a wrong CSRF token: %d, want 403", code)
	}
	form.Set("csrf", c.csrf)
	if code, _, _ := c.do("POST", "/actions", form, "Origin", "https://evil.example"); code != http.StatusForbidden {
		t.Errorf("action from another origin: %d, want 403", code)
	}
	if code, _, _ := c.do("POST", "/reload", url.Values{}); code != http.StatusForbidden {
		t.Errorf("reload without a CSRF token: %d, want 403", code)
	}
	if n, _ := f.svc.counts(); n != 0 {
		t.Errorf("reload ran %d times without a token", n)
	}
	// GETs change nothing: the action and reload URLs take POST only.
	for _, p := range []string{"/actions?action=hold&key=" + id + "&confirm=yes&csrf=" + c.csrf, "/reload", "/logout"} {
		if code, _ := c.get(p); code != http.StatusMethodNotAllowed {
			t.Errorf("GET %s: %d, want 405", p, code)
		}
	}
	if st := f.backend.State(id, ""); st != spool.PlaceDeferred {
		t.Errorf("%s is %s after refused requests, want deferred", name, st)
	}
}

// hostile is a message whose subject, addresses and body carry markup.
const hostile = "From: \"<script>alert('from')</script>\" <evil@example.com>\r\n" +
	"To: \"\\\"><img src=x onerror=alert('to')>\" <victim@example.org>\r\n" +
	"Subject: <script>alert('subject')</script> \"><img src=x onerror=alert('subj')>\r\n" +
	"Content-Type: text/html; charset=utf-8\r\n" +
	"\r\n" +
	"<a href=\"javascript:alert('link')\">click</a><script>alert('body')</script>\"><img src=x onerror=alert('body2')>\r\n"

// unsafe matches markup a page must never carry: message text that got
// through unescaped, inline scripts, event handlers, javascript: links.
var unsafe = []*regexp.Regexp{
	regexp.MustCompile(`<script>`),
	regexp.MustCompile(`<img`),
	regexp.MustCompile(`(?i)href="javascript:`),
	regexp.MustCompile(`<script(?:\s[^>]*)?>[^<]`), // a script with a body: inline
}

var (
	tagRE     = regexp.MustCompile(`<[a-zA-Z][^>]*>`)
	quotedRE  = regexp.MustCompile(`"[^"]*"`)
	handlerRE = regexp.MustCompile(`\son[a-z]+\s*=`)
)

func checkSafe(t *testing.T, what, body string) {
	t.Helper()
	for _, re := range unsafe {
		if m := re.FindString(body); m != "" {
			t.Errorf("%s carries %q", what, m)
		}
	}
	// An event handler attribute in a tag (text inside a quoted,
	// escaped attribute value is only text).
	for _, tag := range tagRE.FindAllString(body, -1) {
		if handlerRE.MatchString(quotedRE.ReplaceAllString(tag, `""`)) {
			t.Errorf("%s has an event handler: %s", what, tag)
		}
	}
}

func TestEscaping(t *testing.T) {
	f := newFixture(t)
	p := f.smtp.Params("victim'onmouseover='alert(1)@example.org")
	p.From = "evil'onfocus='alert(2)@example.com"
	name := f.env.Enqueue([]byte(hostile), p)
	// The server refuses the odd sender (501): undeliverable, with an XML
	// log that quotes it.
	id := f.env.Wait(name).Job.ID
	// A file dropped by hand with markup in its name: filed as invalid.
	evilName := `"><img src=x onerror=alert(9)>.eml`
	if err := os.WriteFile(filepath.Join(f.env.Config.QueueDir, evilName), []byte(hostile), 0o640); err != nil {
		t.Fatal(err)
	}
	f.env.Wait(evilName)
	// One put in Undeliverable by hand, found by a scan (no id: linked
	// by name).
	byHand := `a"b<i>&amp;.eml`
	if err := os.WriteFile(filepath.Join(f.env.Config.UndeliverableDir, byHand), []byte(hostile), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := f.backend.Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	c := f.loggedIn()
	pages := map[string]string{}
	for _, u := range []string{"/", "/queue", "/queue?state=undeliverable", "/queue?subject=script", "/messages/" + id,
		"/messages/" + url.PathEscape(evilName) + "?in=undeliverable", "/messages/a%22b%3Ci%3E&amp%3B.eml?in=undeliverable"} {
		code, body := c.get(u)
		if code != 200 {
			t.Fatalf("GET %s: %d\n%s", u, code, body)
		}
		checkSafe(t, u, body)
		pages[u] = body
	}
	msg := pages["/messages/"+id]
	wantAll(t, "message page", msg, "&lt;script&gt;alert(&#39;subject&#39;)&lt;/script&gt;", "&lt;a href=&#34;javascript:alert(&#39;link&#39;)&#34;&gt;",
		`id="xml-log"`, "evil&#39;onfocus=&#39;alert(2)@example.com")
	if !strings.Contains(pages["/queue?subject=script"], `href="/messages/`+id+`"`) {
		t.Error("the subject filter does not find the message")
	}
	list := pages["/queue?state=undeliverable"]
	if !strings.Contains(list, `&#34;&gt;&lt;img src=x onerror=alert(9)&gt;.eml</a>`) ||
		!strings.Contains(list, `href="/messages/a%22b%3Ci%3E&amp;amp%3B.eml?in=undeliverable"`) {
		t.Errorf("the undeliverable list does not link the odd name escaped:\n%s", pages["/queue?state=undeliverable"])
	}
}

func TestSecurityHeaders(t *testing.T) {
	f := newFixture(t)
	c := f.client()
	req, _ := http.NewRequest("GET", f.srv.URL+"/login", nil)
	resp, err := c.hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	csp := resp.Header.Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	if resp.Header.Get("X-Content-Type-Options") != "nosniff" || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Errorf("headers %v", resp.Header)
	}
	if code, body := c.get("/static/console.js"); code != 200 || !strings.Contains(body, "textContent") {
		t.Errorf("console.js: %d", code)
	}
}

func TestMessageKeysStayInTheSpool(t *testing.T) {
	f := newFixture(t)
	c := f.loggedIn()
	outside := filepath.Join(t.TempDir(), "secret.eml")
	if err := os.WriteFile(outside, []byte("Subject: outside-the-spool\r\n\r\nTOPSECRET\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A link in Sent to a file outside: never followed.
	if err := os.Symlink(outside, filepath.Join(f.env.Config.SentDir, "link.eml")); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{
		"/messages/..%2F..%2Fetc%2Fpasswd", "/messages/%2Fetc%2Fpasswd", "/messages/..%2Fsent%2Fx.eml",
		"/messages/.hidden.eml", "/messages/x.eml?in=../../etc", "/messages/link.eml?in=sent",
		"/messages/" + url.PathEscape(outside),
	} {
		code, body := c.get(u)
		if code == 200 || strings.Contains(body, "TOPSECRET") || strings.Contains(body, "root:") {
			t.Errorf("GET %s: %d, shows something outside the spool", u, code)
		}
		if code != http.StatusBadRequest && code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 400 or 404", u, code)
		}
	}
	if code, _ := c.get("/api/state?key=..%2F..%2Fetc%2Fpasswd"); code != http.StatusBadRequest {
		t.Errorf("state of a path: %d, want 400", code)
	}
}

func TestPagesShowTheQueue(t *testing.T) {
	f := newFixture(t)
	name, id := f.deferred("Subject: stuck one\r\n\r\nhello\r\n")
	c := f.loggedIn()
	_, over := c.get("/")
	wantAll(t, "overview", over, "test-1.2.3", "/etc/smtpq/test.yaml", `data-count="deferred">1<`, f.smtp.Host(), failText, "1 / 3", "<svg", "polyline")
	_, list := c.get("/queue?state=deferred")
	if !strings.Contains(list, `href="/messages/`+id+`"`) || !strings.Contains(list, name[:strings.Index(name, "+")]) || !strings.Contains(list, "stuck one") {
		t.Errorf("queue page lacks the message:\n%s", list)
	}
	for _, op := range []string{"hold", "release", "retry", "requeue", "purge"} {
		wantAll(t, "queue page", list, `name="action" value="`+op+`"`)
	}
	_, msg := c.get("/messages/" + id)
	wantAll(t, "message page", msg, `data-state="deferred"`, "stuck one", "user@example.org", "app@example.com", failText, "Transcript", `value="retry"`)
	code, api := c.get("/api/summary")
	if code != 200 || !strings.Contains(api, `"deferred":{"n":1`) {
		t.Errorf("/api/summary: %d %s", code, api)
	}
	if _, st := c.get("/api/state?key=" + id); !strings.Contains(st, `"state":"deferred"`) {
		t.Errorf("/api/state: %s", st)
	}
	if code, _ := c.get("/messages/00000000000000000000000000.eml"); code != http.StatusNotFound {
		t.Errorf("unknown message: %d, want 404", code)
	}
}

func TestActionsOnOneMessage(t *testing.T) {
	f := newFixture(t)
	name, id := f.deferred("Subject: act\r\n\r\nhello\r\n")
	c := f.loggedIn()

	// First the confirmation: nothing happens yet.
	code, _, body := c.act("hold", false, "", "", id)
	if code != 200 || !strings.Contains(body, `name="confirm" value="yes"`) || !strings.Contains(body, `name="action" value="hold"`) {
		t.Fatalf("hold, unconfirmed: %d\n%s", code, body)
	}
	if st := f.backend.State(id, ""); st != spool.PlaceDeferred {
		t.Fatalf("after an unconfirmed hold: %s", st)
	}
	// step acts and checks the state after: one of want (the service may
	// already have taken the message further).
	step := func(op string, want ...spool.Place) {
		t.Helper()
		code, loc, body := c.act(op, true, "", "", id)
		if code != http.StatusSeeOther || loc != "/queue" {
			t.Fatalf("%s: %d %q\n%s", op, code, loc, body)
		}
		_, page := c.get(loc)
		if !strings.Contains(page, `id="result"`) || !strings.Contains(page, op+": 1 done") {
			t.Errorf("%s: no visible result:\n%s", op, page)
		}
		if st := f.backend.State(id, ""); !slices.Contains(want, st) {
			t.Errorf("after %s: %s, want one of %v", op, st, want)
		}
	}
	step("hold", spool.PlaceHeld)
	if entries, err := spool.LocateMessage(f.backend.Dirs, id); err != nil || entries[0].Place != spool.PlaceHeld {
		t.Fatalf("on disk after hold: %v %v", entries, err)
	}
	// A wrong action for the state is refused, visibly.
	code, loc, _ := c.act("retry", true, "", "", id)
	if _, page := c.get(loc); code != http.StatusSeeOther || !strings.Contains(page, "retry: 0 done, 1 not") {
		t.Errorf("retry of a held message: %d\n%s", code, page)
	}
	step("release", spool.PlaceQueued, spool.PlaceDeferred)
	f.env.WaitFor(name+" deferred again", func(fs []stages.Filed) bool {
		n := 0
		for _, x := range fs {
			if x.Job.ID == id && x.Verdict == stages.Deferred {
				n++
			}
		}
		return n >= 2
	})
	f.failing.Store(false)
	step("retry", spool.PlaceQueued, spool.PlaceSent)
	if sent := f.env.Wait(name); sent.Verdict != stages.Sent {
		t.Fatalf("after retry: %v", sent)
	}
	if st := f.backend.State(id, ""); st != spool.PlaceSent {
		t.Errorf("after sending: %s, want sent", st)
	}
	if _, lifted := f.svc.counts(); lifted != f.smtp.Host() {
		t.Errorf("retry lifted the pause of %q, want %q", lifted, f.smtp.Host())
	}
	sentPath := filepath.Join(f.env.Config.SentDir, name)
	if _, err := os.Stat(sentPath); err != nil {
		t.Fatal(err)
	}
	step("purge", "")
	if _, err := os.Stat(sentPath); !os.IsNotExist(err) {
		t.Errorf("purge left %s: %v", sentPath, err)
	}
}

func TestActionsOnAHostAndUndeliverable(t *testing.T) {
	f := newFixture(t)
	_, id1 := f.deferred("Subject: one\r\n\r\nx\r\n")
	_, id2 := f.deferred("Subject: two\r\n\r\nx\r\n")
	c := f.loggedIn()
	code, _, body := c.act("hold", false, "", f.smtp.Host())
	if code != 200 || !strings.Contains(body, "every message for host") {
		t.Fatalf("host hold, unconfirmed: %d\n%s", code, body)
	}
	code, loc, _ := c.act("hold", true, "", f.smtp.Host())
	if _, page := c.get(loc); code != http.StatusSeeOther || !strings.Contains(page, "hold: 2 done") {
		t.Fatalf("host hold: %d\n%s", code, page)
	}
	for _, id := range []string{id1, id2} {
		if e, err := spool.LocateMessage(f.backend.Dirs, id); err != nil || e[0].Place != spool.PlaceHeld {
			t.Errorf("%s after host hold: %v %v", id, e, err)
		}
	}
	// Nothing selected: said so.
	code, loc, _ = c.act("release", true, "", "")
	if _, page := c.get(loc); code != http.StatusSeeOther || !strings.Contains(page, "Nothing selected") {
		t.Errorf("empty selection: %d\n%s", code, page)
	}

	// An invalid file ends in Undeliverable: requeue it (it fails again),
	// then purge it with its XML log.
	bad := "broken.eml"
	if err := os.WriteFile(filepath.Join(f.env.Config.QueueDir, bad), []byte("no seal here\r\n\r\nx\r\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	f.env.Wait(bad)
	_, page := c.get("/messages/" + bad + "?in=undeliverable")
	if !strings.Contains(page, `data-state="undeliverable"`) || !strings.Contains(page, `id="xml-log"`) || !strings.Contains(page, "invalid") {
		t.Errorf("undeliverable page:\n%s", page)
	}
	code, loc, _ = c.act("purge", true, "", "", "undeliverable/"+bad)
	if _, page := c.get(loc); code != http.StatusSeeOther || !strings.Contains(page, "purge: 1 done") {
		t.Fatalf("purge: %d\n%s", code, page)
	}
	for _, p := range []string{bad, strings.TrimSuffix(bad, ".eml") + ".xml"} {
		if _, err := os.Stat(filepath.Join(f.env.Config.UndeliverableDir, p)); !os.IsNotExist(err) {
			t.Errorf("purge left %s", p)
		}
	}
	// Purge never removes a message still in the queue.
	code, loc, _ = c.act("purge", true, "", "", id1)
	if _, page := c.get(loc); code != http.StatusSeeOther || !strings.Contains(page, "purge: 0 done, 1 not") {
		t.Errorf("purge of a held message: %d\n%s", code, page)
	}
}

func TestRequeue(t *testing.T) {
	f := newFixture(t)
	bad := "again.eml"
	if err := os.WriteFile(filepath.Join(f.env.Config.QueueDir, bad), []byte("no seal\r\n\r\nx\r\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	f.env.Wait(bad)
	c := f.loggedIn()
	code, loc, _ := c.act("requeue", true, "", "", "undeliverable/"+bad)
	if _, page := c.get(loc); code != http.StatusSeeOther || !strings.Contains(page, "requeue: 1 done") {
		t.Fatalf("requeue: %d\n%s", code, page)
	}
	f.env.WaitFor(bad+" filed twice", func(fs []stages.Filed) bool {
		n := 0
		for _, x := range fs {
			if x.Job.Name == bad && x.Verdict == stages.Failed {
				n++
			}
		}
		return n == 2
	})
}

func TestReloadShowsErrors(t *testing.T) {
	f := newFixture(t)
	c := f.loggedIn()
	f.svc.setReloadErr(errReload)
	code, loc, _ := c.do("POST", "/reload", url.Values{"csrf": {c.csrf}})
	_, page := c.get(loc)
	if code != http.StatusSeeOther || !strings.Contains(page, "Reload refused") || !strings.Contains(page, "max_threads 0 must be at least 1") {
		t.Errorf("reload with an error: %d\n%s", code, page)
	}
	f.svc.setReloadErr(nil)
	c.do("POST", "/reload", url.Values{"csrf": {c.csrf}})
	if _, page := c.get("/"); !strings.Contains(page, "Configuration reloaded.") {
		t.Errorf("reload: %s", page)
	}
	if n, _ := f.svc.counts(); n != 2 {
		t.Errorf("%d reloads, want 2", n)
	}
}

func TestLogout(t *testing.T) {
	f := newFixture(t)
	c := f.loggedIn()
	code, loc, _ := c.do("POST", "/logout", url.Values{"csrf": {c.csrf}})
	if code != http.StatusSeeOther || loc != "/login" {
		t.Fatalf("logout: %d %q", code, loc)
	}
	if code, loc, _ := c.do("GET", "/", nil); code != http.StatusSeeOther || loc != "/login" {
		t.Errorf("after logout: %d %q", code, loc)
	}
}

// TestSecureCookieUnderTLS: served over TLS, the session cookie is Secure
// and carries the __Host- prefix.
func TestSecureCookieUnderTLS(t *testing.T) {
	f := newFixture(t)
	users := func() map[string]string { return map[string]string{testUser: testHash} }
	srv := httptest.NewTLSServer(console.NewServer(f.backend, f.svc, users, true, nil, nil).Handler())
	defer srv.Close()
	hc := srv.Client()
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := hc.PostForm(srv.URL+"/login", url.Values{"username": {testUser}, "password": {testPassword}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cookies := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || len(cookies) != 1 {
		t.Fatalf("login: %d, cookies %v", resp.StatusCode, cookies)
	}
	if ck := cookies[0]; ck.Name != "__Host-smtpq_session" || !ck.Secure || !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" {
		t.Errorf("session cookie under TLS: %+v", ck)
	}
	if hsts := resp.Header.Get("Strict-Transport-Security"); hsts == "" {
		t.Error("no Strict-Transport-Security under TLS")
	}
}

// A filed copy's key (place/name) is taken in any case, as the in
// parameter and the queue command are: UNDELIVERABLE/name is the copy in
// Undeliverable, not a name looked for in queue_dir.
func TestActionKeyPlaceInCapitals(t *testing.T) {
	f := newFixture(t)
	const name = "by-hand.eml"
	p := filepath.Join(f.env.Config.UndeliverableDir, name)
	if err := os.WriteFile(p, []byte("Subject: x\r\n\r\nhi\r\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	c := f.loggedIn()
	code, loc, _ := c.act("purge", true, "", "", "UNDELIVERABLE/"+name)
	if _, page := c.get(loc); code != http.StatusSeeOther || !strings.Contains(page, "purge: 1 done") {
		t.Errorf("purge of UNDELIVERABLE/%s: %d\n%s", name, code, page)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Errorf("purge left %s: %v", p, err)
	}
}
