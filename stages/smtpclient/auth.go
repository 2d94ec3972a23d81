package smtpclient

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/textproto"
	"time"

	"github.com/emersion/go-sasl"
)

// auth runs the AUTH exchange (RFC 4954) on conn, as go-smtp's Client.Auth
// does, but without its mistake: go-smtp answers any refusal, a final 535
// included, with "*", the cancel that is valid only in reply to a 334
// challenge. Postfix logs that line as a non-SMTP command and answers 221,
// and ban rules (fail2ban, mailcow) then count each failed login twice.
// Here "*" is sent only to cancel after a challenge the client cannot
// answer; a refusal is the end of the exchange. The connection is the one
// go-smtp's client speaks on, which has nothing buffered between commands.
func auth(conn net.Conn, tr *transcript, a sasl.Client, timeout time.Duration) error {
	conn.SetDeadline(time.Now().Add(timeout))
	defer conn.SetDeadline(time.Time{})
	text := textproto.NewConn(tee{Conn: conn, tr: tr})
	enc := base64.StdEncoding
	mech, resp, err := a.Start()
	if err != nil {
		return err
	}
	cmd := "AUTH " + mech
	if len(resp) > 0 {
		cmd += " " + enc.EncodeToString(resp)
	} else if resp != nil {
		cmd += " ="
	}
	if err := text.PrintfLine("%s", cmd); err != nil {
		return err
	}
	for {
		code, msg, err := text.ReadResponse(0)
		if err != nil && code == 0 {
			return err // no reply: the connection failed
		}
		switch code {
		case 235:
			return nil
		case 334:
		default:
			return smtpError(code, msg)
		}
		challenge, err := enc.DecodeString(msg)
		if err == nil {
			resp, err = a.Next(challenge)
		}
		if err != nil {
			// The client cannot go on: cancel, as RFC 4954 says, and
			// read the server's answer to that.
			text.PrintfLine("*")
			text.ReadResponse(0)
			return fmt.Errorf("AUTH %s: %w", mech, err)
		}
		if err := text.PrintfLine("%s", enc.EncodeToString(resp)); err != nil {
			return err
		}
	}
}
