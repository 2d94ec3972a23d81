//go:build !linux

package spool

import (
	"errors"
	"os"
)

// Elsewhere Sent copies are always written as new files: there is no
// portable way to cut blocks off the front of a file.
func cutBlockSize(Dirs) int64 { return 0 }

func openForCut(string) (*os.File, error) { return nil, errors.ErrUnsupported }

func cutFront(*os.File, int64) error { return errors.ErrUnsupported }
