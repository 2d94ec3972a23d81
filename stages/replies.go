package stages

import (
	"fmt"
	"unicode/utf8"
)

// clip returns s cut to at most about n bytes, at a character boundary,
// saying how much was cut.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return fmt.Sprintf("%s [%d bytes cut]", s[:i], len(s)-i)
}
