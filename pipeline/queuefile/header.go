package queuefile

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	netmail "net/mail"
	"strings"

	"github.com/emersion/go-message"
	_ "github.com/emersion/go-message/charset" // RFC 2047 words in every charset producers write (windows-1252, koi8-r, ...)
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"
)

// Header fields are read and written with go-message. Its textproto.Header
// keeps each field's raw bytes, so a field that is passed through is written
// back byte for byte, line endings as they were (the project's splitter, in
// Strip, finds where each field starts and ends without normalizing them);
// its mail package reads address lists, RFC 2047 encoded words included.

// rawHeader returns the fields in file order as a textproto.Header that
// keeps each one's raw bytes.
func rawHeader(fields []removedField) textproto.Header {
	var h textproto.Header
	// AddRaw puts a field at the top: add them last first.
	for i := len(fields) - 1; i >= 0; i-- {
		h.AddRaw(fields[i].raw)
	}
	return h
}

// ParseHeader reads a header section held in memory (the fields, with or
// without the empty line that ends them) into a textproto.Header whose
// fields keep their raw bytes. A line that is neither a field nor a
// continuation is an error naming it.
func ParseHeader(hdr []byte) (textproto.Header, error) {
	var bad []byte
	res, err := Strip(writerFunc(func(b []byte) (int, error) {
		if bad == nil && !isEmptyLine(b) {
			bad = bytes.Clone(b)
		}
		return len(b), nil
	}), bytes.NewReader(hdr), func(string) bool { return true })
	if err != nil {
		return textproto.Header{}, err
	}
	if bad != nil {
		return textproto.Header{}, fmt.Errorf("neither a header field nor the empty line that ends the header: %.40q", strings.TrimRight(string(bad), "\r\n"))
	}
	return res.Removed, nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

// FormatField returns the header field "name: value" (name spelt as given) as go-message writes a
// new field (folded at white space to stay within 76 characters where it
// can), each line ending in eol ("\r\n" or "\n"). value must be printable:
// encoding words is the caller's (mail.Address.String does it for names).
func FormatField(name, value, eol string) ([]byte, error) {
	var h textproto.Header
	h.Add(name, value)
	var b bytes.Buffer
	if err := textproto.WriteHeader(&b, h); err != nil {
		return nil, err
	}
	out := bytes.TrimSuffix(b.Bytes(), []byte("\r\n")) // the header's end
	copy(out, name)                                    // the name as given, not canonicalized ("X-SmtpQ-Sealed")
	if eol != "\r\n" {
		out = bytes.ReplaceAll(out, []byte("\r\n"), []byte(eol))
	}
	return out, nil
}

// AddressLists reads the addresses of every field named one of keys, in
// header order, with go-message's mail package (display names in RFC 2047
// words of any charset it knows are decoded). An error names the field.
func AddressLists(h textproto.Header, keys ...string) ([]*mail.Address, error) {
	var out []*mail.Address
	fs := h.Fields()
	for fs.Next() {
		if !hasKey(fs.Key(), keys) {
			continue
		}
		v := fs.Value()
		if strings.TrimSpace(v) == "" {
			continue
		}
		list, err := ParseAddressList(v)
		if err != nil {
			return nil, fmt.Errorf("%s header: %w", fs.Key(), err)
		}
		out = append(out, list...)
	}
	return out, nil
}

// ParseAddressList reads an address list with go-message's mail package,
// which decodes RFC 2047 display names in the charsets go-message knows. A
// name in a charset it does not know is left undecoded rather than failing
// the list: the addresses are what the envelope needs.
func ParseAddressList(s string) ([]*mail.Address, error) {
	list, err := mail.ParseAddressList(s)
	if err != nil {
		if l, lerr := rawNameParser.ParseList(s); lerr == nil {
			return l, nil
		}
	}
	return list, err
}

// rawNameParser reads address lists decoding the display names in the
// charsets go-message knows and leaving the others' bytes as they are.
var rawNameParser = netmail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(charset string, input io.Reader) (io.Reader, error) {
		if message.CharsetReader != nil {
			if r, err := message.CharsetReader(charset, input); err == nil {
				return r, nil
			}
		}
		return input, nil
	},
}}

func hasKey(key string, keys []string) bool {
	for _, k := range keys {
		if strings.EqualFold(key, k) {
			return true
		}
	}
	return false
}

// errNoSender is returned by headerSender for a header with neither.
var errNoSender = errors.New("no sender given and no Sender or From header")

// headerSender returns the first address of the Sender field, else of the
// From field.
func headerSender(h textproto.Header) (string, error) {
	for _, key := range []string{"Sender", "From"} {
		list, err := AddressLists(h, key)
		if err != nil {
			return "", err
		}
		if len(list) > 0 {
			return list[0].Address, nil
		}
	}
	return "", errNoSender
}

// headerRecipients returns the addresses of the To, Cc and Bcc fields, each
// once (compared without case).
func headerRecipients(h textproto.Header) ([]string, error) {
	list, err := AddressLists(h, "To", "Cc", "Bcc")
	if err != nil {
		return nil, err
	}
	var to []string
	seen := map[string]bool{}
	for _, a := range list {
		if k := strings.ToLower(a.Address); !seen[k] {
			seen[k] = true
			to = append(to, a.Address)
		}
	}
	if len(to) == 0 {
		return nil, fmt.Errorf("%w: none given and no To, Cc or Bcc header", ErrNoRecipients)
	}
	return to, nil
}
