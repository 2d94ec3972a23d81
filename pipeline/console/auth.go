package console

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/time/rate"
)

// HashCost is the bcrypt cost of the hashes "smtpq console passwd" makes.
const HashCost = 12

// MaxPassword is the longest password taken (bcrypt reads 72 bytes).
const MaxPassword = 72

// HashPassword returns the bcrypt hash of password, for console.users.
func HashPassword(password []byte) (string, error) {
	if len(password) == 0 {
		return "", errors.New("empty password")
	}
	if len(password) > MaxPassword {
		return "", fmt.Errorf("password longer than %d bytes", MaxPassword)
	}
	h, err := bcrypt.GenerateFromPassword(password, HashCost)
	return string(h), err
}

// CheckHash checks that h is a bcrypt hash (as HashPassword makes), without
// saying anything of it in the error.
func CheckHash(h string) error {
	if h == "" {
		return errors.New("missing (the output of smtpq console passwd)")
	}
	if _, err := bcrypt.Cost([]byte(h)); err != nil {
		return errors.New("not a bcrypt hash (the output of smtpq console passwd)")
	}
	return nil
}

// dummyHash is compared against when the user does not exist, so that a
// login takes as long for an unknown user as for a wrong password.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("smtpq console dummy"), bcrypt.MinCost+6)

// checkLogin reports whether password is user's, by the hashes in users.
func checkLogin(users map[string]string, user, password string) bool {
	h, ok := users[user]
	if !ok || CheckHash(h) != nil {
		bcrypt.CompareHashAndPassword(dummyHash, []byte(password))
		return false
	}
	return bcrypt.CompareHashAndPassword([]byte(h), []byte(password)) == nil
}

// Session lifetimes.
const (
	SessionIdle = 2 * time.Hour  // unused this long: logged out
	SessionMax  = 12 * time.Hour // at most this long after login
	maxSessions = 1000           // the oldest is dropped beyond
)

// session is one logged-in browser.
type session struct {
	user    string
	csrf    string // the token every POST carries
	created time.Time
	used    time.Time
	flash   string // the result of the last action, shown once
}

// sessions is the in-memory session store, keyed by random ids. A restart
// logs everyone out.
type sessions struct {
	mu sync.Mutex
	m  map[string]*session
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // crypto/rand.Read never fails
	return base64.RawURLEncoding.EncodeToString(b)
}

// create starts a session for user and returns its id.
func (s *sessions) create(user string, now time.Time) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]*session{}
	}
	s.expire(now)
	for len(s.m) >= maxSessions {
		var oldest string
		for id, se := range s.m {
			if oldest == "" || se.created.Before(s.m[oldest].created) {
				oldest = id
			}
		}
		delete(s.m, oldest)
	}
	id := randomToken()
	s.m[id] = &session{user: user, csrf: randomToken(), created: now, used: now}
	return id
}

// expire drops sessions past their time. Call with mu held.
func (s *sessions) expire(now time.Time) {
	for id, se := range s.m {
		if now.Sub(se.used) > SessionIdle || now.Sub(se.created) > SessionMax {
			delete(s.m, id)
		}
	}
}

// get returns a copy of the session id names, if it is alive, and marks it
// used.
func (s *sessions) get(id string, now time.Time) (session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	se, ok := s.m[id]
	if !ok || id == "" {
		return session{}, false
	}
	if now.Sub(se.used) > SessionIdle || now.Sub(se.created) > SessionMax {
		delete(s.m, id)
		return session{}, false
	}
	se.used = now
	return *se, true
}

// setFlash keeps a result to show on the next page; takeFlash returns it
// once.
func (s *sessions) setFlash(id, msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if se, ok := s.m[id]; ok {
		se.flash = msg
	}
}

func (s *sessions) takeFlash(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	se, ok := s.m[id]
	if !ok {
		return ""
	}
	f := se.flash
	se.flash = ""
	return f
}

func (s *sessions) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
}

// validCSRF compares a posted token with the session's in constant time.
func validCSRF(se session, token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(se.csrf), []byte(token)) == 1
}

// Login rate limits: each remote address and each user name gets a burst
// of attempts, then one more every so often.
const (
	loginBurstAddr = 10
	loginEveryAddr = 6 * time.Second
	loginBurstUser = 5
	loginEveryUser = 12 * time.Second
	maxLimiters    = 10000 // per kind; full limiters are dropped beyond
)

// limiters are token buckets by key (a remote address, a user name).
type limiters struct {
	mu    sync.Mutex
	m     map[string]*rate.Limiter
	every time.Duration
	burst int
}

// allow takes one attempt from key's bucket at now.
func (l *limiters) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*rate.Limiter{}
	}
	lim, ok := l.m[key]
	if !ok {
		if len(l.m) >= maxLimiters {
			l.prune(now)
		}
		lim = rate.NewLimiter(rate.Every(l.every), l.burst)
		l.m[key] = lim
	}
	return lim.AllowN(now, 1)
}

// prune drops the buckets that are full again (they would allow as much as
// a new one); if none is, the map is cleared. Call with mu held.
func (l *limiters) prune(now time.Time) {
	for k, lim := range l.m {
		if lim.TokensAt(now) >= float64(l.burst) {
			delete(l.m, k)
		}
	}
	if len(l.m) >= maxLimiters {
		clear(l.m)
	}
}

// normUser is the key of a user name for the rate limit.
func normUser(u string) string { return strings.ToLower(clip(u)) }
