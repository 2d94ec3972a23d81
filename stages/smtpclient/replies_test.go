package smtpclient

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// flood is what a hostile server sends in place of a reply: up to 8 MiB
// (far past every bound, and every socket buffer) of b over and over.
func flood(c net.Conn, b string) {
	chunk := []byte(strings.Repeat(b, 64<<10/len(b)+1))
	for sent := 0; sent < 8<<20; sent += len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			return
		}
	}
}

// noise is random bytes without a line feed.
func noise() string {
	rng := rand.New(rand.NewPCG(10, 10))
	b := make([]byte, 4096)
	for i := range b {
		for b[i] = byte(rng.UintN(256)); b[i] == '\n'; b[i] = byte(rng.UintN(256)) {
		}
	}
	return string(b)
}

// lineLimit and replyLimit are what the errors say of the bounds.
var (
	lineLimit  = "reply line over " + strconv.Itoa(MaxReplyLine) + " bytes"
	replyLimit = "reply over " + strconv.Itoa(MaxReply) + " bytes"
)

// wantBounded checks that e is a temporary failure at step naming the limit,
// and that neither its text nor the transcript grew with what the server
// sent.
func wantBounded(t *testing.T, e *Error, transcript, step, limit string) {
	t.Helper()
	if e == nil || !e.Temporary || e.Step != step || !strings.Contains(e.Text, limit) {
		t.Fatalf("error %v, want a temporary failure at %s saying %q", e, step, limit)
	}
	if len(e.Text) > MaxErrorText+64 {
		t.Errorf("error text of %d bytes", len(e.Text))
	}
	if len(transcript) > maxTranscript+64 {
		t.Errorf("transcript of %d bytes", len(transcript))
	}
}

// Each reader of a session's replies, ours and go-smtp's, stops at the
// bound on a reply line and on a reply, with an error naming it; the
// server's flood is never kept whole.
func TestRepliesAreBounded(t *testing.T) {
	defer goleak.VerifyNone(t)
	ehloThen := func(reply string) func(c net.Conn, r *bufio.Reader) {
		return func(c net.Conn, r *bufio.Reader) {
			c.Write([]byte("220 ok ESMTP\r\n"))
			r.ReadString('\n')
			flood(c, reply)
		}
	}
	for _, tc := range []struct {
		name  string
		tls   queuefile.TLSMode
		serve func(c net.Conn, r *bufio.Reader)
		step  string
		limit string
	}{
		{"greeting line without end", queuefile.TLSNone, func(c net.Conn, _ *bufio.Reader) { c.Write([]byte("220 ")); flood(c, "x") }, "greeting", lineLimit},
		{"binary noise for a greeting", queuefile.TLSNone, func(c net.Conn, _ *bufio.Reader) { flood(c, noise()) }, "greeting", lineLimit},
		{"greeting that never ends", queuefile.TLSNone, func(c net.Conn, _ *bufio.Reader) { flood(c, "220-more\r\n") }, "greeting", replyLimit},
		{"EHLO reply that never ends", queuefile.TLSNone, ehloThen("250-more\r\n"), "ehlo", replyLimit},
		{"EHLO reply line without end", queuefile.TLSNone, ehloThen("250-" + strings.Repeat("x", 100)), "ehlo", lineLimit},
		{"greeting that never ends, starttls", queuefile.TLSStartTLS, func(c net.Conn, _ *bufio.Reader) { flood(c, "220-more\r\n") }, "greeting", replyLimit},
		{"EHLO reply that never ends, starttls", queuefile.TLSStartTLS, ehloThen("250-more\r\n"), "ehlo", replyLimit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, got := oneConnServer(t, func(c net.Conn) []string {
				tc.serve(c, bufio.NewReader(c))
				return nil
			})
			cfg := testConfig(addr)
			cfg.TLS = tc.tls
			sess, e := Dial(context.Background(), cfg)
			if e == nil {
				sess.Close(false)
			}
			var tr string
			if sess != nil {
				tr = sess.Transcript()
			}
			wantBounded(t, e, tr, tc.step, tc.limit)
			<-got
		})
	}
}

// The replies to a pipelined group are bounded one by one: a RCPT reply
// that never ends fails the transaction there, and breaks the session.
func TestPipelinedReplyIsBounded(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, tc := range []struct{ name, flood, limit string }{
		{"never ends", "250-more\r\n", replyLimit},
		{"line without end", "x", lineLimit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr, got := oneConnServer(t, func(c net.Conn) []string {
				answerLines(c, func(l string) (string, bool) {
					switch {
					case strings.HasPrefix(l, "EHLO"):
						return "250-ok\r\n250 PIPELINING\r\n", false
					case strings.HasPrefix(l, "DATA"):
						c.Write([]byte("250 sender ok\r\n250 first ok\r\n250-"))
						flood(c, tc.flood)
						return "", true
					}
					return "", false
				})
				return nil
			})
			sess := pipeSession(t, testConfig(addr))
			tx := sess.Send(testMessage("a@example.org", "b@example.org", "c@example.org"))
			if !tx.Broken {
				t.Error("the session was kept after a reply over the bound")
			}
			sess.Close(false)
			wantAccepted(t, "MAIL", tx.Mail)
			if len(tx.Rcpt) != 2 || tx.Rcpt[0] != nil {
				t.Fatalf("RCPT replies %v, want the first accepted, the second over the bound, no more", tx.Rcpt)
			}
			wantBounded(t, tx.Rcpt[1], sess.Transcript(), "rcpt", tc.limit)
			if tx.Data != nil || tx.Dot != nil || tx.DataAccepted {
				t.Errorf("transaction %+v went on after the session broke", tx)
			}
			<-got
		})
	}
}

// The limiter passes replies within the bounds untouched, whatever the
// reads' sizes, and counts a reply's lines together.
func TestReplyLimiter(t *testing.T) {
	long := "250-" + strings.Repeat("x", MaxReplyLine-6) + "\r\n" // exactly MaxReplyLine
	var ok strings.Builder
	for ok.Len()+len(long) < MaxReply {
		ok.WriteString(long)
	}
	ok.WriteString("250 last\r\n")
	within := ok.String() + ok.String() // two replies, each within MaxReply
	for _, tc := range []struct {
		name, in string
		err      string
	}{
		{"within", within, ""},
		{"line over", "220 " + strings.Repeat("x", MaxReplyLine-5) + "\r\n", lineLimit},
		{"reply over", strings.Repeat(long, MaxReply/len(long)+1) + "250 last\r\n", replyLimit},
		{"short lines end replies", strings.Repeat("2\r\n", MaxReply), ""},
		{"closed mid-line", "250 ok\r\n250 cut sh", "unexpected EOF"},
	} {
		for _, size := range []int{1, 7, 4096} {
			t.Run(tc.name+"/"+strconv.Itoa(size), func(t *testing.T) {
				l := limitReplies(&readConn{r: strings.NewReader(tc.in)})
				var got bytes.Buffer
				buf := make([]byte, size)
				var err error
				for err == nil {
					var n int
					n, err = l.Read(buf)
					got.Write(buf[:n])
				}
				if tc.err == "" {
					if err != io.EOF || got.String() != tc.in {
						t.Fatalf("read %d of %d bytes, then %v", got.Len(), len(tc.in), err)
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one saying %q", err, tc.err)
				}
				// Only complete lines are passed on: bufio would take the
				// start of a line, followed by an error, for a whole line.
				if p := got.String(); len(p) > MaxReply || !strings.HasPrefix(tc.in, p) || (p != "" && !strings.HasSuffix(p, "\n")) {
					t.Fatalf("passed on %d bytes, ending %q", got.Len(), p[max(0, len(p)-10):])
				}
				if n, err2 := l.Read(buf); n != 0 || err2 != err {
					t.Fatalf("read after the error: %d, %v", n, err2)
				}
			})
		}
	}
}

// readConn is a net.Conn that reads from r.
type readConn struct {
	net.Conn
	r io.Reader
}

func (c *readConn) Read(b []byte) (int, error)       { return c.r.Read(b) }
func (c *readConn) SetDeadline(time.Time) error      { return nil }
func (c *readConn) SetReadDeadline(time.Time) error  { return nil }
func (c *readConn) SetWriteDeadline(time.Time) error { return nil }

func TestClip(t *testing.T) {
	if got := Clip("short", 10); got != "short" {
		t.Fatal(got)
	}
	got := Clip(strings.Repeat("é", 10), 5) // 20 bytes; byte 5 is inside a rune
	if got != "éé [16 bytes cut]" {
		t.Fatalf("%q", got)
	}
}

// A server that stops reading the message data (its window full, the
// client's writes blocked) fails the attempt at the data timeout, one
// command at a time as with PIPELINING: the timeout bounds sending the
// data and the reply to the final dot together.
func TestStalledDataTimesOut(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, pipelined := range []bool{false, true} {
		t.Run("pipelined="+strconv.FormatBool(pipelined), func(t *testing.T) {
			release := make(chan struct{})
			addr, got := oneConnServer(t, func(c net.Conn) []string {
				c.(*net.TCPConn).SetReadBuffer(4096)
				answerLines(c, func(l string) (string, bool) {
					switch {
					case strings.HasPrefix(l, "EHLO") && pipelined:
						return "250-ok\r\n250 PIPELINING\r\n", false
					case strings.HasPrefix(l, "DATA") && pipelined:
						c.Write([]byte("250 ok\r\n250 ok\r\n354 go on\r\n"))
					case strings.HasPrefix(l, "DATA"):
						c.Write([]byte("354 go on\r\n"))
					case strings.HasPrefix(l, "MAIL") && pipelined, strings.HasPrefix(l, "RCPT") && pipelined:
						return "", false
					default:
						return "250 ok\r\n", false
					}
					<-release // and read no more
					return "", true
				})
				return nil
			})
			cfg := testConfig(addr)
			cfg.Timeouts.Data = 500 * time.Millisecond
			cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, network, addr)
				if err == nil {
					c.(*net.TCPConn).SetWriteBuffer(4096)
				}
				return c, err
			}
			sess, e := Dial(context.Background(), cfg)
			if e != nil {
				t.Fatal(e)
			}
			if sess.Pipelined() != pipelined {
				t.Fatalf("pipelined session: %v", sess.Pipelined())
			}
			env, msg := testMessage("a@example.org")
			msg = memMessage(bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef012345678\r\n"), 64<<10)) // 3.75 MiB
			env.Size = int64(len(msg.Bytes))
			done := make(chan *Transaction, 1)
			go func() { done <- sess.Send(env, msg) }()
			var tx *Transaction
			select {
			case tx = <-done:
				if !tx.Broken {
					t.Error("the session was kept after the data timed out")
				}
			case <-time.After(10 * time.Second):
				t.Error("still sending the data 10s after the data timeout (500ms)")
				sess.Close(false) // fails the blocked write
				tx = <-done
			}
			close(release)
			sess.Close(false)
			<-got
			if e := tx.Dot; e == nil || !e.Temporary || e.Step != "data" || !strings.Contains(e.Text, "timeout") || !tx.NoReply {
				t.Fatalf("error %v (no reply: %v), want a temporary timeout at data, without a reply", e, tx.NoReply)
			}
		})
	}
}

// answerLines greets the client with 220 and then reads its commands a
// line at a time, writing the reply answer gives to each, until answer
// says to stop or the client goes away.
func answerLines(c net.Conn, answer func(line string) (reply string, stop bool)) {
	c.Write([]byte("220 ok ESMTP\r\n"))
	r := bufio.NewReader(c)
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			return
		}
		reply, stop := answer(l)
		c.Write([]byte(reply))
		if stop {
			return
		}
	}
}
