package smtptest

import (
	"bytes"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// mechXOAuth2 is Google's XOAUTH2 mechanism, which go-sasl does not
// implement.
const mechXOAuth2 = "XOAUTH2"

// authFunc checks credentials: identity (authorization identity, often
// empty), user name and password or token.
type authFunc func(identity, username, password string) error

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login), which go-sasl only implements as a client.
// It accepts the user name as an initial response, as go-sasl's client
// sends it, or asks for it.
type loginServer struct {
	authenticate authFunc
	step         int
	username     string
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	l.step++
	switch l.step {
	case 1:
		if response == nil {
			return []byte("Username:"), false, nil
		}
		l.step++ // the initial response is the user name
		fallthrough
	case 2:
		l.username = string(response)
		return []byte("Password:"), false, nil
	case 3:
		return nil, true, l.authenticate("", l.username, string(response))
	}
	return nil, true, sasl.ErrUnexpectedClientResponse
}

// xoauth2Server is the server side of XOAUTH2
// (https://developers.google.com/gmail/imap/xoauth2-protocol). The client
// sends "user=NAME\x01auth=Bearer TOKEN\x01\x01". A wrong token is answered,
// as Google does, with a 334 challenge carrying a JSON error, and 535 once
// the client has sent its empty reply to it.
type xoauth2Server struct {
	authenticate authFunc
	started      bool
	failed       error
}

func (x *xoauth2Server) Next(response []byte) (challenge []byte, done bool, err error) {
	if x.failed != nil {
		return nil, true, x.failed
	}
	if x.started {
		return nil, true, sasl.ErrUnexpectedClientResponse
	}
	if response == nil {
		return []byte{}, false, nil
	}
	x.started = true

	var username, token string
	var haveUser, haveToken bool
	for _, field := range bytes.Split(response, []byte{1}) {
		key, value, _ := strings.Cut(string(field), "=")
		switch key {
		case "user":
			username, haveUser = value, true
		case "auth":
			scheme, t, ok := strings.Cut(value, " ")
			if ok && strings.EqualFold(scheme, "Bearer") {
				token, haveToken = t, true
			}
		}
	}
	if !haveUser || !haveToken {
		return nil, true, &smtp.SMTPError{
			Code:         501,
			EnhancedCode: smtp.EnhancedCode{5, 5, 2},
			Message:      "Malformed XOAUTH2 response",
		}
	}
	err = x.authenticate("", username, token)
	if err == smtp.ErrAuthFailed {
		x.failed = err
		return []byte(`{"status":"401","schemes":"bearer"}`), false, nil
	}
	return nil, true, err
}
