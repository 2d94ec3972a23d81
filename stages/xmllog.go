package stages

import (
	"encoding/xml"
	"strings"
	"time"
	"unicode/utf8"
)

// XMLLog is the log filed beside a message in Undeliverable, as
// <name>.xml. It holds no secrets: no password, token or AUTH payload.
type XMLLog struct {
	XMLName           xml.Name     `xml:"smtpqLog"`
	File              string       `xml:"file"`
	ID                string       `xml:"id,omitempty"` // the service's id for the message
	Queued            string       `xml:"queued"`
	Failed            string       `xml:"failed"`
	Attempts          int          `xml:"attempts"`
	Host              string       `xml:"smtpHost,omitempty"`
	Port              int          `xml:"smtpPort,omitempty"`
	TLS               string       `xml:"tls,omitempty"`
	From              string       `xml:"envelope>from"`
	To                []string     `xml:"envelope>to"`
	Size              int64        `xml:"size,omitempty"`
	Failure           XMLFailure   `xml:"failure"`
	Recipients        []XMLRcpt    `xml:"recipients>recipient"`
	History           []XMLAttempt `xml:"history>attempt,omitempty"`
	Transcript        *XMLCData    `xml:"transcript,omitempty"`
	PossibleDuplicate bool         `xml:"possibleDuplicate,omitempty"`
}

// XMLFailure is the reason a message was given up.
type XMLFailure struct {
	Class    string `xml:"class,attr"`
	Code     int    `xml:"code,attr,omitempty"`
	Enhanced string `xml:"enhancedCode,attr,omitempty"`
	Step     string `xml:"step,attr,omitempty"`
	Text     string `xml:",chardata"`
}

// XMLRcpt is one recipient's final status.
type XMLRcpt struct {
	Addr     string `xml:"address,attr"`
	Status   string `xml:"status,attr"`
	Code     int    `xml:"code,attr,omitempty"`
	Enhanced string `xml:"enhancedCode,attr,omitempty"`
	Text     string `xml:",chardata"`
}

// XMLAttempt is one line of history.
type XMLAttempt struct {
	At     string `xml:"at,attr"`
	Result string `xml:",chardata"`
}

// XMLCData is text written as a CDATA section, so that a transcript keeps
// its line breaks readable.
type XMLCData struct {
	Text string `xml:",cdata"`
}

// xmlChar replaces characters that XML 1.0 does not allow with '?'.
func xmlChar(r rune) rune {
	switch {
	case r == '\t' || r == '\n' || r == '\r':
		return r
	case r < 0x20, r == 0xFFFE, r == 0xFFFF, r == utf8.RuneError:
		return '?'
	}
	return r
}

// BuildXMLLog assembles the log of a job given up.
func BuildXMLLog(job *Job, failedAt time.Time) ([]byte, error) {
	l := XMLLog{
		File:              job.Name,
		ID:                job.ID,
		Queued:            job.State.Queued.UTC().Format(time.RFC3339),
		Failed:            failedAt.UTC().Format(time.RFC3339),
		Attempts:          job.State.Attempts,
		Size:              job.Size,
		PossibleDuplicate: job.State.Possible,
	}
	if job.Route.Host != "" {
		l.Host, l.Port, l.TLS = job.Route.Host, job.Route.Port, string(job.Route.TLS)
	}
	l.From = job.Sender
	if job.Params != nil {
		l.To = job.Params.To
	}
	o := job.Outcome
	l.Failure = XMLFailure{Class: string(o.Class)}
	if o.Err != nil {
		l.Failure.Code, l.Failure.Enhanced, l.Failure.Step, l.Failure.Text = o.Err.Code, o.Err.Enhanced, o.Err.Step, o.Err.Text
	}
	// Final status per recipient: done ones, earlier failures, then this
	// attempt's results, and the rest as not attempted.
	seen := map[string]bool{}
	add := func(r RcptResult) {
		if seen[r.Addr] {
			return
		}
		seen[r.Addr] = true
		l.Recipients = append(l.Recipients, XMLRcpt{Addr: r.Addr, Status: string(r.Status), Code: r.Code, Enhanced: r.Enhanced, Text: r.Text})
	}
	for _, a := range job.State.Done {
		add(RcptResult{Addr: a, Status: RcptDelivered, Code: 250})
	}
	for _, r := range o.Rcpts {
		if r.Status == RcptDeferred {
			// Given up: a recipient still deferred has failed.
			r.Status = RcptFailed
		}
		add(r)
	}
	for _, r := range job.State.Failed {
		add(r)
	}
	for _, a := range l.To {
		add(RcptResult{Addr: a, Status: RcptFailed, Text: "not attempted: " + string(o.Class)})
	}
	for _, h := range job.State.History {
		l.History = append(l.History, XMLAttempt{At: h.At.UTC().Format(time.RFC3339), Result: h.Result})
	}
	if o.Transcript != "" {
		// A CDATA section is written as is: characters XML forbids must go.
		l.Transcript = &XMLCData{Text: strings.Map(xmlChar, o.Transcript)}
	}
	b, err := xml.MarshalIndent(l, "", "  ")
	if err != nil {
		return nil, err
	}
	return append([]byte(xml.Header), append(b, '\n')...), nil
}
