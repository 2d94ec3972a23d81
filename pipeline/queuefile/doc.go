// Package queuefile is the on-disk format of a queued message and the way
// producers put one into the queue.
//
// A queue file is an RFC 5322 message with one extra header field,
// X-SmtpQ-Sealed, that carries the send-time parameters (SMTP host, port, TLS
// mode, credentials or a relay profile name, envelope, schedule) encrypted with
// filippo.io/age to the service's X25519 public key:
//
//	X-SmtpQ-Sealed: v1
//	 YWdlLWVuY3J5cHRpb24ub3JnL3YxCi0+IFgyNTUxOSBh...
//	 ...
//	From: app@example.com
//	...
//
// The field is folded into lines of at most 78 characters and uses the same
// line ending as the message's first line. Inside the seal sits a JSON object
// (see Params) that includes the SHA-256 and size of the message without the
// field, so a seal cannot be moved onto another message and truncation is
// detected.
//
// What reaches the SMTP server is the file minus the sealed field's lines, byte
// for byte (Strip): nothing is re-folded or re-encoded, so DKIM signatures made
// before enqueueing stay valid. Stripping streams; a message of any size is
// never held in memory.
//
// Producers hold only the public key (the recipient file): they can enqueue
// mail but cannot read the credentials in other queued files. The service holds
// the private identity file, which must be a regular file readable by its owner
// only (LoadIdentities refuses anything else).
//
// Enqueue writes under the queue's .tmp folder, fsyncs, renames the file into
// the queue directory as <UTC time>-<random>.eml and fsyncs the directory, so
// the service never sees a partial file.
package queuefile
