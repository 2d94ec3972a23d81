//go:build linux || darwin

package main

import (
	"os"

	"golang.org/x/sys/unix"
)

// noEchoIoctl turns off ECHO with the termios requests get and set.
func noEchoIoctl(f *os.File, get, set uint) (func(), bool) {
	fd := int(f.Fd())
	old, err := unix.IoctlGetTermios(fd, get)
	if err != nil {
		return nil, false
	}
	t := *old
	t.Lflag &^= unix.ECHO
	t.Lflag |= unix.ICANON | unix.ISIG
	if err := unix.IoctlSetTermios(fd, set, &t); err != nil {
		return nil, false
	}
	return func() { unix.IoctlSetTermios(fd, set, old) }, true
}
