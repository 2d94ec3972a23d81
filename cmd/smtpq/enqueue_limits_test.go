package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// manyRecipientsMessage returns a message whose To field holds n addresses:
// fine as a header field, but too many to seal.
func manyRecipientsMessage(n int) string {
	var b strings.Builder
	b.WriteString("From: app@example.com\nTo: r000000@example.org")
	for i := 1; i < n; i++ {
		fmt.Fprintf(&b, ",\n r%06d@example.org", i)
	}
	b.WriteString("\nSubject: newsletter\n\nbody\n")
	return b.String()
}

// TestEnqueueCommandsRefuseWhatTheServiceRefuses: a message with more
// recipients than fit in a seal (the service refuses a sealed field over
// queuefile.MaxFieldSize) is refused by both commands, with one line that
// names the limit and the recipient count, and nothing is queued.
func TestEnqueueCommandsRefuseWhatTheServiceRefuses(t *testing.T) {
	e := newEnv(t, true)
	msg := manyRecipientsMessage(11_000)
	limit := strconv.Itoa(queuefile.MaxFieldSize)
	for _, tc := range []struct {
		name string
		run  func() (int, string, string)
		code int
		want []string
	}{
		{"enqueue, recipients from To", func() (int, string, string) { return e.smtpq(msg, "enqueue") },
			exitFailure, []string{"11000 recipients", limit, "too large"}},
		{"sendmail -t", func() (int, string, string) { return e.sendmail(msg, "-t") },
			exDataErr, []string{"11000 recipients", limit, "too large"}},
		{"enqueue, recipient not UTF-8", func() (int, string, string) {
			return e.smtpq("From: app@example.com\nSubject: x\n\nbody\n", "enqueue", "--to", "b\xffb@example.org")
		}, exitFailure, []string{"recipient", "UTF-8"}},
		{"sendmail, recipient not UTF-8", func() (int, string, string) {
			return e.sendmail("From: app@example.com\nSubject: x\n\nbody\n", "b\xffb@example.org")
		}, exDataErr, []string{"recipient", "UTF-8"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.t = t
			code, out, stderr := tc.run()
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", code, tc.code, stderr)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not mention %q", stderr, w)
				}
			}
			if out != "" {
				t.Errorf("stdout %q", out)
			}
			if q := e.queued(); len(q) != 0 {
				t.Errorf("queued: %q", q)
			}
		})
	}
	e.t = t
}
