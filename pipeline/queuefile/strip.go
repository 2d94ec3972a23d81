package queuefile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/emersion/go-message/textproto"
)

// SealedField is the name of the header field that carries the sealed
// parameters. Field names compare case-insensitively.
const SealedField = "X-SmtpQ-Sealed"

// MaxFieldSize bounds the raw size of one removed header field (with its
// continuation lines). A sealed field is a few hundred bytes; anything this
// large is hostile input.
const MaxFieldSize = 256 << 10

// ErrFieldTooLong is returned when a removed header field exceeds MaxFieldSize.
var ErrFieldTooLong = errors.New("header field too long")

// StripResult says what Strip saw.
type StripResult struct {
	// Removed holds the removed fields in file order, read by go-message:
	// Removed.Fields() gives each one's canonical name, unfolded value and
	// raw bytes (continuation lines and line endings as written).
	Removed      textproto.Header
	HeaderEnd    bool // the empty line ending the header section was found
	LeadingBlock bool // every removed field stood before any kept field
}

// Strip copies src to dst leaving out every header field for which drop
// returns true (drop gets the field name as written). Every other byte is
// copied unchanged: no re-folding, no re-encoding, line endings as they were.
// The body is copied with io.Copy, so a message of any size streams through a
// fixed buffer. Lines are not limited in length.
func Strip(dst io.Writer, src io.Reader, drop func(name string) bool) (StripResult, error) {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(src)
	defer func() {
		br.Reset(nil)
		readerPool.Put(br)
	}()
	var s splitter
	err := s.strip(dst, br, drop)
	return StripResult{Removed: rawHeader(s.removed), HeaderEnd: s.headerEnd, LeadingBlock: !s.keptBefore}, err
}

// splitter is the state of one Strip: the raw removed fields, and what it
// saw of the header section.
type splitter struct {
	removed    []removedField
	headerEnd  bool
	keptSeen   bool // a kept field was seen
	keptBefore bool // a kept field stood before a removed one
}

type removedField struct {
	name string // as written, for errors
	raw  []byte
}

func (s *splitter) strip(dst io.Writer, br *bufio.Reader, drop func(name string) bool) error {
	var cur *removedField // field being removed, nil if the current field is kept
	// put sends a piece of a line where its field goes.
	put := func(b []byte) error {
		if cur == nil {
			_, err := dst.Write(b)
			return err
		}
		if len(cur.raw)+len(b) > MaxFieldSize {
			return fmt.Errorf("%s: %w", cur.name, ErrFieldTooLong)
		}
		cur.raw = append(cur.raw, b...)
		return nil
	}
	for {
		line, err := readPhysicalLine(br)
		if len(line.first) == 0 && err != nil {
			if err == io.EOF {
				return nil // message ended inside the header section
			}
			return err
		}
		first := line.first
		switch {
		case isEmptyLine(first):
			s.headerEnd = true
			if _, werr := dst.Write(first); werr != nil {
				return werr
			}
			return copyBody(dst, br)
		case first[0] == ' ' || first[0] == '\t':
			// Continuation of the current field: same fate as its first line.
		default:
			cur = nil
			if name, ok := fieldName(first); ok && drop(name) {
				s.removed = append(s.removed, removedField{name: name})
				cur = &s.removed[len(s.removed)-1]
				s.keptBefore = s.keptBefore || s.keptSeen
			} else {
				s.keptSeen = true
			}
		}
		if perr := put(first); perr != nil {
			return perr
		}
		// The rest of a line longer than the buffer.
		for line.more {
			var chunk []byte
			chunk, line.more, err = readChunk(br)
			if perr := put(chunk); perr != nil {
				return perr
			}
			if err != nil && err != io.EOF {
				return err
			}
		}
		if err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
	}
}

// Buffers are pooled: a message is stripped three times on its way (checked,
// sent, filed), and 32 KiB buffers per call add up to most of the garbage.
var (
	readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 32<<10) }}
	copyPool   = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
)

// copyBody copies the rest of br to dst through a pooled buffer.
func copyBody(dst io.Writer, br *bufio.Reader) error {
	bp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bp)
	buf := *bp
	for {
		n, err := br.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

type physLine struct {
	first []byte // first chunk of the line (the whole line if !more)
	more  bool   // the line continues beyond first
}

// readPhysicalLine returns the first chunk of the next line. first is only
// valid until the next read from br.
func readPhysicalLine(br *bufio.Reader) (physLine, error) {
	b, more, err := readChunk(br)
	return physLine{first: b, more: more}, err
}

func readChunk(br *bufio.Reader) (b []byte, more bool, err error) {
	b, err = br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		return b, true, nil
	}
	return b, false, err
}

func isEmptyLine(b []byte) bool {
	return len(b) == 1 && b[0] == '\n' || len(b) == 2 && b[0] == '\r' && b[1] == '\n'
}

// fieldName returns the name of a header field line ("Name: value").
func fieldName(line []byte) (string, bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return "", false
	}
	name := bytes.TrimRight(line[:i], " \t") // obsolete syntax allows WSP before the colon
	for _, c := range name {
		if c <= ' ' || c >= 127 {
			return "", false
		}
	}
	return string(name), len(name) > 0
}

// IsSealedField reports whether name is a field of the sealed block,
// ignoring case: SealedField, or PadField, which pads it and leaves with it.
func IsSealedField(name string) bool {
	return equalFold(name, SealedField) || equalFold(name, PadField)
}

func equalFold(a, b string) bool { return len(a) == len(b) && bytes.EqualFold([]byte(a), []byte(b)) }

// StripSealed copies src to dst without the sealed header field(s). It is what
// the service sends and what it files in Sent.
func StripSealed(dst io.Writer, src io.Reader) error {
	_, err := Strip(dst, src, IsSealedField)
	return err
}
