package smtpclient

import (
	"testing"

	"go.uber.org/goleak"
)

// Every test leaves no goroutine behind: a session's connection and its
// cancellation watch end with it.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
