package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// noEcho turns off the echo of terminal f; ok is false if f is not a
// terminal. restore puts the echo back.
func noEcho(f *os.File) (restore func(), ok bool) {
	return noEchoIoctl(f, unix.TIOCGETA, unix.TIOCSETA)
}
