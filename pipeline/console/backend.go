package console

import (
	"context"
	"time"

	"github.com/smtpq/smtpq/pipeline/spool"
	"github.com/smtpq/smtpq/stages"
)

// Backend is the queue the console shows and acts on: the directory spool
// now (DirBackend), the whole cluster's stream later. Its methods are
// called concurrently by the HTTP handlers; none may list the whole spool
// for one call (keep an in-memory Index, fed by the pipeline's filings).
type Backend interface {
	// Summary returns the counts per state, the per-host table and the
	// per-minute series of filings.
	Summary() Summary
	// List returns one page of the messages that q selects.
	List(q Query) Page
	// Message returns what the console shows of one message. key is its id
	// or its name; in, for a copy filed under a name (sent,
	// undeliverable), says which folder. A key that is not a message
	// name or id is ErrBadKey; one found nowhere is spool.ErrMessageNotFound.
	Message(key string, in spool.Place) (*Message, error)
	// State returns the current state of a message, "" if it is gone.
	State(key string, in spool.Place) spool.Place
	// Act carries out an operator's action and says what it did.
	Act(ctx context.Context, a Action) Result
}

// Service is what the console shows and asks of the running service,
// beside the queue: its settings, its hosts' limits and sessions, a
// reload. (Lifting a host's pause after a retry is the Backend's:
// DirBackend.LiftPause.)
type Service interface {
	Info() Info
	// Limits returns the connection cap and rate (messages per second, 0:
	// none) for host.
	Limits(host string) (maxConnections int, rate float64)
	// Sessions returns the SMTP sessions open now, by host.
	Sessions() map[string]int
	// Reload reads the configuration file again and applies it, as SIGHUP
	// does; the error lists what does not validate.
	Reload() error
}

// Info is the service's identity and settings on the overview page.
type Info struct {
	Version          string
	Started          time.Time
	ConfigFile       string
	MaxThreads       int
	QueueDir         string
	SentDir          string
	UndeliverableDir string
	DeleteAfterSend  bool
}

// Count is the number of messages in one state and the oldest of them.
type Count struct {
	N      int
	Oldest time.Time // zero: none, or not known (sent)
}

// HostStatus is one row of the per-host table, as the queue knows it.
type HostStatus struct {
	Host        string
	Queued      int       // not yet filed: queued, active, deferred, held
	Deferred    int       // of which deferred
	SentPerMin  float64   // over the last five minutes
	Failures    int       // attempts that failed in a row (transient), 0 after a success
	LastError   string    // the last failure, if any
	LastErrorAt time.Time // when
	PausedUntil time.Time // the service parked its mail until then (paused or saturated)
}

// Summary is the overview's data.
type Summary struct {
	Counts    map[spool.Place]Count // sent: filed today (since midnight, local time)
	Hosts     []HostStatus          // by host name
	Series    *Series
	Unindexed int // queue messages whose host, recipients and subject the console has not read yet
}

// Query selects messages for the queue page.
type Query struct {
	State   spool.Place // "": every state the index holds
	Host    string      // exact, any case
	Rcpt    string      // substring of a recipient or the sender, any case
	Subject string      // substring, any case
	Page    int         // from 0
	PerPage int
}

// Page is one page of a listing.
type Page struct {
	Items []Item
	Total int  // messages matching, on every page
	More  bool // there is a next page
}

// Item is one message as the index knows it.
type Item struct {
	ID       string      // the service's id; "" before a claim or for a copy found on disk
	Name     string      // the producer's file name (or the filed copy's name)
	State    spool.Place // where it is
	Host     string      // SMTP host; "" not known yet
	From     string      // envelope sender
	To       string      // first recipient
	Rcpts    int         // number of recipients
	Subject  string      // "" not known yet
	Queued   time.Time   // enqueued (from the name or the state)
	Attempts int
	Next     time.Time // deferred: next attempt
	LastErr  string
	Path     string // filed copies: where the file is; queue messages: last known path

	seq   uint64 // index change counter when last updated
	scan  uint64 // the last Replace that found it
	known bool   // host, envelope and subject were read
}

// Key is how the console names the message in URLs: its id, or its name.
func (it Item) Key() string {
	if it.ID != "" {
		return it.ID
	}
	return it.Name
}

// Message is what the message page shows.
type Message struct {
	Item
	Port      int
	TLS       string
	Rcpts     []stages.RcptResult // per-recipient status, as far as known
	History   []stages.AttemptNote
	Log       *stages.XMLLog // the XML log (Undeliverable) or the last attempt's (kept in memory)
	LogSource string         // where Log comes from
	Headers   []Header
	Body      string // a text preview, cut at maxPreview
	Cut       bool   // the preview is cut short
	Problem   string // what could not be read, if anything
}

// Header is one header field, decoded for display.
type Header struct{ Name, Value string }

// The operators' actions.
const (
	OpHold    = "hold"
	OpRelease = "release"
	OpRetry   = "retry"
	OpRequeue = "requeue"
	OpPurge   = "purge"
)

// Ops lists the actions in the order the pages show them.
var Ops = []string{OpHold, OpRelease, OpRetry, OpRequeue, OpPurge}

// Action is an operator's request: Op on the messages Keys (with In for
// filed copies), or on every message of Host.
type Action struct {
	Op   string
	Keys []string
	In   spool.Place
	Host string
}

// Result says what an action did, for the page.
type Result struct {
	Done   int      // messages acted on
	Errors []string // one line per message that could not be acted on
}
