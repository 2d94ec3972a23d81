//go:build !linux && !darwin && !windows

package main

import "os"

// noEcho cannot turn off the echo here: a password is then read as a
// line from standard input, as from a pipe.
func noEcho(*os.File) (func(), bool) { return nil, false }
