package stages

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/pipeline/smtptest"
	"github.com/smtpq/smtpq/stages/smtpclient"
)

func pipeJob(to ...string) *Job {
	body := []byte("Subject: hi\r\n\r\nhello\r\n")
	return &Job{
		Name: "20261127T120000.000000000Z-pipe0000.eml", Kind: KindSealed,
		Sender: "from@example.com", Pending: to, Size: int64(len(body)), body: &heldBody{b: body},
	}
}

func newPipeSender() *Sender {
	return &Sender{HELO: "client.example", Clock: SystemClock{}, Log: zap.NewNop(),
		Timeouts: Timeouts{Command: 5 * time.Second, Data: 5 * time.Second}}
}

// decide turns what the server answered into the recipients' fates, alike
// for a transaction sent one command at a time and a pipelined one (whose
// record may hold replies after a failure: they change nothing).
func TestDecide(t *testing.T) {
	pending := []string{"a@x", "b@x", "c@x"}
	reply := func(step string, code int) *Error {
		return smtpclient.Classify(step, &smtp.SMTPError{Code: code, Message: "text", EnhancedCode: smtp.NoEnhancedCode})
	}
	noReply := func(step string) *Error { return smtpclient.Classify(step, errors.New("EOF")) }
	type want struct {
		verdict Verdict
		step    string // of Outcome.Err, "" for none
		code    int
		rcpts   string // each recipient's status and code
	}
	for _, tc := range []struct {
		name string
		tx   smtpclient.Transaction
		want want
	}{
		{"sent", smtpclient.Transaction{Rcpt: []*Error{nil, nil, nil}, DataAccepted: true},
			want{Sent, "", 0, "delivered 250, delivered 250, delivered 250"}},
		{"one refused, the data accepted", smtpclient.Transaction{Rcpt: []*Error{nil, reply("rcpt", 550), nil}, DataAccepted: true},
			want{Failed, "rcpt", 550, "delivered 250, failed 550, delivered 250"}},
		{"one deferred", smtpclient.Transaction{Rcpt: []*Error{nil, reply("rcpt", 451), reply("rcpt", 550)}, DataAccepted: true},
			want{Deferred, "rcpt", 451, "delivered 250, deferred 451, failed 550"}},
		{"MAIL refused", smtpclient.Transaction{Mail: reply("mail", 553)},
			want{Failed, "mail", 553, "failed 553, failed 553, failed 553"}},
		{"MAIL without a reply", smtpclient.Transaction{Mail: noReply("mail"), Broken: true},
			want{Deferred, "mail", 0, "deferred 0, deferred 0, deferred 0"}},
		{"MAIL refused, RCPTs answered (pipelined)", smtpclient.Transaction{Mail: reply("mail", 553), Rcpt: []*Error{reply("rcpt", 503), reply("rcpt", 503), reply("rcpt", 503)}, Data: reply("data", 503)},
			want{Failed, "mail", 553, "failed 553, failed 553, failed 553"}},
		{"MAIL refused, then no reply (pipelined)", smtpclient.Transaction{Mail: reply("mail", 553), Rcpt: []*Error{reply("rcpt", 503), noReply("rcpt")}, Broken: true},
			want{Failed, "mail", 553, "failed 553, failed 553, failed 553"}},
		{"every RCPT refused", smtpclient.Transaction{Rcpt: []*Error{reply("rcpt", 550), reply("rcpt", 550), reply("rcpt", 551)}},
			want{Failed, "rcpt", 550, "failed 550, failed 550, failed 551"}},
		{"every RCPT refused, DATA refused (pipelined)", smtpclient.Transaction{Rcpt: []*Error{reply("rcpt", 550), reply("rcpt", 550), reply("rcpt", 550)}, Data: reply("data", 554)},
			want{Failed, "rcpt", 550, "failed 550, failed 550, failed 550"}},
		{"every RCPT refused, DATA without a reply (pipelined)", smtpclient.Transaction{Rcpt: []*Error{reply("rcpt", 550), reply("rcpt", 550), reply("rcpt", 550)}, Data: noReply("data"), Broken: true},
			want{Failed, "rcpt", 550, "failed 550, failed 550, failed 550"}},
		{"no reply at the second RCPT", smtpclient.Transaction{Rcpt: []*Error{nil, noReply("rcpt")}, Broken: true},
			want{Deferred, "rcpt", 0, "deferred 0, deferred 0, deferred 0"}},
		{"421 at the third RCPT after a refusal", smtpclient.Transaction{Rcpt: []*Error{reply("rcpt", 550), nil, reply("rcpt", 421)}, Broken: true},
			want{Deferred, "rcpt", 421, "failed 550, deferred 421, deferred 421"}},
		{"DATA refused", smtpclient.Transaction{Rcpt: []*Error{nil, reply("rcpt", 550), nil}, Data: reply("data", 451)},
			want{Deferred, "data", 451, "deferred 451, failed 550, deferred 451"}},
		{"DATA without a reply", smtpclient.Transaction{Rcpt: []*Error{nil, reply("rcpt", 550), nil}, Data: noReply("data"), Broken: true},
			want{Deferred, "data", 0, "deferred 0, failed 550, deferred 0"}},
		{"the data refused", smtpclient.Transaction{Rcpt: []*Error{nil, nil, reply("rcpt", 550)}, Dot: reply("data", 554)},
			want{Failed, "data", 554, "failed 554, failed 554, failed 550"}},
		{"no reply to the data", smtpclient.Transaction{Rcpt: []*Error{nil, nil, nil}, Dot: noReply("data"), NoReply: true, Broken: true},
			want{Deferred, "data", 0, "deferred 0, deferred 0, deferred 0"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := decide(pending, &tc.tx)
			var got []string
			for i, r := range o.Rcpts {
				if r.Addr != pending[i] {
					t.Fatalf("recipient %d is %s, want %s", i, r.Addr, pending[i])
				}
				got = append(got, string(r.Status)+" "+itoa(r.Code))
			}
			if !o.Attempted || o.Verdict != tc.want.verdict || strings.Join(got, ", ") != tc.want.rcpts {
				t.Fatalf("verdict %v, recipients %q; want %v, %q", o.Verdict, strings.Join(got, ", "), tc.want.verdict, tc.want.rcpts)
			}
			switch {
			case tc.want.step == "" && o.Err != nil:
				t.Fatalf("error %v, want none", o.Err)
			case tc.want.step != "" && (o.Err == nil || o.Err.Step != tc.want.step || o.Err.Code != tc.want.code):
				t.Fatalf("error %v, want %d at %s", o.Err, tc.want.code, tc.want.step)
			}
			if (o.Verdict == Failed) != (o.Class == ClassPermanent) {
				t.Fatalf("verdict %v with class %q", o.Verdict, o.Class)
			}
		})
	}
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

// A delivery decides alike whether its commands are pipelined or not, and
// the crash points fire at the same moments: after MAIL, after the dot, and
// after the acceptance is recorded.
func TestDeliverBothWays(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, noPipelining := range []bool{false, true} {
		name := "pipelined"
		if noPipelining {
			name = "one at a time"
		}
		t.Run(name, func(t *testing.T) {
			srv := smtptest.NewServer(t, func(s *smtptest.Server) {
				s.Fault = func(p smtptest.FaultPoint) smtptest.Fault {
					if p.Step == smtptest.Rcpt && p.Arg == "bad@example.org" {
						return smtptest.Reply(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
					}
					if p.Step == smtptest.Mail && p.Arg == "refused@example.com" {
						return smtptest.Reply(553, smtp.EnhancedCode{5, 1, 8}, "bad sender")
					}
					return smtptest.Fault{}
				}
			})
			s := newPipeSender()
			s.NoPipelining = noPipelining
			var points []string
			s.Crash = func(p string) { points = append(points, p) }
			recorded := 0
			s.Accepted = func(*Job) error { recorded++; return nil }
			sess, e := s.open(context.Background(), Route{Host: srv.Host(), Port: srv.Port(), TLS: queuefile.TLSNone})
			if e != nil {
				t.Fatal(e)
			}
			defer sess.Close(true)
			if sess.Pipelined() == noPipelining {
				t.Fatalf("pipelined: %v", sess.Pipelined())
			}
			job := pipeJob("a@example.org", "bad@example.org")
			if broken := s.deliver(sess, job); broken {
				t.Fatalf("session broken: %+v", job.Outcome)
			}
			o := job.Outcome
			if len(o.Rcpts) != 2 || o.Rcpts[0].Status != RcptDelivered || o.Rcpts[0].Code != 250 ||
				o.Rcpts[1].Status != RcptFailed || o.Rcpts[1].Code != 550 || o.Rcpts[1].Enhanced != "5.1.1" {
				t.Fatalf("recipients %+v, want a delivered, bad refused with 550 5.1.1", o.Rcpts)
			}
			if want := []string{"after-mail", "after-dot", "after-record"}; !slices.Equal(points, want) || recorded != 1 {
				t.Fatalf("crash points %q, acceptance recorded %d times; want %q, once", points, recorded, want)
			}
			if msgs := srv.Messages(); len(msgs) != 1 || !slices.Equal(msgs[0].To, []string{"a@example.org"}) {
				t.Fatalf("the server has %+v, want one message to a@example.org", msgs)
			}

			// A refused sender: no crash point, nothing recorded, the
			// session kept.
			points, recorded = nil, 0
			job = pipeJob("a@example.org")
			job.Sender = "refused@example.com"
			if broken := s.deliver(sess, job); broken {
				t.Fatal("session broken by a refused sender")
			}
			if o := job.Outcome; o.Verdict != Failed || o.Err == nil || o.Err.Step != "mail" || o.Err.Code != 553 || len(points) != 0 || recorded != 0 {
				t.Fatalf("outcome %+v, crash points %q, recorded %d; want 553 at mail, neither", o, points, recorded)
			}
		})
	}
}
