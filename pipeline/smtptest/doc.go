// Package smtptest provides a fake SMTP server for tests, as net/http/httptest
// does for HTTP.
//
// A [Server] listens on a loopback address (127.0.0.1:0 by default; it
// refuses any other), speaks SMTP through github.com/emersion/go-smtp's
// server, and records in memory every message it accepts. Its Fault field
// scripts failures: it is consulted at every [Step] of every session and can
// answer with an SMTP error, drop the connection without a reply, or stall.
//
//	func TestDeliver(t *testing.T) {
//		srv := smtptest.NewServer(t, func(s *smtptest.Server) {
//			// Refuse the first attempt at bob, accept everything else.
//			s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
//				if p.Step == smtptest.Rcpt && p.Arg == "bob@example.org" && p.Session == 1 {
//					return smtptest.Reply(451, smtp.EnhancedCode{4, 2, 1}, "Try later")
//				}
//				return smtptest.Fault{}
//			}
//		})
//
//		deliver(t, srv.AddrString()) // the code under test
//
//		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
//		defer cancel()
//		msgs, err := srv.WaitMessages(ctx, 1)
//		if err != nil {
//			t.Fatal(err)
//		}
//		if got := msgs[0].To; !slices.Equal(got, []string{"bob@example.org"}) {
//			t.Errorf("recipients = %q", got)
//		}
//	}
//
// NewServer closes the server when the test ends. Close ends stalls,
// closes every connection and waits for all of the server's goroutines, so
// a test using go.uber.org/goleak stays clean.
//
// # Where faults apply
//
// go-smtp decides some things before the backend is asked, and smtptest
// works around them as follows:
//
//   - Greeting: go-smtp writes the 220 banner itself and only calls the
//     backend at EHLO/HELO, so smtptest applies the Greeting step before
//     handing the connection to go-smtp. An Err replaces the banner; the
//     server then answers 503 to everything but QUIT.
//   - Hello: an error returned by go-smtp's Backend.NewSession is sent as
//     the reply to EHLO/HELO (451 4.0.0 for errors that are not
//     *smtp.SMTPError), and the client may say hello again, which consults
//     Fault again. Note that go-smtp's client falls back to HELO when EHLO
//     gets 500 or 502.
//   - Data: go-smtp sends 354 before the backend sees the message, so an
//     Err at Data is the reply to the final dot.
//   - Reset: go-smtp cannot fail RSET, so an Err is written by smtptest
//     and the connection closed.
//   - Quit: go-smtp answers QUIT on its own; smtptest recognises its reply
//     on the wire, which only works without TLS.
//
// A Drop closes the TCP connection at once: the client sees EOF or a reset
// connection, never a reply. In particular a Drop at AfterDot loses a
// message that was completely transmitted, and it is not recorded.
//
// A Raw fault writes whatever bytes it is given instead of the reply, at
// any speed (Trickle), and then closes the connection: binary noise, an
// overlong line, a multi-line reply that never ends ([Repeat]).
//
// # TLS
//
// [SelfSigned] makes a certificate for the server's TLSConfig and a pool
// for the client's RootCAs:
//
//	cert, pool, err := smtptest.SelfSigned("127.0.0.1")
//	...
//	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
//	c, err := smtp.DialStartTLS(srv.AddrString(), &tls.Config{RootCAs: pool})
package smtptest
