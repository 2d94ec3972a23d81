// Package spool is smtpq's directory store: the queue folder where producers
// drop sealed files, its hidden working folders, and the Sent and
// Undeliverable folders. It is the storage behind the stages (package
// stages): a *Spool is a stages.Source for the Scanner and a stages.Sink for
// the Archiver, and the stages.Message it hands out with each claimed job is
// its handle on that job's file.
//
// The layout under queue_dir:
//
//	queue_dir/*.eml                  dropped by producers (a rename from .tmp/)
//	queue_dir/.active/<instance>/    claimed by a running instance, with its lock and journal
//	queue_dir/.ready/                has an id, to be sent now (returned, recovered, released)
//	queue_dir/.deferred/<due time>/  waiting for a retry, one folder per second
//	queue_dir/.hold/                 held by the operator
//	queue_dir/.state/<id>.json       delivery state of messages that have one
//	queue_dir/.control/              operator instructions for the running service
//	queue_dir/.pool/<instance>/      filed queue copies kept for their inodes
//
// What it guarantees: a message moves between folders only by renames on one
// filesystem, so it is never lost or doubled; every new copy (Sent,
// Undeliverable, a state file) is durable before the previous one goes; the
// server's acceptance is journaled before the job is filed, so that after a
// crash a message the server took is filed as sent, not sent again. Message
// identity (ids, never producers' names) is in msgid.go.
//
// Open gives one running instance its spool. The functions that take Dirs
// (Walk, LocateMessage, HoldAll, RetryMessage, RequeueAll, Purge...) are the
// offline queue administration behind "smtpq queue": they work beside a
// running service, deciding every race with a rename (see admin.go).
package spool
