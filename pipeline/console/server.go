package console

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/spool"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// CSP is the Content-Security-Policy of every answer: scripts and styles
// from the console itself only, never inline; no frames, no remote
// content.
const CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// maxForm bounds a posted form.
const maxForm = 256 << 10

// maxSelection bounds the messages one action names.
const maxSelection = 1000

// Server is the console's HTTP side: login, pages, actions. Create it with
// NewServer; Handler serves it.
type Server struct {
	backend Backend
	service Service
	users   func() map[string]string // user name -> bcrypt hash, read at each login (a reload changes them)
	secure  bool                     // served over TLS: cookies are Secure
	log     *zap.Logger
	now     func() time.Time

	sessions sessions
	byAddr   limiters
	byUser   limiters
	pages    map[string]*template.Template
}

// NewServer returns the console for b and svc (svc may be nil: no service
// settings shown, no reload). users returns the configured users and their
// hashes; secure says the console is served over TLS.
func NewServer(b Backend, svc Service, users func() map[string]string, secure bool, log *zap.Logger, now func() time.Time) *Server {
	if log == nil {
		log = zap.NewNop()
	}
	if now == nil {
		now = time.Now
	}
	s := &Server{
		backend: b, service: svc, users: users, secure: secure, log: log, now: now,
		byAddr: limiters{every: loginEveryAddr, burst: loginBurstAddr},
		byUser: limiters{every: loginEveryUser, burst: loginBurstUser},
		pages:  map[string]*template.Template{},
	}
	layout := template.Must(template.New("layout").Funcs(funcs).ParseFS(templateFS, "templates/layout.html"))
	for _, p := range []string{"login", "overview", "queue", "message", "confirm", "error"} {
		s.pages[p] = template.Must(template.Must(layout.Clone()).ParseFS(templateFS, "templates/"+p+".html"))
	}
	return s
}

// cookieName is the session cookie's name: with TLS, the __Host- prefix
// (the browser keeps it only if Secure, for this host, path /).
func (s *Server) cookieName() string {
	if s.secure {
		return "__Host-smtpq_session"
	}
	return "smtpq_session"
}

// Handler returns the console's routes. GETs change nothing; every POST
// but the login needs a session and its CSRF token.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	static, _ := fs.Sub(staticFS, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	mux.HandleFunc("GET /login", s.getLogin)
	mux.HandleFunc("POST /login", s.postLogin)
	mux.HandleFunc("POST /logout", s.authed(s.postLogout))
	mux.HandleFunc("GET /{$}", s.authed(s.overview))
	mux.HandleFunc("GET /queue", s.authed(s.queue))
	mux.HandleFunc("GET /messages/{key}", s.authed(s.message))
	mux.HandleFunc("POST /actions", s.authed(s.actions))
	mux.HandleFunc("POST /reload", s.authed(s.reload))
	mux.HandleFunc("GET /api/summary", s.authed(s.apiSummary))
	mux.HandleFunc("GET /api/state", s.authed(s.apiState))
	return headers(mux)
}

// headers sets the security headers of every answer.
func headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", CSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin") // not no-referrer: browsers then send "Origin: null", which sameOrigin refuses
		h.Set("Cache-Control", "no-store")
		if r.TLS != nil {
			h.Set("Strict-Transport-Security", "max-age=31536000")
		}
		next.ServeHTTP(w, r)
	})
}

// request is a logged-in request's session.
type request struct {
	id string
	session
}

// authed wraps a handler that needs a session: without one, a page
// redirects to /login and the API answers 401. A POST also needs the
// session's CSRF token and, if the browser sends one, this site's Origin.
func (s *Server) authed(h func(http.ResponseWriter, *http.Request, request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var rq request
		ok := false
		if c, err := r.Cookie(s.cookieName()); err == nil {
			rq.id = c.Value
			rq.session, ok = s.sessions.get(c.Value, s.now())
		}
		if !ok {
			if strings.HasPrefix(r.URL.Path, "/api/") || r.Method != http.MethodGet {
				http.Error(w, "log in first", http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, maxForm)
			if err := r.ParseForm(); err != nil {
				s.fail(w, r, rq, http.StatusBadRequest, "bad form: "+err.Error())
				return
			}
			if !sameOrigin(r) || !validCSRF(rq.session, r.PostFormValue("csrf")) {
				s.fail(w, r, rq, http.StatusForbidden, "the form's security token is missing or stale: reload the page and try again")
				return
			}
		}
		h(w, r, rq)
	}
}

// sameOrigin is false when the browser says the request comes from
// another site (Origin, or Sec-Fetch-Site).
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host == r.Host
}

// view is what every page template gets.
type view struct {
	Title, Page, User, CSRF, Flash string
	Data                           any
}

// render writes a page.
func (s *Server) render(w http.ResponseWriter, status int, page string, v view) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	v.Page = page
	if err := s.pages[page].ExecuteTemplate(w, "layout", v); err != nil {
		s.log.Warn("console: rendering a page", zap.String("page", page), zap.Error(err))
	}
}

func (s *Server) view(rq request, title string, data any) view {
	return view{Title: title, User: rq.user, CSRF: rq.csrf, Flash: s.sessions.takeFlash(rq.id), Data: data}
}

// fail answers with an error page (logged in or not).
func (s *Server) fail(w http.ResponseWriter, _ *http.Request, rq request, status int, msg string) {
	v := view{Title: http.StatusText(status), User: rq.user, CSRF: rq.csrf, Data: msg}
	s.render(w, status, "error", v)
}

func (s *Server) getLogin(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(s.cookieName()); err == nil {
		if _, ok := s.sessions.get(c.Value, s.now()); ok {
			http.Redirect(w, r, "/", http.StatusSeeOther)
			return
		}
	}
	s.render(w, http.StatusOK, "login", view{Title: "Log in"})
}

func (s *Server) postLogin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, maxForm)
	if err := r.ParseForm(); err != nil || !sameOrigin(r) {
		s.render(w, http.StatusBadRequest, "login", view{Title: "Log in", Data: "bad request"})
		return
	}
	user, pw := r.PostFormValue("username"), r.PostFormValue("password")
	addr := remoteHost(r)
	now := s.now()
	// Both buckets are charged, so that guessing one user's password from
	// many addresses, or many users' from one, is slowed down.
	okAddr := s.byAddr.allow(addr, now)
	okUser := s.byUser.allow(normUser(user), now)
	if !okAddr || !okUser {
		s.log.Warn("console: login attempts rate-limited", zap.String("user", clip(user)), zap.String("remote", addr))
		w.Header().Set("Retry-After", strconv.Itoa(int(loginEveryUser/time.Second)))
		s.render(w, http.StatusTooManyRequests, "login", view{Title: "Log in", Data: "Too many login attempts: wait a little and try again."})
		return
	}
	var users map[string]string
	if s.users != nil {
		users = s.users()
	}
	if len(pw) > MaxPassword || !checkLogin(users, user, pw) {
		s.log.Warn("console: login failed", zap.String("user", clip(user)), zap.String("remote", addr))
		s.render(w, http.StatusUnauthorized, "login", view{Title: "Log in", Data: "Wrong user name or password."})
		return
	}
	id := s.sessions.create(user, now)
	http.SetCookie(w, &http.Cookie{
		Name: s.cookieName(), Value: id, Path: "/", HttpOnly: true, Secure: s.secure,
		SameSite: http.SameSiteStrictMode, MaxAge: int(SessionMax / time.Second),
	})
	s.log.Info("console: logged in", zap.String("user", user), zap.String("remote", addr))
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func remoteHost(r *http.Request) string {
	h, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return h
}

func (s *Server) postLogout(w http.ResponseWriter, r *http.Request, rq request) {
	s.sessions.remove(rq.id)
	http.SetCookie(w, &http.Cookie{Name: s.cookieName(), Value: "", Path: "/", HttpOnly: true, Secure: s.secure, SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// overviewData is the overview page's.
type overviewData struct {
	Info    *Info
	Uptime  time.Duration
	States  []stateCount
	Hosts   []hostRow
	Charts  []Chart
	Summary Summary
}

type stateCount struct {
	State  spool.Place
	N      int
	Oldest string // age of the oldest
}

// hostRow is a host table row with the service's side filled in.
type hostRow struct {
	HostStatus
	Sessions int
	Cap      int
	Rate     string
	Circuit  string
	Paused   string
	ErrorAge string
}

func (s *Server) overview(w http.ResponseWriter, _ *http.Request, rq request) {
	now := s.now()
	sum := s.backend.Summary()
	d := overviewData{Summary: sum, States: s.stateCounts(sum, now), Hosts: s.hostRows(sum, now)}
	if s.service != nil {
		info := s.service.Info()
		d.Info, d.Uptime = &info, now.Sub(info.Started).Round(time.Second)
	}
	d.Charts = []Chart{
		sum.Series.Chart("Last hour, per minute", now, 60, 1),
		sum.Series.Chart("Last day, per 15 minutes", now, SeriesMinutes, 15),
	}
	s.render(w, http.StatusOK, "overview", s.view(rq, "Overview", d))
}

// stateOrder is the order of the counts on the overview.
var stateOrder = []spool.Place{spool.PlaceQueued, spool.PlaceActive, spool.PlaceDeferred, spool.PlaceHeld, spool.PlaceUndeliverable, spool.PlaceSent}

func (s *Server) stateCounts(sum Summary, now time.Time) []stateCount {
	var out []stateCount
	for _, st := range stateOrder {
		c := sum.Counts[st]
		sc := stateCount{State: st, N: c.N}
		if !c.Oldest.IsZero() {
			sc.Oldest = ageOf(now, c.Oldest)
		}
		out = append(out, sc)
	}
	return out
}

func (s *Server) hostRows(sum Summary, now time.Time) []hostRow {
	var sessions map[string]int
	if s.service != nil {
		sessions = s.service.Sessions()
	}
	var rows []hostRow
	for _, h := range sum.Hosts {
		r := hostRow{HostStatus: h, Sessions: sessions[h.Host], Circuit: "closed"}
		if s.service != nil {
			c, rate := s.service.Limits(h.Host)
			r.Cap = c
			r.Rate = "no limit"
			if rate > 0 {
				r.Rate = "limit " + strconv.FormatFloat(rate, 'g', 4, 64) + "/s"
			}
		}
		r.Rate = fmt.Sprintf("%.1f/min sent, %s", h.SentPerMin, orDash(r.Rate))
		if h.Failures > 0 {
			r.Circuit = fmt.Sprintf("failing: %d in a row", h.Failures)
		}
		if !h.PausedUntil.IsZero() {
			r.Circuit = "open (paused)"
			r.Paused = h.PausedUntil.Local().Format("15:04:05") + " (in " + h.PausedUntil.Sub(now).Round(time.Second).String() + ")"
		}
		if !h.LastErrorAt.IsZero() {
			r.ErrorAge = ageOf(now, h.LastErrorAt) + " ago"
		}
		rows = append(rows, r)
	}
	return rows
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ageOf says how long ago t was, to the second.
func ageOf(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return d.Round(time.Second).String()
}

// queueData is the queue page's.
type queueData struct {
	Query    Query
	Page     Page
	States   []spool.Place
	Ops      []string
	Back     string
	PrevURL  string
	NextURL  string
	First    int // the number of the first row shown
	Unread   int
	Filtered bool
}

func (s *Server) queue(w http.ResponseWriter, r *http.Request, rq request) {
	q := Query{Host: strings.TrimSpace(r.FormValue("host")), Rcpt: strings.TrimSpace(r.FormValue("rcpt")),
		Subject: strings.TrimSpace(r.FormValue("subject")), PerPage: 50}
	if st := r.FormValue("state"); st != "" {
		p, err := spool.ParsePlace(st)
		if err != nil {
			s.fail(w, r, rq, http.StatusBadRequest, err.Error())
			return
		}
		q.State = p
	}
	q.Page, _ = strconv.Atoi(r.FormValue("page"))
	q.Page = min(max(q.Page, 0), MaxPageOffset/q.PerPage)
	d := queueData{Query: q, Page: s.backend.List(q), States: stateOrder, Ops: Ops, Back: r.URL.RequestURI(), First: q.Page*q.PerPage + 1}
	d.Filtered = q.Host != "" || q.Rcpt != "" || q.Subject != ""
	if d.Filtered {
		// Shown only with a filter: a Summary walks the whole index again.
		d.Unread = s.backend.Summary().Unindexed
	}
	link := func(page int) string {
		v := r.URL.Query()
		v.Set("page", strconv.Itoa(page))
		return "/queue?" + v.Encode()
	}
	if q.Page > 0 {
		d.PrevURL = link(q.Page - 1)
	}
	if d.Page.More {
		d.NextURL = link(q.Page + 1)
	}
	s.render(w, http.StatusOK, "queue", s.view(rq, "Queue", d))
}

// messageData is the message page's.
type messageData struct {
	*Message
	In   spool.Place
	Ops  []string
	Back string
}

func (s *Server) message(w http.ResponseWriter, r *http.Request, rq request) {
	key := r.PathValue("key")
	in, err := placeParam(r.FormValue("in"))
	if err != nil {
		s.fail(w, r, rq, http.StatusBadRequest, err.Error())
		return
	}
	m, err := s.backend.Message(key, in)
	switch {
	case errors.Is(err, ErrBadKey):
		s.fail(w, r, rq, http.StatusBadRequest, err.Error())
		return
	case errors.Is(err, spool.ErrMessageNotFound):
		s.fail(w, r, rq, http.StatusNotFound, err.Error())
		return
	case err != nil:
		s.fail(w, r, rq, http.StatusInternalServerError, err.Error())
		return
	}
	if m.ID != "" {
		in = ""
	}
	d := messageData{Message: m, In: in, Ops: opsFor(m.State), Back: r.URL.RequestURI()}
	s.render(w, http.StatusOK, "message", s.view(rq, m.Name, d))
}

// opsFor are the actions a message in state st can take.
func opsFor(st spool.Place) []string {
	switch st {
	case spool.PlaceQueued:
		return []string{OpHold}
	case spool.PlaceDeferred:
		return []string{OpHold, OpRetry}
	case spool.PlaceHeld:
		return []string{OpRelease}
	case spool.PlaceUndeliverable:
		return []string{OpRequeue, OpPurge}
	case spool.PlaceSent:
		return []string{OpPurge}
	}
	return nil
}

func placeParam(s string) (spool.Place, error) {
	if s == "" {
		return "", nil
	}
	return spool.ParsePlace(s)
}

// confirmData is the confirmation page's.
type confirmData struct {
	Op    string
	Keys  []string
	Shown []string // the first few, to show
	In    spool.Place
	Host  string
	Back  string
}

// actions carries out an action after a confirmation page: the first
// POST shows what will be done, the second (confirm=yes) does it and
// redirects back with the result.
func (s *Server) actions(w http.ResponseWriter, r *http.Request, rq request) {
	op := r.PostFormValue("action")
	if !slices.Contains(Ops, op) {
		s.fail(w, r, rq, http.StatusBadRequest, fmt.Sprintf("unknown action %q", clip(op)))
		return
	}
	a, err := parseSelection(r)
	if err != nil {
		s.fail(w, r, rq, http.StatusBadRequest, err.Error())
		return
	}
	a.Op = op
	back := localPath(r.PostFormValue("back"))
	if len(a.Keys) == 0 && a.Host == "" {
		s.sessions.setFlash(rq.id, "Nothing selected: tick messages, or give a host.")
		http.Redirect(w, r, back, http.StatusSeeOther)
		return
	}
	if r.PostFormValue("confirm") != "yes" {
		d := confirmData{Op: op, Keys: r.PostForm["key"], In: a.In, Host: a.Host, Back: back}
		d.Shown = d.Keys[:min(len(d.Keys), 20)]
		s.render(w, http.StatusOK, "confirm", s.view(rq, "Confirm", d))
		return
	}
	res := s.backend.Act(r.Context(), a)
	s.log.Info("console: action", zap.String("user", rq.user), zap.String("action", op),
		zap.Int("messages", len(a.Keys)), zap.String("host", a.Host), zap.Int("done", res.Done), zap.Int("errors", len(res.Errors)))
	s.sessions.setFlash(rq.id, resultText(op, res))
	http.Redirect(w, r, back, http.StatusSeeOther)
}

// parseSelection reads the messages (key: an id, a name, or place/name
// for a filed copy) or the host an action is for.
func parseSelection(r *http.Request) (Action, error) {
	var a Action
	in, err := placeParam(r.PostFormValue("in"))
	if err != nil {
		return a, err
	}
	a.In = in
	a.Host = strings.TrimSpace(r.PostFormValue("host"))
	keys := r.PostForm["key"]
	if len(keys) > maxSelection {
		return a, fmt.Errorf("%d messages selected: at most %d at once (act on the host instead)", len(keys), maxSelection)
	}
	if a.Host != "" && len(keys) > 0 {
		return a, errors.New("give messages or a host, not both")
	}
	for _, k := range keys {
		if ps, name, ok := strings.Cut(k, "/"); ok {
			// A filed copy from the queue page: place/name.
			p, err := spool.ParsePlace(ps)
			if err != nil || a.In != "" && a.In != p {
				return a, fmt.Errorf("%q: %w", clip(k), ErrBadKey)
			}
			a.In, k = p, name
		}
		if err := CheckKey(k); err != nil {
			return a, err
		}
		a.Keys = append(a.Keys, k)
	}
	return a, nil
}

// localPath returns p if it is a path on this site, else /queue: a form
// cannot send the browser elsewhere.
func localPath(p string) string {
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n") {
		return "/queue"
	}
	return p
}

func resultText(op string, res Result) string {
	s := fmt.Sprintf("%s: %d done", op, res.Done)
	if len(res.Errors) > 0 {
		s += fmt.Sprintf(", %d not: %s", len(res.Errors), strings.Join(res.Errors[:min(len(res.Errors), 5)], "; "))
		if len(res.Errors) > 5 {
			s += "; ..."
		}
	}
	return s
}

func (s *Server) reload(w http.ResponseWriter, r *http.Request, rq request) {
	msg := "Configuration reloaded."
	if s.service == nil {
		msg = "No service to reload."
	} else if err := s.service.Reload(); err != nil {
		msg = "Reload refused; the old configuration stays in force:\n" + err.Error()
	}
	s.log.Info("console: reload", zap.String("user", rq.user), zap.String("result", firstLine(msg)))
	s.sessions.setFlash(rq.id, msg)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// apiCount and apiHost are the JSON of /api/summary.
type apiCount struct {
	N      int    `json:"n"`
	Oldest string `json:"oldest"`
}

type apiHost struct {
	Host     string `json:"host"`
	Queued   int    `json:"queued"`
	Sessions string `json:"sessions"`
	Rate     string `json:"rate"`
	Circuit  string `json:"circuit"`
	Error    string `json:"error"`
	Paused   string `json:"paused"`
}

func (s *Server) apiSummary(w http.ResponseWriter, _ *http.Request, _ request) {
	now := s.now()
	sum := s.backend.Summary()
	out := struct {
		Counts map[string]apiCount `json:"counts"`
		Hosts  []apiHost           `json:"hosts"`
	}{Counts: map[string]apiCount{}, Hosts: []apiHost{}}
	for _, c := range s.stateCounts(sum, now) {
		out.Counts[string(c.State)] = apiCount{N: c.N, Oldest: c.Oldest}
	}
	for _, h := range s.hostRows(sum, now) {
		out.Hosts = append(out.Hosts, apiHost{Host: h.Host, Queued: h.Queued, Sessions: sessionsText(h),
			Rate: h.Rate, Circuit: h.Circuit, Error: h.LastError, Paused: h.Paused})
	}
	writeJSON(w, out)
}

func sessionsText(h hostRow) string {
	if h.Cap == 0 {
		return strconv.Itoa(h.Sessions)
	}
	return fmt.Sprintf("%d / %d", h.Sessions, h.Cap)
}

func (s *Server) apiState(w http.ResponseWriter, r *http.Request, _ request) {
	in, err := placeParam(r.FormValue("in"))
	key := r.FormValue("key")
	if err != nil || CheckKey(key) != nil {
		http.Error(w, "bad key", http.StatusBadRequest)
		return
	}
	writeJSON(w, map[string]string{"state": string(s.backend.State(key, in))})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// funcs are the templates' helpers.
var funcs = template.FuncMap{
	"msgURL": func(it Item) string {
		u := "/messages/" + url.PathEscape(it.Key())
		if it.ID == "" && it.State != "" {
			u += "?in=" + url.QueryEscape(string(it.State))
		}
		return u
	},
	"selKey": func(it Item) string {
		if it.ID == "" && (it.State == spool.PlaceSent || it.State == spool.PlaceUndeliverable) {
			return string(it.State) + "/" + it.Name
		}
		return it.Key()
	},
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.Local().Format("2006-01-02 15:04:05")
	},
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return ageOf(time.Now(), t)
	},
	"add":  func(a, b int) int { return a + b },
	"dash": orDash,
}
