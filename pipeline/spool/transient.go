package spool

import "errors"

// transientOpen reports whether opening a file failed for a reason that
// passes (transientErrors, per system): the message is read again later,
// not failed.
func transientOpen(err error) bool {
	for _, e := range transientErrors {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
