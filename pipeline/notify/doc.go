// Package notify tells senders and applications what became of their
// mail, without polling: delivery status notices to the envelope sender,
// and signed webhook events.
//
// The pipeline gives Notifier.Filing every filing the Archiver is about to
// make (its OnFiling hook) and Notifier.Filed every filing made (OnFiled,
// called after the filing is durable), and runs Notifier.Run beside the
// stages. Filing and Filed do their durable work before they return, on the
// Archiver's goroutine; Run only delivers webhook events.
//
// # Intents: nothing lost between a filing and its telling
//
// Filing prepares what the filing will tell: the event (its id chosen
// then) and the notice (built, sealed and written to the instance's
// notices folder, where the service does not pick it up), and records both
// in an intent, queue_dir/.events/.filing/<instance>/<message id>.json,
// fsynced. Filed completes it after a filing that took place (the notice
// moved into queue_dir, the event recorded in the outbox with the filing's
// path, the intent removed) and drops it after one that failed. Each
// instance holds <instance>.lock while it runs; Open resolves the folders
// of instances whose lock is free (they died): Locate says where each
// message is, and an intent is completed if its filing took place (a
// final one: the message is no longer in the queue; deferred or held: it is
// in that folder) and dropped if not (the message is filed again, and its
// new filing tells). Every step of a completion can be done twice: a
// notice already moved is not there to move again, an event already in the
// outbox is kept as recorded. Without Locate (a stream) every intent is
// completed: at least once.
//
// # Delivery status notices
//
// A notice is an RFC 3464 multipart/report; report-type=delivery-status
// message built with go-message (BuildDSN): a text part for a person, a
// message/delivery-status part (Reporting-MTA, Arrival-Date, and for each
// recipient Final-Recipient, Action, Status, Remote-MTA, Diagnostic-Code)
// and a text/rfc822-headers part with the original header section as it
// was sent: the sealed field is never in it (it is read through
// stages.Job.WriteMessage, which strips it), nor the Bcc fields (removed
// at enqueue time); at most 64 KiB of it, cut at a line end.
//
// A notice is queued as a new queue file (queuefile.EnqueueNullSender),
// so that it gets the queue's retries and filing like any message: with
// the null reverse path (MAIL FROM:<>), to the failed message's sender,
// through the failed message's route: its relay profile by name, or its
// server and login sealed again to the service's key (never written in
// clear); a pickup file's notice goes through default_relay.
//
// Decisions:
//   - A message whose envelope sender is empty (a notice, or any null-sender
//     message) never gets a notice: no notice about a notice, ever.
//   - A failure notice (notify.dsn.failure) is for a message filed in
//     Undeliverable as permanent or expired; one filed as invalid gets
//     none (its seal may not have opened, its sender is not to be trusted,
//     or its route is not allowed).
//   - It lists every recipient the server did not accept: each with its
//     own reply where the server gave one at RCPT, else the message's
//     failure. Status is the reply's enhanced code, else 4.4.7 for an
//     expired message, else 5.0.0 or 4.0.0 after the reply's class.
//     Diagnostic-Code is "smtp; <reply>" for a server's reply and
//     "X-SmtpQ; <step>: <reason>" for smtpq's own (a refused connection).
//   - A delay notice (notify.dsn.delay) is sent once per message, at the
//     first deferral at least notify.delay after the message was first
//     queued (so up to one backoff later than the delay itself), listing
//     the recipients still pending. That it was sent is recorded durably
//     as an empty file named by the message's id in queue_dir/.notify/delayed,
//     removed when the message is filed for good. The notice is queued
//     before the mark is written: a crash between the two can send a
//     second delay notice at the next deferral, never none.
//   - A notice that cannot be queued (the queue's disk full) is logged and
//     dropped: the message's own filing is not held up by its notice.
//   - A notice is written (sealed) before the filing and moved into the
//     queue after it: a crash after the filing queues it at the next start,
//     a crash before drops it (the message's next filing writes another).
//
// # Webhooks
//
// For each outcome (sent, deferred, failed, held) an Event is recorded in
// an outbox, queue_dir/.events/<hook key>/<event id>.json, one file per
// webhook that asked for that event type: written to .events/.tmp,
// fsynced, renamed, and the folder fsynced, before Filed returns. One
// worker per webhook POSTs its events oldest first (ids sort by time), with
// the header X-SmtpQ-Signature: sha256=<hex HMAC-SHA-256 of the body under
// the webhook's secret> and X-SmtpQ-Event-Id, and removes the file after a
// 2xx answer. Any other answer, or none within 30 s, is retried after a
// backoff doubling from 1 s to 10 min; a webhook's events wait behind its
// oldest (in order), other webhooks are not held up. The event id is the
// same in every retry and after a restart: delivery is at least once, and
// a receiver deduplicates on the id.
//
// Decisions:
//   - A filing that failed (the message stays in the queue's working
//     folders and is filed again) makes no event; its later filing does.
//     Parked and returned messages are internal moves and make none.
//   - A crash at any point loses no event: before the filing, the intent is
//     dropped at the next start and the message's new filing tells; after
//     it, the next start tells it (crash point CrashFiled), with the id
//     chosen before the crash; after the record, the outbox has it
//     (CrashRecorded). An event told at a start has no path, and a
//     deferred one no next_attempt: the crash lost what only the filing
//     knew. A deferred or held message that an operator moves while the
//     service is down (retry, release) is not in its folder at the next
//     start: that filing's event is then dropped.
//   - Events carry the queue file's name, the queue id, the Message-ID,
//     the envelope, the SMTP host and port, the failure as the XML log
//     keeps it (class, step, code, enhanced code, text), per-recipient
//     results, attempts and times: never a password, token or user name.
//   - Webhook URLs with a user or password are refused at load; logs name
//     a webhook by its URL without the query.
//   - An outbox file that cannot be read (over 1 MiB: never one smtpq
//     wrote) is renamed <id>.json.bad and logged, so that it does not hold
//     up the events behind it. A webhook that keeps refusing (a 4xx) is
//     retried like one that is down: its events wait on disk.
//   - The outbox folder of a webhook is keyed by its URL: removing a
//     webhook from the configuration leaves its folder (and events) on
//     disk, delivered again if it comes back.
package notify
