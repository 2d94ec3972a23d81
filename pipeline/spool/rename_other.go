//go:build !linux && !windows

package spool

import "errors"

// renameNoReplace: there is no portable rename that never replaces its
// target; moveNoReplace then links and unlinks.
func renameNoReplace(string, string) error { return errors.ErrUnsupported }
