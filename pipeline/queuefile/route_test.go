package queuefile_test

import (
	"testing"

	"filippo.io/age"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// Enqueue puts the route tag in the name; the service computes the same tag
// from its identity and the sealed parameters; the tag depends on the key,
// the relay or host (not its case) and the port.
func TestRouteTagInName(t *testing.T) {
	q := newQueue(t)
	p := testParams("a@example.org")
	p.Host, p.Port = "SMTP.Example.org", 587
	name, _ := enqueue(t, q, []byte("Subject: x\r\n\r\nbody\r\n"), p)
	tag := queuefile.NameRouteTag(name)
	if tag == "" {
		t.Fatalf("enqueued as %q: no route tag", name)
	}
	id := mustIdentity(t, testIdentity)
	if got := queuefile.RouteTagFor(id, &p); got != tag {
		t.Fatalf("the service computes tag %q, the name has %q", got, tag)
	}
	lower := p
	lower.Host = "smtp.example.org"
	if queuefile.RouteTag(q.Recipients[0], &lower) != tag {
		t.Error("the tag depends on the host name's case")
	}
	other := p
	other.Port = 25
	relay := p
	relay.Relay = "office"
	otherKey, _ := age.GenerateX25519Identity()
	for what, got := range map[string]string{
		"another port": queuefile.RouteTag(q.Recipients[0], &other),
		"a relay":      queuefile.RouteTag(q.Recipients[0], &relay),
		"another key":  queuefile.RouteTag(otherKey.Recipient(), &p),
	} {
		if got == tag {
			t.Errorf("%s gives the same tag %q", what, got)
		}
	}
}

func TestNameRouteTag(t *testing.T) {
	for name, want := range map[string]string{
		"20261127T153826.123456789Z-abcdefghijklmnop+3fa9.eml": "3fa9",
		"20261127T153826.123456789Z-abcdefghijklmnop.eml":      "",
		"20261127T153826.123456789Z-abcdefghijklmnop+3FA9.eml": "",
		"20261127T153826.123456789Z-abcdefghijklmnop+3fa.eml":  "",
		"x+3fa9.txt": "",
		"+3fa9.eml":  "3fa9",
	} {
		if got := queuefile.NameRouteTag(name); got != want {
			t.Errorf("NameRouteTag(%q) = %q, want %q", name, got, want)
		}
	}
}
