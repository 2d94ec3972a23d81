//go:build windows

package queuefile

// SyncDir does nothing on Windows: NTFS journals metadata changes and a
// directory handle cannot be flushed with FlushFileBuffers.
func SyncDir(dir string) error { return nil }
