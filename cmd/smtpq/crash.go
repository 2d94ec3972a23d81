package main

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/smtpq/smtpq/pipeline"
)

// crashEnv names a crash point for the crash tests (make test-crash):
// SMTPQ_CRASH_AT=POINT[:N] kills the process with SIGKILL (on Windows:
// TerminateProcess) the Nth time (default the first) the pipeline reaches
// POINT: claimed, connected, after-mail, after-dot, after-record,
// archive-write (a Sent copy written, not yet linked), sent-stripped (a
// Sent copy made in place: the seal cut off, not yet renamed) or xml-write. It exists to test what happens after a real
// crash; never set it in production.
const crashEnv = "SMTPQ_CRASH_AT"

// crashOptions arms the crash hook from the environment, if set.
func crashOptions(o pipeline.Options) pipeline.Options {
	spec := os.Getenv(crashEnv)
	if spec == "" {
		return o
	}
	point, nth := spec, int64(1)
	if p, n, ok := strings.Cut(spec, ":"); ok {
		if v, err := strconv.ParseInt(n, 10, 64); err == nil && v > 0 {
			point, nth = p, v
		}
	}
	var hits atomic.Int64
	o.Crash = func(at string) {
		if at == point && hits.Add(1) == nth {
			if self, err := os.FindProcess(os.Getpid()); err == nil {
				self.Kill()
			}
			select {} // the kill is asynchronous: go no further
		}
	}
	return o
}
