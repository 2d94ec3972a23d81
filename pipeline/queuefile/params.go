package queuefile

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unique"
)

// FormatVersion is the version of the sealed parameters this package writes.
// Open accepts this version only; a later format gets a new number so that an
// old service refuses it clearly instead of misreading it.
const FormatVersion = 1

// TLSMode says how the connection to the SMTP server is secured.
type TLSMode string

const (
	// TLSDefault picks TLSImplicit on port 465 and TLSStartTLS elsewhere.
	TLSDefault TLSMode = ""
	// TLSImplicit speaks TLS from the first byte (SMTPS, usually port 465).
	TLSImplicit TLSMode = "implicit"
	// TLSStartTLS requires the STARTTLS upgrade; there is no plaintext fallback.
	TLSStartTLS TLSMode = "starttls"
	// TLSNone sends in the clear. AUTH is then refused except to loopback.
	TLSNone TLSMode = "none"
)

// ParseTLSMode is the one way from text to a TLSMode: it accepts a mode in
// any case, with white space around it, and returns its constant; an empty
// string is TLSDefault. An unknown mode is an error naming the value and the
// modes allowed; the caller adds the name of the setting. Every edge where a
// mode comes in (configuration, flags, Params.Validate, Open) goes through
// it, so that the code behind compares constants only and a mode written
// "STARTTLS" cannot fall through to plain text.
func ParseTLSMode(s string) (TLSMode, error) {
	switch m := TLSMode(strings.ToLower(strings.TrimSpace(s))); m {
	case TLSDefault, TLSImplicit, TLSStartTLS, TLSNone:
		return m, nil
	}
	return "", fmt.Errorf("unknown TLS mode %q (allowed: implicit, starttls, none)", s)
}

// Resolve returns the mode to use on port: the mode itself, or for
// TLSDefault implicit on 465 and starttls elsewhere.
func (m TLSMode) Resolve(port int) TLSMode {
	if m != TLSDefault {
		return m
	}
	if port == 465 {
		return TLSImplicit
	}
	return TLSStartTLS
}

// DefaultPort is used when neither the parameters nor a relay profile name a
// port.
const DefaultPort = 25

// Secret holds a credential. It prints, formats and marshals as "[redacted]"
// so that it cannot reach a log line or an error string by accident; Reveal
// returns the value for the one place that needs it (the SMTP AUTH exchange).
//
// The value sits behind a pointer (a unique.Handle): fmt prints a struct's
// unexported fields by reflection, without calling their String or Format
// methods, and would print a string-typed secret there as it is; a pointer
// it prints as an address. Secrets compare equal when their values are
// equal (so a Route with one is still comparable), and the zero Secret is
// the empty one.
type Secret struct{ h unique.Handle[string] }

// NewSecret returns a Secret holding s.
func NewSecret(s string) Secret {
	if s == "" {
		return Secret{}
	}
	return Secret{unique.Make(s)}
}

const redacted = "[redacted]"

// IsZero reports whether the secret is empty.
func (s Secret) IsZero() bool { return s == Secret{} }

// Reveal returns the secret value.
func (s Secret) Reveal() string {
	if s.IsZero() {
		return ""
	}
	return s.h.Value()
}

// String implements fmt.Stringer without revealing the secret.
func (s Secret) String() string {
	if s.IsZero() {
		return ""
	}
	return redacted
}

// GoString implements fmt.GoStringer without revealing the secret.
func (s Secret) GoString() string { return s.String() }

// Format implements fmt.Formatter so that every verb (%v, %s, %q, %x, ...) is
// redacted.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// MarshalJSON implements json.Marshaler without revealing the secret.
func (s Secret) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// MarshalText implements encoding.TextMarshaler without revealing the secret.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Params are the send-time parameters sealed inside a queue file.
//
// Either Relay names a relay profile of the service configuration (host, port,
// TLS and credentials then come from there, so no password needs to sit in any
// file), or Host names the SMTP server directly. Digest and Size are filled in
// by the sealing code; producers leave them empty.
type Params struct {
	Relay       string  // name of a relay profile in the service config
	Host        string  // SMTP server host name or IP
	Port        int     // 0: the relay's port, else DefaultPort
	TLS         TLSMode // TLSDefault: implicit on 465, starttls elsewhere
	Username    string
	Password    Secret
	OAuth2Token Secret // XOAUTH2 bearer token, instead of a password
	HELO        string // name sent in EHLO; empty: the service's default

	// From is the envelope sender. Sealed empty, it is the null sender <>;
	// but Enqueue fills an empty From from the message's Sender or From
	// field, and only EnqueueNullSender seals it empty.
	From string
	To   []string // envelope recipients, at least one

	NotBefore time.Time // do not send before this time (scheduled sending)
	Expires   time.Time // give up (Undeliverable, "expired") after this time

	Digest string // hex SHA-256 of the message without the sealed field
	Size   int64  // size in bytes of the message without the sealed field
}

// Format implements fmt.Formatter: whatever the verb, Params print without
// their secrets. (fmt's path for a verb that does not suit a field calls no
// method of that field, so Secret alone cannot protect a Params printed
// with, say, %s or %d.)
func (p Params) Format(f fmt.State, _ rune) {
	fmt.Fprintf(f, "queuefile.Params{relay=%q host=%q port=%d tls=%q user=%q password=%s oauth2=%s helo=%q from=%q to=%d recipients}",
		p.Relay, p.Host, p.Port, string(p.TLS), p.Username, p.Password.String(), p.OAuth2Token.String(), p.HELO, p.From, len(p.To))
}

// Param errors are returned by Validate; each names the parameter.
var (
	ErrNoRecipients = errors.New("no recipients")
	ErrNoServer     = errors.New("no SMTP server: give a host or a relay profile")
)

// Validate checks the parameters a producer supplies (everything but Digest
// and Size). Each error names the parameter that is wrong. It also rewrites
// p.TLS into its constant (see ParseTLSMode).
func (p *Params) Validate() error {
	switch {
	case p.Relay != "" && p.Host != "":
		return errors.New("both a relay profile and a host given: choose one")
	case p.Relay == "" && p.Host == "":
		return ErrNoServer
	}
	if p.Host != "" {
		if err := checkHost(p.Host); err != nil {
			return err
		}
	}
	if p.Port < 0 || p.Port > 65535 {
		return fmt.Errorf("port %d out of range 1-65535", p.Port)
	}
	mode, err := ParseTLSMode(string(p.TLS))
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	p.TLS = mode
	if !p.Password.IsZero() && !p.OAuth2Token.IsZero() {
		return errors.New("both a password and an OAuth2 token given: choose one")
	}
	if (!p.Password.IsZero() || !p.OAuth2Token.IsZero()) && p.Username == "" {
		return errors.New("a password or token without a user name")
	}
	if strings.ContainsAny(p.Username, "\r\n\x00") {
		return errors.New("user name contains a control character")
	}
	if strings.ContainsAny(p.HELO, "\r\n\x00 \t") {
		return fmt.Errorf("HELO name %q contains white space or a control character", p.HELO)
	}
	if p.From != "" {
		if err := CheckAddress(p.From); err != nil {
			return fmt.Errorf("sender: %w", err)
		}
	}
	if len(p.To) == 0 {
		return ErrNoRecipients
	}
	for _, to := range p.To {
		if err := CheckAddress(to); err != nil {
			return fmt.Errorf("recipient: %w", err)
		}
	}
	if !p.Expires.IsZero() && !p.NotBefore.IsZero() && !p.Expires.After(p.NotBefore) {
		return errors.New("expiry is not after the not-before time")
	}
	return nil
}

func checkHost(h string) error {
	if strings.ContainsAny(h, "\r\n\x00 \t/") || strings.Contains(h, ":") && !strings.HasPrefix(h, "[") && strings.Count(h, ":") < 2 {
		return fmt.Errorf("host %q is not a host name or IP address (give the port separately)", h)
	}
	return nil
}

// CheckAddress checks an envelope address: it must have an @ with text on both
// sides and no white space, angle brackets or control characters.
func CheckAddress(a string) error {
	if strings.ContainsAny(a, "\r\n") {
		return fmt.Errorf("address %q contains CR or LF", a)
	}
	if strings.ContainsAny(a, " \t<>\x00") {
		return fmt.Errorf("address %q contains white space, angle brackets or NUL", a)
	}
	at := strings.LastIndexByte(a, '@')
	if at <= 0 || at == len(a)-1 {
		return fmt.Errorf("address %q is not of the form local@domain", a)
	}
	if len(a) > 320 {
		return fmt.Errorf("address %.40q... is longer than 320 bytes", a)
	}
	return nil
}

// wire is the JSON form inside the seal. It is separate from Params so that
// Params' secrets can marshal redacted everywhere else.
type wire struct {
	V           int       `json:"v"`
	Relay       string    `json:"relay,omitempty"`
	Host        string    `json:"host,omitempty"`
	Port        int       `json:"port,omitempty"`
	TLS         wireTLS   `json:"tls,omitempty"`
	Username    string    `json:"user,omitempty"`
	Password    string    `json:"pass,omitempty"`
	OAuth2Token string    `json:"oauth2,omitempty"`
	HELO        string    `json:"helo,omitempty"`
	From        string    `json:"from"`
	To          []string  `json:"to"`
	NotBefore   time.Time `json:"not_before,omitzero"`
	Expires     time.Time `json:"expires,omitzero"`
	Digest      string    `json:"sha256"`
	Size        int64     `json:"size"`
}

func (p *Params) toWire() wire {
	return wire{
		V: FormatVersion, Relay: p.Relay, Host: p.Host, Port: p.Port, TLS: wireTLS(p.TLS.canonical()),
		Username: p.Username, Password: p.Password.Reveal(), OAuth2Token: p.OAuth2Token.Reveal(),
		HELO: p.HELO, From: p.From, To: p.To, NotBefore: p.NotBefore, Expires: p.Expires,
		Digest: p.Digest, Size: p.Size,
	}
}

func (w *wire) params() *Params {
	return &Params{
		Relay: w.Relay, Host: w.Host, Port: w.Port, TLS: TLSMode(w.TLS),
		Username: w.Username, Password: NewSecret(w.Password), OAuth2Token: NewSecret(w.OAuth2Token),
		HELO: w.HELO, From: w.From, To: w.To, NotBefore: w.NotBefore, Expires: w.Expires,
		Digest: w.Digest, Size: w.Size,
	}
}

// wireTLS is the TLS mode inside a seal. It is sealed as its constant and
// read through ParseTLSMode: a seal made by another or an older producer
// may carry it in any case, and an unknown mode makes the seal malformed
// (the file goes to Undeliverable as invalid) rather than reach the Sender,
// which would refuse it at every attempt.
type wireTLS TLSMode

// UnmarshalJSON implements json.Unmarshaler.
func (m *wireTLS) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	mode, err := ParseTLSMode(s)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	*m = wireTLS(mode)
	return nil
}

// canonical returns m's constant, or m itself if it is not a mode (which
// Validate refuses before anything is sealed).
func (m TLSMode) canonical() TLSMode {
	if c, err := ParseTLSMode(string(m)); err == nil {
		return c
	}
	return m
}
