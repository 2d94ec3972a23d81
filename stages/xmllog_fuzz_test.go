package stages

import (
	"bytes"
	"encoding/xml"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// FuzzXMLLog feeds hostile text (server replies, addresses, transcripts) to
// the XML log writer: the log must always be well-formed XML whose root is
// smtpqLog, and must keep the failure text readable.
func FuzzXMLLog(f *testing.F) {
	f.Add("user@example.org", "550 no such user", "C: MAIL FROM:<a@b>\nS: 250 ok\n", "mx.example.com")
	f.Add("a\x00b@example.org", "text with ]]> and <tags> & \x01\x02", "]]>]]><![CDATA[", "host")
	f.Add("\xff\xfe@x", "\xed\xa0\x80 surrogate", "line\r\nS: 421 \x1b[31m", "")
	f.Fuzz(func(t *testing.T, rcpt, text, transcript, host string) {
		job := &Job{
			Name:   "20261127T000000.000000000Z-fuzz.eml",
			Route:  Route{Host: host, Port: 25, TLS: queuefile.TLSNone},
			Sender: rcpt,
			Params: &queuefile.Params{To: []string{rcpt, "other@example.org"}},
			State:  State{Queued: time.Unix(0, 0), Attempts: 2, History: []AttemptNote{{At: time.Unix(1, 0), Result: text}}},
			Outcome: Outcome{
				Verdict: Failed, Class: ClassPermanent,
				Err:        &Error{Code: 550, Enhanced: "5.1.1", Step: "rcpt", Text: text},
				Rcpts:      []RcptResult{{Addr: rcpt, Status: RcptFailed, Code: 550, Text: text}},
				Transcript: transcript,
			},
		}
		b, err := BuildXMLLog(job, time.Unix(2, 0))
		if err != nil {
			t.Fatalf("BuildXMLLog: %v", err)
		}
		d := xml.NewDecoder(bytes.NewReader(b))
		var root string
		for {
			tok, err := d.Token()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("not well-formed XML: %v\n%s", err, b)
			}
			if se, ok := tok.(xml.StartElement); ok && root == "" {
				root = se.Name.Local
			}
		}
		if root != "smtpqLog" {
			t.Fatalf("root element %q, want smtpqLog", root)
		}
		var back XMLLog
		if err := xml.Unmarshal(b, &back); err != nil {
			t.Fatalf("does not read back: %v", err)
		}
		if back.Failure.Code != 550 || back.Attempts != 2 {
			t.Fatalf("read back %+v", back.Failure)
		}
		if strings.Count(string(b), "<smtpqLog>") != 1 {
			t.Fatalf("text broke out of its element:\n%s", b)
		}
	})
}
