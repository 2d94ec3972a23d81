//go:build !windows

package queuefile

import (
	"fmt"
	"os"
	"syscall"
)

// checkPrivate refuses a key file that group or others may read, or that
// belongs to another user than the one running the service.
func checkPrivate(path string, fi os.FileInfo) error {
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("readable or writable by group or others (mode %04o); run chmod 600 %s", perm, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("owned by uid %d, not by the user running smtpq (uid %d)", st.Uid, os.Geteuid())
	}
	return nil
}
