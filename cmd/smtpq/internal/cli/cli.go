// Package cli holds the error conventions of the smtpq command line, which
// package main and the internal packages behind its commands share: an error
// is printed as exactly one line, a mistake in the command line is a usage
// error (exit status 2 outside the sendmail command), and an error may carry
// an exit status of its own. It knows nothing of cobra.
package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// ExitError carries a process exit status with an error.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// WithCode attaches an exit status to err.
func WithCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &ExitError{Code: code, Err: err}
}

// usageError marks errors in the command line itself.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// Usage marks err as a usage error.
func Usage(err error) error { return usageError{err} }

// Usagef returns a usage error (exit status 2 outside the sendmail command).
func Usagef(format string, a ...any) error {
	return usageError{fmt.Errorf(format, a...)}
}

// IsUsage reports whether err was marked as a usage error by Usage or
// Usagef.
func IsUsage(err error) bool {
	var u usageError
	return errors.As(err, &u)
}

// oneLineError keeps an error to one line of text (the CLI prints exactly one
// line per error) while errors.Is and errors.As still see the original.
type oneLineError struct{ err error }

func (e oneLineError) Error() string { return Flatten(e.err.Error()) }
func (e oneLineError) Unwrap() error { return e.err }

// OneLine wraps err so that its text is a single line.
func OneLine(err error) error {
	if err == nil || !strings.ContainsAny(err.Error(), "\r\n") {
		return err
	}
	return oneLineError{err}
}

// Flatten joins the lines of a multi-line message: after a line ending in a
// colon (a heading such as yaml's "unmarshal errors:") with a space, else
// with "; " (errors.Join).
func Flatten(s string) string {
	var b strings.Builder
	for _, line := range strings.FieldsFunc(s, func(r rune) bool { return r == '\n' || r == '\r' }) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if b.Len() > 0 {
			if strings.HasSuffix(b.String(), ":") {
				b.WriteString(" ")
			} else {
				b.WriteString("; ")
			}
		}
		b.WriteString(line)
	}
	return strings.ReplaceAll(b.String(), "unmarshal errors: ", "")
}

// QuoteIfNeeded returns s as is when it is a plain token, else quoted, so that
// a value typed by a user cannot break the one-line error format.
func QuoteIfNeeded(s string) string {
	if s == "" || strconv.Quote(s) != `"`+s+`"` || strings.ContainsAny(s, " \t\"'") {
		return strconv.Quote(s)
	}
	return s
}
