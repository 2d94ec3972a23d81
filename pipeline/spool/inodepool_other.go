//go:build !linux

package spool

import (
	"errors"
	"os"
)

// Elsewhere the pool is off: there is no portable rename that never
// replaces its target.
const poolSupported = false

func ownedUnlinked(os.FileInfo) bool { return false }

func openForRewrite(string) (*os.File, error) { return nil, errors.ErrUnsupported }

func isCrossDevice(error) bool { return false }

func isNotSupported(err error) bool { return errors.Is(err, errors.ErrUnsupported) }
