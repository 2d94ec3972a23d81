// Package stages holds the five stages of smtpq's pipeline and the values
// that travel between them:
//
//	Scanner -> Parser -> Dispatcher -> Sender -> Archiver
//
// Each stage is a type whose Run method reads one typed channel and writes
// another; the stage that writes a channel closes it (where several stages
// write one channel, the pipeline closes it once they have all returned). A
// *Job is owned by exactly one stage at a time: passing it on a channel hands
// it over. Failures are values (an Outcome on the Job) that travel to the
// Archiver, so every claimed file ends filed somewhere, never dropped.
//
// The Sender pulls work instead of being pushed: each Sender worker sends the
// Dispatcher a Request carrying the route of its open SMTP session and the
// health of the host it last talked to, and the Dispatcher, which owns all
// per-host state (queues, connection counts, rate limiters, circuit breakers),
// answers with the next job for that session, or tells it to close the
// session or stop.
//
// The stages keep nothing on disk themselves. A storage backend hands the
// Scanner claimed jobs (Source) and takes them back from the Archiver, filed
// (Sink); the Message on each Job is the storage's handle on it (see
// storage.go). The directory spool, package pipeline/spool, is the storage
// today. The Sender speaks SMTP through package stages/smtpclient and keeps
// only the decisions: which job on which session, and what the server's
// replies mean for each recipient. See package pipeline for how the stages
// and the spool are wired.
package stages
