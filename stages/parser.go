package stages

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"filippo.io/age"
	"go.uber.org/zap"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// Resolver turns sealed parameters into a Route, looking up relay profiles
// in the service configuration. It returns an error naming an unknown
// profile.
type Resolver func(p *queuefile.Params) (Route, error)

// Parser opens each claimed file: it checks the seal and the digest,
// resolves the route and validates everything before any connection is made.
// A file that fails here goes straight to the Archiver as a permanent
// failure of class "invalid", with its reason.
type Parser struct {
	Identities []age.Identity
	Resolve    Resolver
	// Pickup, if set, is the route for pickup-directory files (X-Sender /
	// X-Receiver, pickup_compat); nil refuses them.
	Pickup *Route
	// Settle is how long a file that looks cut short may still be being
	// written in place by a producer (not through enqueue): such a file is
	// parked and looked at again instead of failed. A pickup file (which
	// has no digest to tell it is whole) is sent only once it has not
	// changed for Settle. Default 5s.
	Settle time.Duration
	// MaxInMemory is the largest message (queue file) that is read into
	// memory once, for sending and for the Sent copy, instead of being read
	// from disk three times; default 64 KiB. InMemory bounds the bytes of
	// all messages so held (default 32 MiB); beyond it messages are read
	// from disk as big ones are.
	MaxInMemory int64
	InMemory    int64
	Clock       Clock
	Log         *zap.Logger

	budgetOnce sync.Once
	budget     *memBudget
}

func (p *Parser) memBudget() *memBudget {
	p.budgetOnce.Do(func() {
		n := p.InMemory
		if n <= 0 {
			n = 32 << 20
		}
		p.budget = newMemBudget(n)
	})
	return p.budget
}

// Run reads claimed jobs from in until it is closed, and sends each to out
// (ready to send) or to fail (decided: invalid, expired, parked, already
// accepted). It does not close either channel: fail is shared with other
// stages and out is closed by the caller when Run returns. When ctx is done,
// jobs still arriving are returned to the queue unopened.
func (p *Parser) Run(ctx context.Context, in <-chan *Job, out chan<- *Job, fail chan<- *Job) {
	for job := range in {
		if ctx.Err() != nil {
			job.Outcome = Outcome{Verdict: Returned}
			fail <- job
			continue
		}
		if p.parse(job) {
			select {
			case out <- job:
				continue
			case <-ctx.Done():
				job.Outcome = Outcome{Verdict: Returned}
			}
		}
		fail <- job
	}
}

func (p *Parser) settle() time.Duration {
	if p.Settle <= 0 {
		return 5 * time.Second
	}
	return p.Settle
}

// settling reports whether a file last changed at mod may still be being
// written at now: it changed within the settle time. A time further in the
// future than that is no sign of a writer (a clock set wrong, a touch): it
// does not keep the file waiting.
func (p *Parser) settling(mod, now time.Time) bool {
	age := now.Sub(mod)
	return age < p.settle() && age > -p.settle()
}

// parse fills in the job, or its Outcome; it reports whether the job is ready
// to send.
func (p *Parser) parse(job *Job) bool {
	now := p.Clock.Now()
	if job.State.Accepted {
		// The server accepted this message before a crash: file it as sent,
		// do not send it again.
		job.Outcome = Outcome{Verdict: Sent}
		if err := p.open(job); err != nil {
			job.Kind = KindSealed // best effort: strip the seal if there is one
		}
		return false
	}
	if err := p.open(job); err != nil {
		if errors.Is(err, ErrStorage) {
			// Nothing wrong with the message: read it again later.
			job.dropBody()
			p.Log.Warn("reading a message from the storage failed; trying again soon", zap.String("id", job.ID), zap.String("file", job.Name), zap.Error(err))
			job.Outcome = Outcome{Verdict: Parked, Due: now.Add(30 * time.Second)}
			return false
		}
		var fi os.FileInfo
		if isCutShort(err) || (errors.Is(err, queuefile.ErrTampered) && !headerEnds(job.Msg)) {
			fi, _ = job.Msg.Stat()
		}
		if fi != nil && p.settling(fi.ModTime(), now) {
			job.Outcome = Outcome{Verdict: Parked, Due: now.Add(p.settle())}
			return false
		}
		job.Outcome = Outcome{Verdict: Failed, Class: ClassInvalid, Err: Permanentf("parse", "%v", err)}
		return false
	}
	if job.Kind == KindPickup && job.State.Attempts == 0 {
		// A pickup file has no digest or size to tell a complete one from
		// one still being written in place: it waits until it has not
		// changed for the settle time, as a file that looks cut short does.
		if fi, err := job.Msg.Stat(); err == nil && p.settling(fi.ModTime(), now) {
			job.dropBody()
			job.Outcome = Outcome{Verdict: Parked, Due: now.Add(p.settle())}
			return false
		}
	}
	if job.Params != nil {
		if exp := job.Params.Expires; !exp.IsZero() && now.After(exp) {
			job.Outcome = Outcome{Verdict: Failed, Class: ClassExpired,
				Err: Permanentf("parse", "expired at %s before it could be sent", exp.UTC().Format(time.RFC3339))}
			return false
		}
		if nb := job.Params.NotBefore; !nb.IsZero() && now.Before(nb) {
			job.Outcome = Outcome{Verdict: Parked, Due: nb}
			return false
		}
	}
	job.Pending = pending(job)
	job.ReadyAt = now
	if len(job.Pending) == 0 {
		// Every recipient is done or failed already: file it by what
		// happened to them.
		if len(job.State.Failed) > 0 {
			// Given up on in an earlier attempt whose filing failed: log
			// the server's refusal, not just that nobody is left.
			first := job.State.Failed[0]
			job.Outcome = Outcome{Verdict: Failed, Class: ClassPermanent,
				Err: &Error{Step: "rcpt", Code: first.Code, Enhanced: first.Enhanced, Text: first.Text}}
		} else {
			job.Outcome = Outcome{Verdict: Sent}
		}
		return false
	}
	return true
}

// isCutShort tells errors that a file still being written in place would
// give: no seal yet, part of it, or part of the message. A complete seal that
// does not open (ErrTampered, ErrWrongKey) is final at once; but a seal cut
// after whole base64 lines decodes and then fails as ErrTampered, so that
// error counts as cut short too while the header section has not ended
// (see headerEnds).
func isCutShort(err error) bool {
	return errors.Is(err, queuefile.ErrTruncated) || errors.Is(err, queuefile.ErrNoSeparator) ||
		errors.Is(err, queuefile.ErrNoSeal) || errors.Is(err, queuefile.ErrMalformedSeal) ||
		errors.Is(err, io.ErrUnexpectedEOF)
}

// headerEnds reports whether the message has the empty line that ends a
// header section: a file without one is not complete yet, whatever its
// seal says.
func headerEnds(m Message) bool {
	f, err := m.Open()
	if err != nil {
		return false
	}
	defer f.Close()
	br := bufio.NewReader(f)
	atStart := true
	for {
		line, err := br.ReadSlice('\n')
		if atStart && (string(line) == "\n" || string(line) == "\r\n") {
			return true
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			atStart = false // the rest of a long line
		case err != nil:
			return false
		default:
			atStart = true
		}
	}
}

func (p *Parser) open(job *Job) error {
	fi, err := job.Msg.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%s)", fi.Mode().Type())
	}
	f, err := job.Msg.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	det := &eightBitDetector{}
	var body io.Writer // nil: not kept
	var keep *heldBody
	maxMem := p.MaxInMemory
	if maxMem <= 0 {
		maxMem = 64 << 10
	}
	if fi.Size() <= maxMem {
		if keep = p.memBudget().hold(fi.Size()); keep != nil {
			body = keep
		}
	}
	params, err := queuefile.OpenTo(body, io.TeeReader(f, det), p.Identities...)
	if keep != nil {
		job.dropBody()
		if err == nil && !keep.over {
			job.body = keep
		} else {
			keep.release() // not valid, or it grew since Lstat
		}
	}
	if errors.Is(err, queuefile.ErrNoSeal) && p.Pickup != nil {
		return p.openPickup(job)
	}
	if err != nil {
		return err
	}
	if err := params.Validate(); err != nil {
		return fmt.Errorf("sealed parameters: %w", err)
	}
	route, err := p.Resolve(params)
	if err != nil {
		return err
	}
	job.Kind = KindSealed
	job.Params = params
	job.Route = route
	job.Sender = params.From
	job.Size = params.Size
	job.EightBit = det.found
	job.UTF8 = !isASCII(params.From) || !allASCII(params.To)
	return nil
}

// openPickup reads the message again as a pickup file.
func (p *Parser) openPickup(job *Job) error {
	f, err := job.Msg.Open()
	if err != nil {
		return err
	}
	defer f.Close()
	det := &eightBitDetector{}
	pk, err := queuefile.OpenPickup(io.TeeReader(f, det))
	if errors.Is(err, queuefile.ErrNotPickup) {
		return queuefile.ErrNoSeal
	}
	if err != nil {
		return fmt.Errorf("pickup file: %w", err)
	}
	job.Kind = KindPickup
	job.Route = *p.Pickup
	job.Sender = pk.From
	job.Size = pk.Size
	job.EightBit = det.found
	job.Params = &queuefile.Params{From: pk.From, To: pk.To}
	job.UTF8 = !isASCII(pk.From) || !allASCII(pk.To)
	return nil
}

// pending returns the sealed recipients not yet done or failed.
func pending(job *Job) []string {
	skip := map[string]bool{}
	for _, a := range job.State.Done {
		skip[strings.ToLower(a)] = true
	}
	for _, r := range job.State.Failed {
		skip[strings.ToLower(r.Addr)] = true
	}
	var out []string
	for _, a := range job.Params.To {
		if !skip[strings.ToLower(a)] {
			out = append(out, a)
		}
	}
	return out
}

type eightBitDetector struct{ found bool }

func (d *eightBitDetector) Write(b []byte) (int, error) {
	if !d.found {
		for _, c := range b {
			if c >= 0x80 {
				d.found = true
				break
			}
		}
	}
	return len(b), nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

func allASCII(ss []string) bool {
	for _, s := range ss {
		if !isASCII(s) {
			return false
		}
	}
	return true
}
