package natstest

import (
	"testing"

	"go.uber.org/goleak"
)

// The servers are shut down and waited for when each test ends, so no
// goroutine of theirs, nor of the clients the tests close, may be left.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
