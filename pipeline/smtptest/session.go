package smtptest

import (
	"errors"
	"io"
	"slices"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// errAuthRequired is the reply to MAIL before AUTH when Users is set.
var errAuthRequired = &smtp.SMTPError{
	Code:         530,
	EnhancedCode: smtp.EnhancedCode{5, 7, 0},
	Message:      "Authentication required",
}

// session is the go-smtp backend session. go-smtp creates one at EHLO/HELO
// and a fresh one after STARTTLS, so state that belongs to the connection
// lives in conn.
type session struct {
	srv  *Server
	conn *conn
	sc   *smtp.Conn
	helo string
	tls  bool

	// mu guards the fields below: with BDAT, go-smtp calls Data from a
	// goroutine of its own while the connection's goroutine goes on.
	mu       sync.Mutex
	authUser string
	seq      int
	from     string
	opts     smtp.MailOptions
	to       []string
	// inData is set by Data so that Reset can tell go-smtp's own reset
	// at the end of a transaction from an RSET command.
	inData bool
}

// newSession is the go-smtp Backend: go-smtp calls it at EHLO/HELO (not when
// the connection opens), which makes it the Hello step.
func (s *Server) newSession(sc *smtp.Conn) (smtp.Session, error) {
	c := connOf(sc)
	if c == nil {
		return nil, errors.New("smtptest: connection not accepted by smtptest")
	}
	p := FaultPoint{Step: Hello, Session: c.id, Message: int(c.mails.Load()), Arg: sc.Hostname()}
	if err := s.apply(c, sc.Conn(), p); err != nil {
		return nil, err
	}
	_, isTLS := sc.TLSConnectionState()
	return &session{srv: s, conn: c, sc: sc, helo: sc.Hostname(), tls: isTLS}, nil
}

func (ss *session) point(step Step, arg string) FaultPoint {
	return FaultPoint{Step: step, Session: ss.conn.id, Message: int(ss.conn.mails.Load()), Arg: arg}
}

func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	ss.mu.Lock()
	authUser := ss.authUser
	ss.mu.Unlock()
	if ss.srv.cfg.users != nil && authUser == "" {
		return errAuthRequired
	}
	ss.conn.mails.Add(1)
	p := ss.point(Mail, from)
	if err := ss.srv.apply(ss.conn, ss.sc.Conn(), p); err != nil {
		return err
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.seq = p.Message
	ss.from = from
	ss.opts = smtp.MailOptions{}
	if opts != nil {
		ss.opts = cloneMailOptions(*opts)
	}
	ss.to = nil
	return nil
}

func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	if err := ss.srv.apply(ss.conn, ss.sc.Conn(), ss.point(Rcpt, to)); err != nil {
		return err
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.to = append(ss.to, to)
	return nil
}

func (ss *session) Data(r io.Reader) error {
	ss.mu.Lock()
	ss.inData = true
	m := Message{
		Session:     ss.conn.id,
		Seq:         ss.seq,
		Helo:        ss.helo,
		From:        ss.from,
		To:          slices.Clone(ss.to),
		AuthUser:    ss.authUser,
		TLS:         ss.tls,
		MailOptions: cloneMailOptions(ss.opts),
	}
	ss.mu.Unlock()

	if err := ss.srv.apply(ss.conn, ss.sc.Conn(), ss.point(Data, "")); err != nil {
		// go-smtp reads and discards the rest of the message, then
		// replies with err.
		return err
	}
	data, err := io.ReadAll(r)
	if err != nil {
		// Such as 552 for a message over MaxMessageBytes.
		return err
	}
	if err := ss.srv.apply(ss.conn, ss.sc.Conn(), ss.point(AfterDot, "")); err != nil {
		return err
	}
	m.Data = data
	m.Received = time.Now()
	ss.srv.record(m)
	return nil
}

// Reset is called by go-smtp for RSET, for a repeated EHLO, and on its own
// at the end of every DATA transaction; only the first two are the Reset
// step.
func (ss *session) Reset() {
	ss.mu.Lock()
	endOfData := ss.inData
	ss.inData = false
	ss.from, ss.to, ss.opts = "", nil, smtp.MailOptions{}
	ss.mu.Unlock()
	if endOfData {
		return
	}
	// go-smtp holds its connection lock here and answers 250 when Reset
	// returns; it has no way to fail RSET. So an Err is written directly,
	// and the connection closed so that the 250 goes nowhere.
	f := ss.srv.decide(ss.point(Reset, ""))
	switch {
	case f.Drop:
		ss.conn.Close()
	case f.Raw != nil:
		ss.srv.writeRaw(ss.sc.Conn(), f)
		ss.conn.Close()
	case f.Err != nil:
		ss.sc.Conn().Write(formatReply(f.Err))
		ss.conn.Close()
	}
}

func (ss *session) Logout() error { return nil }

// AuthMechanisms implements smtp.AuthSession.
func (ss *session) AuthMechanisms() []string {
	if ss.srv.cfg.users == nil {
		return nil
	}
	return []string{sasl.Plain, sasl.Login, mechXOAuth2}
}

// Auth implements smtp.AuthSession.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.srv.cfg.users == nil {
		return nil, smtp.ErrAuthUnsupported
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(ss.authenticate), nil
	case sasl.Login:
		return &loginServer{authenticate: ss.authenticate}, nil
	case mechXOAuth2:
		return &xoauth2Server{authenticate: ss.authenticate}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// authenticate is the Auth step: it consults Fault, then checks the
// credentials. Wrong ones get smtp.ErrAuthFailed, 535 5.7.8. An
// authorization identity other than the user name is refused the same way.
func (ss *session) authenticate(identity, username, password string) error {
	if err := ss.srv.apply(ss.conn, ss.sc.Conn(), ss.point(Auth, username)); err != nil {
		return err
	}
	if identity != "" && identity != username {
		return smtp.ErrAuthFailed
	}
	if want, ok := ss.srv.cfg.users[username]; !ok || want != password {
		return smtp.ErrAuthFailed
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.authUser = username
	return nil
}
