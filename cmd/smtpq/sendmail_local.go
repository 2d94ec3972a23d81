package main

import (
	"fmt"
	"os"
	"os/user"
	"regexp"
	"strings"

	"github.com/smtpq/smtpq/pipeline"
)

// Bare local names, as Unix programs write them: cron mails "root" with
// "From: root (Cron Daemon)", mail(1) without -r sends as the invoking
// user. Postfix and msmtp's sendmail qualify such names with the host's
// domain; smtpq's does the same with sendmail.domain (default: the host
// name), after looking them up in sendmail.aliases (root: ops@example.org),
// so that cron's mail reaches a person.

// localName matches a bare local name: a mailbox without a domain.
var localName = regexp.MustCompile(`^[A-Za-z0-9._+-]+$`)

// localNames qualifies bare names.
type localNames struct {
	domain  string
	aliases map[string][]string
}

func newLocalNames(cfg *pipeline.Config) *localNames {
	n := &localNames{domain: cfg.Sendmail.Domain, aliases: map[string][]string{}}
	if n.domain == "" {
		n.domain, _ = os.Hostname()
	}
	for k, v := range cfg.Sendmail.Aliases {
		n.aliases[strings.ToLower(k)] = v
	}
	return n
}

// qualify returns the addresses a bare name stands for (its alias, or
// name@domain), or addr itself if it has a domain.
func (n *localNames) qualify(addr string) []string {
	if !localName.MatchString(addr) {
		return []string{addr}
	}
	if list, ok := n.aliases[strings.ToLower(addr)]; ok {
		var out []string
		for _, a := range list {
			if localName.MatchString(a) {
				a += "@" + n.domain // an alias to another local name: no second lookup
			}
			out = append(out, a)
		}
		return out
	}
	return []string{addr + "@" + n.domain}
}

// domainOnly qualifies a bare name with the domain alone: for a sender,
// and for the address fields, which keep the names the sender wrote
// (aliases are for delivery, as /etc/aliases is).
func (n *localNames) domainOnly(addr string) string {
	if localName.MatchString(addr) {
		return addr + "@" + n.domain
	}
	return addr
}

// sender is the envelope sender for a message without -f, Sender or From:
// the invoking user's login name at the domain.
func (n *localNames) sender() (string, error) {
	u, err := user.Current()
	if err != nil || u.Username == "" {
		return "", fmt.Errorf("no sender: give -f or a From field (the invoking user is unknown: %v)", err)
	}
	name := u.Username
	if i := strings.LastIndexAny(name, `\/`); i >= 0 {
		name = name[i+1:] // DOMAIN\user on Windows
	}
	return name + "@" + n.domain, nil
}

// bareMailbox is one item of an address list that net/mail cannot read
// because it has no domain: "root", "root (Cron Daemon)", "Cron <root>".
type bareMailbox struct {
	name string // display name or comment, if any
	addr string // the bare name
}

// parseBareList reads an address-list field value whose items may be bare
// names; ok is false if an item is neither a bare name nor an address.
func parseBareList(s string) (items []bareMailbox, ok bool) {
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		var b bareMailbox
		switch {
		case strings.HasSuffix(part, ">") && strings.Contains(part, "<"):
			i := strings.LastIndexByte(part, '<')
			b.name, b.addr = strings.Trim(strings.TrimSpace(part[:i]), `"`), strings.TrimSpace(part[i+1:len(part)-1])
		case strings.HasSuffix(part, ")") && strings.Contains(part, "("):
			i := strings.IndexByte(part, '(')
			b.addr, b.name = strings.TrimSpace(part[:i]), strings.TrimSpace(part[i+1:len(part)-1])
		default:
			b.addr = part
		}
		if !localName.MatchString(b.addr) && !strings.Contains(b.addr, "@") {
			return nil, false
		}
		items = append(items, b)
	}
	return items, true
}
