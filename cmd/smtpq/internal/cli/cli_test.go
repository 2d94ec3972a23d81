package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"testing"
)

func TestFlatten(t *testing.T) {
	for in, want := range map[string]string{
		"one line":  "one line",
		"a\nb\r\nc": "a; b; c",
		"yaml: unmarshal errors:\n  line 2: field bogus not found": "yaml: line 2: field bogus not found",
		"\n\n  padded  \n\n": "padded",
		"":                   "",
	} {
		if got := Flatten(in); got != want {
			t.Errorf("Flatten(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestOneLine(t *testing.T) {
	if OneLine(nil) != nil {
		t.Error("OneLine(nil) is not nil")
	}
	plain := errors.New("plain")
	if OneLine(plain) != plain {
		t.Error("a one-line error was wrapped")
	}
	multi := fmt.Errorf("config:\n%w", fs.ErrNotExist)
	err := OneLine(multi)
	if err.Error() != "config: file does not exist" {
		t.Errorf("OneLine: %q", err)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Error("OneLine hides the wrapped error from errors.Is")
	}
}

func TestQuoteIfNeeded(t *testing.T) {
	for in, want := range map[string]string{
		"plain-token": "plain-token",
		"":            `""`,
		"two words":   `"two words"`,
		"it's":        `"it's"`,
		"a\nb":        `"a\nb"`,
		"tab\there":   `"tab\there"`,
	} {
		if got := QuoteIfNeeded(in); got != want {
			t.Errorf("QuoteIfNeeded(%q) = %s, want %s", in, got, want)
		}
	}
}

func TestUsageAndExitCode(t *testing.T) {
	if !IsUsage(fmt.Errorf("wrapped: %w", Usagef("bad %s", "flag"))) || !IsUsage(Usage(errors.New("x"))) {
		t.Error("a usage error is not recognised through wrapping")
	}
	if IsUsage(errors.New("plain")) {
		t.Error("a plain error is a usage error")
	}
	if WithCode(3, nil) != nil {
		t.Error("WithCode(3, nil) is not nil")
	}
	var ee *ExitError
	if err := fmt.Errorf("outer: %w", WithCode(4, errors.New("inner"))); !errors.As(err, &ee) || ee.Code != 4 || ee.Err.Error() != "inner" {
		t.Errorf("ExitError not found in %v", err)
	}
}
