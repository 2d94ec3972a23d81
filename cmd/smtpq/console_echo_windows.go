package main

import (
	"os"

	"golang.org/x/sys/windows"
)

// noEcho turns off the echo of console f; ok is false if f is not a
// console. restore puts the echo back.
func noEcho(f *os.File) (restore func(), ok bool) {
	h := windows.Handle(f.Fd())
	var mode uint32
	if err := windows.GetConsoleMode(h, &mode); err != nil {
		return nil, false
	}
	if err := windows.SetConsoleMode(h, mode&^windows.ENABLE_ECHO_INPUT|windows.ENABLE_PROCESSED_INPUT|windows.ENABLE_LINE_INPUT); err != nil {
		return nil, false
	}
	return func() { windows.SetConsoleMode(h, mode) }, true
}
