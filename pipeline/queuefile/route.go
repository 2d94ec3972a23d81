package queuefile

import (
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"

	"filippo.io/age"
)

// A route tag is 16 bits in a queue file's name that say, without opening
// the seal, which SMTP server the message is for: the first two bytes of
// SHA-256 over the service's public key and the sealed relay or host and
// port. It lets the service leave in the queue, unopened, the files for a
// server that is saturated (rate-limited or paused) while it sends other
// servers' mail: opening a seal costs an X25519 operation, and a backlog of
// 100,000 files for one slow server would otherwise be opened in full before
// the mail behind it is found.
//
// What it reveals: nothing to whoever lacks the public key; to a producer
// (who holds it), a way to test guesses of the server a queued file goes
// to, with one false match in 65,536 per guess. The server is not a
// credential, and credentials stay sealed. A tag only orders work: a wrong
// or forged one can delay a message (until the server it names is no
// longer saturated), never send it elsewhere; where it goes is read from
// the seal.

// RouteTag returns the tag for p sealed to r, or "" if r is not an X25519
// recipient.
func RouteTag(r age.Recipient, p *Params) string {
	x, ok := r.(*age.X25519Recipient)
	if !ok {
		return ""
	}
	return routeTag(x.String(), p.Relay, p.Host, p.Port)
}

// RouteTagFor returns the tag for p sealed to the public key of id, or ""
// if id is not an X25519 identity.
func RouteTagFor(id age.Identity, p *Params) string {
	switch x := id.(type) {
	case *age.X25519Identity:
		return routeTag(x.Recipient().String(), p.Relay, p.Host, p.Port)
	case *x25519Identity:
		return routeTag(x.recipient, p.Relay, p.Host, p.Port)
	}
	return ""
}

func routeTag(recipient, relay, host string, port int) string {
	h := sha256.New()
	h.Write([]byte("smtpq route tag v1\x00" + recipient + "\x00"))
	if relay != "" {
		h.Write([]byte("relay\x00" + relay))
	} else {
		h.Write([]byte("host\x00" + strings.ToLower(strings.TrimSuffix(host, ".")) + "\x00" + strconv.Itoa(port)))
	}
	return hex.EncodeToString(h.Sum(nil)[:2])
}

// NameRouteTag returns the route tag in a queue-file name made by Enqueue
// ("<time>-<random>+<tag>.eml"), or "" if it has none.
func NameRouteTag(name string) string {
	base, ok := strings.CutSuffix(name, Ext)
	if !ok {
		return ""
	}
	i := strings.LastIndexByte(base, '+')
	if i < 0 || len(base)-i-1 != 4 {
		return ""
	}
	tag := base[i+1:]
	for _, c := range tag {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return ""
		}
	}
	return tag
}
