package queuefile

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// The IIS/Exchange pickup-directory convention: a message whose first header
// fields are X-Sender: (envelope sender) and X-Receiver: (one per envelope
// recipient). The service sends such files through its default relay when
// pickup_compat is on, with those fields removed.

// ErrNotPickup is returned by OpenPickup for a file that has no X-Sender /
// X-Receiver fields at its top.
var ErrNotPickup = errors.New("no X-Sender/X-Receiver header fields at the top of the message")

// IsPickupField reports whether name is X-Sender or X-Receiver.
func IsPickupField(name string) bool {
	return equalFold(name, "X-Sender") || equalFold(name, "X-Receiver")
}

// StripPickup copies src to dst without the leading X-Sender and X-Receiver
// fields. Fields of those names further down the header are kept: only the
// block at the top is the envelope.
func StripPickup(dst io.Writer, src io.Reader) error {
	leading := true
	_, err := Strip(dst, src, func(name string) bool {
		if leading && IsPickupField(name) {
			return true
		}
		leading = false
		return false
	})
	return err
}

// Pickup is the envelope of a pickup-directory file.
type Pickup struct {
	From string
	To   []string
	Size int64 // size of the message without the envelope fields
}

// OpenPickup reads a whole pickup-directory file and returns its envelope.
func OpenPickup(r io.Reader) (*Pickup, error) {
	leading := true
	cw := &CountWriter{W: io.Discard}
	res, err := Strip(cw, r, func(name string) bool {
		if leading && IsPickupField(name) {
			return true
		}
		leading = false
		return false
	})
	if err != nil {
		return nil, fmt.Errorf("reading message: %w", err)
	}
	if res.Removed.Len() == 0 {
		return nil, ErrNotPickup
	}
	if !res.HeaderEnd {
		return nil, ErrNoSeparator
	}
	p := &Pickup{Size: cw.N}
	for f := res.Removed.Fields(); f.Next(); {
		addr := strings.Trim(f.Value(), "<>")
		if err := CheckAddress(addr); err != nil {
			return nil, fmt.Errorf("%s: %w", f.Key(), err)
		}
		if equalFold(f.Key(), "X-Sender") {
			if p.From != "" {
				return nil, errors.New("more than one X-Sender header")
			}
			p.From = addr
		} else {
			p.To = append(p.To, addr)
		}
	}
	if len(p.To) == 0 {
		return nil, fmt.Errorf("%w: no X-Receiver header", ErrNoRecipients)
	}
	return p, nil
}
