package notify

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// DelayedDir is the folder, under queue_dir, of the delay-notice marks:
// an empty file named by the message's id once its delay notice is queued.
const DelayedDir = ".notify/delayed"

// noticeFor returns the recipients a notice about filing f lists, and
// whether it is a delay notice; none if the filing calls for no notice.
func (n *Notifier) noticeFor(f stages.Filed) ([]Recipient, bool) {
	j := f.Job
	if j.Sender == "" || j.Params == nil {
		// Never a notice about a notice (or any null-sender message);
		// and a file whose seal was not opened names no sender to trust.
		return nil, false
	}
	switch {
	case f.Verdict == stages.Failed && n.Failure && j.Outcome.Class != stages.ClassInvalid:
		return failedRecipients(j), false
	case f.Verdict == stages.Deferred && n.Delay > 0 && n.now().Sub(j.State.Queued) >= n.Delay && !n.delayNoted(j.ID):
		return delayedRecipients(j), true
	}
	return nil, false
}

// stageNotice builds a notice to j's sender, through j's route, and
// writes it sealed to q (where the service does not pick it up), and
// returns its name, or "" if it could not be written (logged: the
// message's own filing is not held up by its notice).
func (n *Notifier) stageNotice(q *queuefile.Queue, j *stages.Job, rcpts []Recipient, hdr func() []byte) string {
	r := &Report{
		ReportingMTA: n.ReportingMTA, To: j.Sender, Arrival: j.State.Queued, Now: n.now(),
		Name: j.Name, Recipients: rcpts, Headers: hdr(),
	}
	msg, err := BuildDSN(r)
	if err == nil {
		var name string
		if name, err = q.EnqueueNullSender(msg, noticeParams(j, n.DefaultRelay)); err == nil {
			return name
		}
	}
	n.Log.Error("writing a delivery status notice", zap.String("id", j.ID), zap.String("file", j.Name), zap.Error(err))
	return ""
}

// noticeParams are the sealed parameters of a notice about j: j's own
// route (its relay profile by name, or its server and login, sealed again
// to the service's key, never written in clear), the null sender, and j's
// sender as the one recipient. A pickup file's route is default_relay.
func noticeParams(j *stages.Job, defaultRelay string) queuefile.Params {
	p := queuefile.Params{To: []string{j.Sender}}
	if j.Kind == stages.KindPickup {
		p.Relay = defaultRelay
		return p
	}
	s := j.Params
	p.Relay, p.Host, p.Port, p.TLS, p.HELO = s.Relay, s.Host, s.Port, s.TLS, s.HELO
	p.Username, p.Password, p.OAuth2Token = s.Username, s.Password, s.OAuth2Token
	return p
}

// failedRecipients lists the recipients of a message given up that did not
// get it: each with its own reply if the server gave one, else the
// message's failure.
func failedRecipients(j *stages.Job) []Recipient {
	byAddr := map[string]stages.RcptResult{}
	for _, r := range j.Outcome.Rcpts {
		if r.Status != stages.RcptDelivered {
			byAddr[strings.ToLower(r.Addr)] = r
		}
	}
	for _, r := range j.State.Failed {
		byAddr[strings.ToLower(r.Addr)] = r
	}
	return undelivered(j, ActionFailed, byAddr)
}

// delayedRecipients lists the recipients of a deferred message still to be
// sent: neither accepted nor failed for good.
func delayedRecipients(j *stages.Job) []Recipient {
	byAddr := map[string]stages.RcptResult{}
	for _, r := range j.Outcome.Rcpts {
		if r.Status == stages.RcptDeferred {
			byAddr[strings.ToLower(r.Addr)] = r
		}
	}
	failed := map[string]bool{}
	for _, r := range j.State.Failed {
		failed[strings.ToLower(r.Addr)] = true
	}
	var out []Recipient
	for _, r := range undelivered(j, ActionDelayed, byAddr) {
		if !failed[strings.ToLower(r.Addr)] {
			out = append(out, r)
		}
	}
	return out
}

// undelivered returns a Recipient for each envelope recipient of j the
// server has not accepted, in envelope order.
func undelivered(j *stages.Job, a Action, byAddr map[string]stages.RcptResult) []Recipient {
	done := map[string]bool{}
	for _, d := range j.State.Done {
		done[strings.ToLower(d)] = true
	}
	var out []Recipient
	for _, addr := range j.Params.To {
		k := strings.ToLower(addr)
		if done[k] {
			continue
		}
		done[k] = true // once each
		rc := Recipient{Addr: addr, Action: a, RemoteMTA: j.Route.Host}
		if r, ok := byAddr[k]; ok && (r.Code != 0 || r.Text != "") {
			setReply(&rc, r.Code, r.Enhanced, "rcpt", r.Text, j.Outcome.Class)
		} else if e := j.Outcome.Err; e != nil {
			setReply(&rc, e.Code, e.Enhanced, e.Step, e.Text, j.Outcome.Class)
		} else {
			setReply(&rc, 0, "", "local", "not delivered", j.Outcome.Class)
		}
		out = append(out, rc)
	}
	return out
}

var enhancedCode = regexp.MustCompile(`^[245]\.\d{1,3}\.\d{1,3}$`)

// setReply fills in rc's status and diagnostic from a reply (code,
// enhanced code, text) or, with no code, smtpq's reason (step: text).
func setReply(rc *Recipient, code int, enhanced, step, text string, class stages.Class) {
	switch {
	case enhancedCode.MatchString(enhanced):
		rc.Status = enhanced
	case class == stages.ClassExpired:
		rc.Status = "4.4.7" // RFC 3463: delivery time expired
	case code >= 500 && code < 600:
		rc.Status = "5.0.0"
	case code >= 400 || rc.Action == ActionDelayed:
		rc.Status = "4.0.0"
	default:
		rc.Status = "5.0.0"
	}
	if code != 0 {
		rc.FromServer = true
		rc.Diagnostic = strings.TrimSpace(fmt.Sprintf("%d %s %s", code, enhanced, text))
		rc.Diagnostic = strings.Join(strings.Fields(rc.Diagnostic), " ")
		return
	}
	rc.Diagnostic = step + ": " + text
}

func (n *Notifier) markPath(id string) string {
	return filepath.Join(n.QueueDir, DelayedDir, filepath.Base(id))
}

func (n *Notifier) delayNoted(id string) bool {
	_, err := os.Lstat(n.markPath(id))
	return err == nil
}

// noteDelay records durably that the delay notice of message id is
// queued. The notice is queued first: a crash between the two can send a
// second delay notice (at the next deferral), never none.
func (n *Notifier) noteDelay(id string) {
	p := n.markPath(id)
	err := queuefile.WriteFileSync(p, nil)
	if err == nil {
		err = queuefile.SyncDir(filepath.Dir(p))
	}
	if err != nil {
		n.Log.Error("recording the delay notice: another may be sent", zap.String("id", id), zap.Error(err))
	}
}

// forgetDelay removes a message's delay mark, once it is filed for good.
func (n *Notifier) forgetDelay(id string) {
	if err := os.Remove(n.markPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		n.Log.Warn("removing a delay-notice mark", zap.String("id", id), zap.Error(err))
	}
}
