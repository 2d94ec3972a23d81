package spool

import (
	"os"

	"golang.org/x/sys/windows"
)

// renameNoReplace is MoveFileEx without MOVEFILE_REPLACE_EXISTING: it
// fails with ERROR_ALREADY_EXISTS (fs.ErrExist) if dst exists, and of two
// moves of one file exactly one succeeds. Linking and unlinking, as on the
// systems without such a rename, is not enough here: two DeleteFile calls
// on one name can both succeed (each opens the file, marks it for deletion
// and closes it), so two scanners racing for a file could both claim it.
func renameNoReplace(src, dst string) error {
	from, err := windows.UTF16PtrFromString(src)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
	}
	to, err := windows.UTF16PtrFromString(dst)
	if err != nil {
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
	}
	if err := windows.MoveFileEx(from, to, 0); err != nil {
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: err}
	}
	return nil
}
