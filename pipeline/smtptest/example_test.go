package smtptest_test

import (
	"fmt"
	"log"
	"strings"

	"github.com/emersion/go-smtp"

	"github.com/smtpq/smtpq/pipeline/smtptest"
)

func Example() {
	srv := smtptest.NewUnstartedServer()
	// Refuse one recipient permanently.
	srv.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
		if p.Step == smtptest.Rcpt && p.Arg == "nobody@example.org" {
			return smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "No such user")
		}
		return smtptest.Fault{}
	}
	if err := srv.Start(); err != nil {
		log.Fatal(err)
	}
	defer srv.Close()

	c, err := smtp.Dial(srv.AddrString())
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("alice@example.org", nil); err != nil {
		log.Fatal(err)
	}
	for _, rcpt := range []string{"bob@example.org", "nobody@example.org"} {
		if err := c.Rcpt(rcpt, nil); err != nil {
			fmt.Println("RCPT", rcpt+":", err)
		}
	}
	w, err := c.Data()
	if err != nil {
		log.Fatal(err)
	}
	if _, err := w.Write([]byte("Subject: hi\r\n\r\nHello, Bob.\r\n")); err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	for _, m := range srv.Messages() {
		fmt.Printf("%s -> %s: %q\n", m.From, strings.Join(m.To, ", "), m.Data)
	}
	// Output:
	// RCPT nobody@example.org: SMTP error 550: No such user
	// alice@example.org -> bob@example.org: "Subject: hi\r\n\r\nHello, Bob.\r\n"
}
