//go:build windows

package queuefile

import "os"

// checkPrivate does nothing on Windows: permissions there are ACLs, not mode
// bits. Keep the identity file in a folder only the service account can read
// (the default under %ProgramData%\smtpq is).
func checkPrivate(path string, fi os.FileInfo) error { return nil }
