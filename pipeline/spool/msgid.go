package spool

import (
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/smtpq/smtpq/pipeline/queuefile"
	"github.com/smtpq/smtpq/stages"
)

// Message identity.
//
// A producer chooses the name of the file it drops in queue_dir: any bytes a
// file system allows, up to 255 of them, and the same name again tomorrow
// (a cron job's report.eml) while yesterday's is still deferred. So the
// spool never keys anything by that name. When it claims a file it gives the
// message an id of its own (IDLen characters of [0-9a-v], unique, sorted by
// claim time), and from then on the message's working file, its state file
// (.state/<id>.json), its journal line and every temporary file are named by
// that id. The producer's name stays the message's name: it is what Sent and
// Undeliverable file it under, and what the queue commands show.
//
// The working file's name carries both: "<id>_<name>" when the producer's
// name is plain (plainName: the characters enqueue and most producers use,
// at most maxPlainName bytes), else "<id>.eml" with the name kept in the
// state file, which is written durably before the claim's rename (a rare
// cost, paid only for odd names). Nothing a producer writes can forge an id:
// ids exist only in the service's own hidden folders, which producers
// cannot write, and a file in queue_dir is always given a fresh one.

// IDLen is the length of a message id.
const IDLen = 16

// maxPlainName bounds a producer's name carried in a working file's name.
const maxPlainName = 200

// maxNameBytes is the longest file name the spool creates or files under
// (most file systems' limit).
const maxNameBytes = 255

var idEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// NewID returns a new message id: the time in microseconds (56 bits, so
// that ids sort by claim time) and 24 random bits. The claim's rename never
// replaces a file, so even two ids drawn alike cannot merge two messages.
func NewID(now time.Time) string {
	var b [10]byte
	var t [8]byte
	binary.BigEndian.PutUint64(t[:], uint64(now.UnixMicro()))
	copy(b[:7], t[1:])
	rand.Read(b[7:])
	return idEncoding.EncodeToString(b[:])
}

// IsID reports whether s has the form of a message id.
func IsID(s string) bool {
	if len(s) != IDLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'v') {
			return false
		}
	}
	return true
}

// plainName reports whether a producer's name can be carried in a working
// file's name: short, and only characters that need no quoting anywhere.
func plainName(name string) bool {
	if len(name) > maxPlainName || !queuefile.IsQueueName(name) {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("._+=@,-", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// workName returns the working file name of message id with the producer's
// name, and whether the name is carried in it (else it goes in the state).
func workName(id, name string) (string, bool) {
	if plainName(name) {
		return id + "_" + name, true
	}
	return id + queuefile.Ext, false
}

// giveID moves src, the file of a message that has no id yet (name is the
// producer's), into dstDir under a working name with a new id, never
// replacing a file. st is the message's state, Queued set; it is written
// under the id first in queueDir's state folder, durably (syncDir), when
// the working name cannot
// carry the name or when keep says it has more to keep (a state a version
// before ids kept under the name), and removed again if the move fails.
// wrote says whether it was written. A move that fails because src is gone
// (someone else took it) returns an error matching fs.ErrNotExist.
func giveID(queueDir, src, name, dstDir string, st *stages.State, keep bool, syncDir func(string) error) (id, dst string, wrote bool, err error) {
	for range 3 {
		id = NewID(time.Now())
		w, carried := workName(id, name)
		dst = filepath.Join(dstDir, w)
		wrote = !carried || keep
		if wrote {
			st.SetName("")
			if !carried {
				st.SetName(name)
			}
			if err := writeState(queueDir, id, st, syncDir); err != nil {
				return "", "", false, fmt.Errorf("writing its state: %w", err)
			}
		}
		err = moveNoReplace(src, dst)
		if err == nil {
			return id, dst, wrote, nil
		}
		if wrote {
			os.Remove(statePath(queueDir, id))
		}
		if !errors.Is(err, fs.ErrExist) {
			return "", "", false, err
		}
		// An id drawn twice in one microsecond: draw again.
	}
	return "", "", false, fmt.Errorf("no free id: %w", err)
}

// queuedTime is when a message named name was first seen: the time its
// name carries (enqueue's names), else now.
func queuedTime(name string, now time.Time) time.Time {
	if t, ok := queuefile.NameTime(name); ok {
		return t
	}
	return now
}

// ParseWorkName splits a working file name into its id and the producer's
// name it carries ("" if the name is in the state file). ok is false for a
// name that is not a working name (a file from before ids, or someone
// else's).
func ParseWorkName(w string) (id, name string, ok bool) {
	if len(w) <= IDLen || !IsID(w[:IDLen]) {
		return "", "", false
	}
	id, rest := w[:IDLen], w[IDLen:]
	switch {
	case rest == queuefile.Ext:
		return id, "", true
	case rest[0] == '_' && queuefile.IsQueueName(rest[1:]):
		return id, rest[1:], true
	}
	return "", "", false
}

// suffixed returns name with -i before its .eml (name itself for 0), cut so
// that the result fits in maxNameBytes: a producer's name may use all of
// them. The cut keeps whole UTF-8 characters where the name has them.
func suffixed(name string, i int) string {
	if i == 0 {
		return name
	}
	base := strings.TrimSuffix(name, queuefile.Ext)
	suf := fmt.Sprintf("-%d%s", i, queuefile.Ext)
	if cut := maxNameBytes - len(suf); len(base) > cut {
		// Do not split a UTF-8 character (at most 3 bytes back).
		for back := 0; back < 3 && cut > 0 && !utf8.RuneStart(base[cut]); back++ {
			cut--
		}
		base = base[:cut]
	}
	return base + suf
}

// moveNoReplace renames src to dst, never replacing a file at dst: it fails
// with an error that matches fs.ErrExist if dst exists. Where the system has
// no such rename (renameNoReplace unsupported), it links and unlinks, which
// also never replaces; where links fail too (some network or FAT file
// systems), it checks and renames, the only case with a window.
func moveNoReplace(src, dst string) error {
	err := renameNoReplace(src, dst)
	if err == nil || !errors.Is(err, errors.ErrUnsupported) && !isNotSupported(err) {
		return err
	}
	if lerr := os.Link(src, dst); lerr == nil {
		if rerr := os.Remove(src); rerr != nil {
			os.Remove(dst)
			return rerr
		}
		return nil
	} else if errors.Is(lerr, fs.ErrExist) || errors.Is(lerr, fs.ErrNotExist) {
		return lerr
	}
	if _, serr := os.Lstat(dst); serr == nil {
		return &os.LinkError{Op: "rename", Old: src, New: dst, Err: fs.ErrExist}
	}
	return os.Rename(src, dst)
}
