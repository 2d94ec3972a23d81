//go:build !linux

package spool

import "os"

// createUnnamed is Linux's O_TMPFILE; elsewhere the Sent copy is written
// under a temporary name.
func createUnnamed(dir string) (*os.File, error) { return nil, errNoUnnamed }

func linkUnnamed(f *os.File, path string) error { return errNoUnnamed }
