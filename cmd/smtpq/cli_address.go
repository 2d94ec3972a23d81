package main

import (
	"net/mail"
	"strings"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// parseAddressList returns the addresses of an address-list field value or
// argument ("a@x, Name <b@y>, group: c@z;"), read by go-message (through
// queuefile.ParseAddressList: a display name in any charset is accepted). An
// empty value has none.
func parseAddressList(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	list, err := queuefile.ParseAddressList(s)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(list))
	for _, a := range list {
		out = append(out, a.Address)
	}
	return out, nil
}

// formatMailbox returns "Name <addr>" for a From field: the name as is when
// it is plain words, else quoted or RFC 2047 encoded as net/mail does.
func formatMailbox(name, addr string) string {
	if name == "" {
		return addr
	}
	if isPlainPhrase(name) {
		return name + " <" + addr + ">"
	}
	return (&mail.Address{Name: name, Address: addr}).String()
}

// isPlainPhrase reports whether s is words of RFC 5322 atext separated by
// single spaces, which need no quoting in a display name.
func isPlainPhrase(s string) bool {
	for _, w := range strings.Split(s, " ") {
		if w == "" {
			return false
		}
		for _, c := range w {
			if !isAtext(c) {
				return false
			}
		}
	}
	return true
}

func isAtext(c rune) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", c)
}
