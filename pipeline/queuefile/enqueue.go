package queuefile

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"filippo.io/age"
)

// TmpDir is the queue's private folder for files being written. Names that
// start with a dot are never picked up by the service.
const TmpDir = ".tmp"

// Ext is the extension of a queue file; nothing else is picked up.
const Ext = ".eml"

// MaxHeaderSection bounds the header section that Enqueue reads into memory
// to find addresses. The body is streamed and not bounded here.
const MaxHeaderSection = 1 << 20

// Queue is a queue directory as a producer sees it.
type Queue struct {
	Dir        string          // the service's queue_dir
	Recipients []age.Recipient // the service's public key(s)
	// Now returns the current time; nil means time.Now. Tests inject a clock.
	Now func() time.Time
	// Publish, if set, takes each sealed message instead of Dir: the queue
	// file's name and bytes, as they would be written, for a queue that is
	// a stream (pipeline/spool/stream.Publish). It returns the name
	// Enqueue returns, once the message is stored durably. Dir still holds
	// the temporary file of the message being sealed.
	Publish func(name string, sealed []byte) (string, error)
	// PublishFrom, if set, is used instead of Publish and reads the sealed
	// message from r, size bytes, instead of taking it in memory: a large
	// message is then never held whole (pipeline/spool/stream.PublishReader
	// streams one that is too large for a NATS message into the object
	// store). r is only valid during the call.
	PublishFrom func(name string, r io.Reader, size int64) (string, error)
}

// Enqueue seals p into msg and puts the result into the queue. It returns the
// queued file's name (not path), by which the message can be followed.
//
// When p.To is empty the recipients are taken from the To, Cc and Bcc header
// fields and the Bcc fields are removed from the queued message. When p.From
// is empty the sender is taken from the Sender field, else the first From
// address. Apart from the Bcc removal, the message is queued byte for byte.
//
// What the service would refuse to open, or would read back otherwise, is
// refused here: parameters whose seal would be over MaxFieldSize (too many
// recipients, a huge token) with ErrSealTooLarge, and any address, name or
// credential that is not UTF-8 with ErrNotUTF8; the checks of
// Params.Validate apply as well.
//
// The file is written under Dir/.tmp, fsynced, renamed into Dir and the
// directory fsynced; on any error nothing is left where the service could pick
// it up.
func (q *Queue) Enqueue(msg io.Reader, p Params) (name string, err error) {
	if len(q.Recipients) == 0 {
		return "", errors.New("enqueue: no public key (recipient_file) to seal to")
	}
	br := bufio.NewReaderSize(msg, 32<<10)
	hdr, err := readHeaderSection(br)
	if err != nil {
		return "", fmt.Errorf("enqueue: reading message: %w", err)
	}
	// The fields that say who sends to whom, read by go-message (any other
	// field, of any size, is passed through as it is).
	all, err := Strip(io.Discard, bytes.NewReader(hdr), func(n string) bool {
		return IsSealedField(n) || hasKey(n, addressFields)
	})
	if err != nil {
		return "", fmt.Errorf("enqueue: reading message: %w", err)
	}
	fields := all.Removed
	if fields.Has(SealedField) || fields.Has(PadField) {
		return "", fmt.Errorf("enqueue: %w: the message is already sealed", ErrDuplicateSeal)
	}
	fromHeaders := len(p.To) == 0
	if fromHeaders {
		if p.To, err = headerRecipients(fields); err != nil {
			return "", fmt.Errorf("enqueue: %w", err)
		}
	}
	if p.From == "" {
		if p.From, err = headerSender(fields); err != nil {
			return "", fmt.Errorf("enqueue: %w", err)
		}
	}
	p.Digest, p.Size = "", 0
	if err := p.Validate(); err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	if err := checkSealable(&p); err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}

	tmpDir := filepath.Join(q.Dir, TmpDir)
	if err := MakeTmpDir(q.Dir); err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	if name, err = q.newName(&p); err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}

	// The message without the seal goes to a body file first: its digest must
	// be known before the seal, which comes first in the file, can be made.
	bodyPath := filepath.Join(tmpDir, name+".body")
	body, err := os.OpenFile(bodyPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	defer func() {
		body.Close()
		os.Remove(bodyPath)
	}()
	h := sha256.New()
	cw := &CountWriter{W: io.MultiWriter(body, h)}
	drop := func(string) bool { return false }
	if fromHeaders {
		drop = func(n string) bool { return equalFold(n, "Bcc") }
	}
	if _, err := Strip(cw, io.MultiReader(bytes.NewReader(hdr), br), drop); err != nil {
		return "", fmt.Errorf("enqueue: reading message: %w", err)
	}
	p.Digest, p.Size = hex.EncodeToString(h.Sum(nil)), cw.N

	seal, err := SealHeader(&p, lineEnding(hdr), q.Recipients...)
	if err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	if len(seal) > MaxFieldSize {
		return "", fmt.Errorf("enqueue: %w", sealTooLarge(&p, len(seal), false))
	}
	if q.PublishFrom != nil {
		if _, err := body.Seek(0, io.SeekStart); err != nil {
			return "", fmt.Errorf("enqueue: %w", err)
		}
		return q.PublishFrom(name, io.MultiReader(bytes.NewReader(seal), body), int64(len(seal))+cw.N)
	}
	if q.Publish != nil {
		b, err := sealedBytes(seal, body, cw.N)
		if err != nil {
			return "", fmt.Errorf("enqueue: %w", err)
		}
		return q.Publish(name, b)
	}
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return "", fmt.Errorf("enqueue: %w", err)
	}
	return name, q.commit(name, seal, lineEnding(hdr), body)
}

// newName returns a new queue-file name for p: NewName with the route tag
// of p for the service's key.
func (q *Queue) newName(p *Params) (string, error) {
	now := time.Now
	if q.Now != nil {
		now = q.Now
	}
	name, err := NewName(now())
	if err != nil {
		return "", err
	}
	if len(q.Recipients) > 0 {
		if tag := RouteTag(q.Recipients[0], p); tag != "" {
			name = strings.TrimSuffix(name, Ext) + "+" + tag + Ext
		}
	}
	return name, nil
}

// commit puts the queue file name into q.Dir: the seal, padded to whole
// blocks so that the service can cut the sealed block off in place
// (PadField), then the message from body, written under .tmp, fsynced,
// renamed into place and the folder fsynced. On any error nothing is left
// where the service could pick it up.
func (q *Queue) commit(name string, seal []byte, eol string, body io.Reader) error {
	tmpPath := filepath.Join(q.Dir, TmpDir, name)
	if err := writeFileSync(tmpPath, io.MultiReader(bytes.NewReader(PadSeal(seal, eol, SealBlock)), body)); err != nil {
		os.Remove(tmpPath)
		return fmt.Errorf("enqueue: %w", err)
	}
	if err := os.Rename(tmpPath, filepath.Join(q.Dir, name)); err != nil {
		os.Remove(tmpPath)
		return fmt.Errorf("enqueue: %w", err)
	}
	if err := SyncDir(q.Dir); err != nil {
		return fmt.Errorf("enqueue: %s is queued but the directory sync failed: %w", name, err)
	}
	return nil
}

// ErrSealTooLarge is returned by Enqueue when the sealed parameters would
// make an X-SmtpQ-Sealed field longer than MaxFieldSize. The service refuses
// to open such a file (ErrFieldTooLong), so it is refused here rather than
// queued to end in Undeliverable. Its message says what made it large.
var ErrSealTooLarge = errors.New("sealed parameters too large")

// ErrNotUTF8 is returned by Enqueue for an address, name or credential that
// is not valid UTF-8: the seal would change it (see checkSealable).
var ErrNotUTF8 = errors.New("not valid UTF-8")

// checkSealable refuses parameters that the service would not get back as
// given or could not open. The seal is JSON, and encoding/json turns invalid
// UTF-8 into U+FFFD: an address that is not UTF-8 would be another mailbox
// by the time it is sent, a password another password. And before the
// message is read, a lower bound of the sealed field's size refuses
// parameters that cannot fit whatever the message (the exact size is
// checked once the seal is made).
func checkSealable(p *Params) error {
	for _, f := range []struct {
		what, v string
		show    bool // the value may be quoted in the error
	}{
		{"relay profile", p.Relay, true}, {"host", p.Host, true}, {"user name", p.Username, true},
		{"password", p.Password.Reveal(), false}, {"OAuth2 token", p.OAuth2Token.Reveal(), false},
		{"HELO name", p.HELO, true}, {"sender", p.From, true},
	} {
		if utf8.ValidString(f.v) {
			continue
		}
		if f.show {
			return fmt.Errorf("%s %.80q: %w", f.what, f.v, ErrNotUTF8)
		}
		return fmt.Errorf("%s: %w", f.what, ErrNotUTF8)
	}
	for _, a := range p.To {
		if !utf8.ValidString(a) {
			return fmt.Errorf("recipient %.80q: %w", a, ErrNotUTF8)
		}
	}
	probe := *p
	probe.Digest = strings.Repeat("0", sha256.Size*2)
	plain, err := json.Marshal(probe.toWire())
	if err != nil {
		return err
	}
	if n := minSealedFieldSize(len(plain)); n > MaxFieldSize {
		return sealTooLarge(p, n, true)
	}
	return nil
}

// minSealedFieldSize is a lower bound of the size of the sealed field for
// plain bytes of JSON: age adds at least a 16-byte nonce and a 16-byte tag,
// base64 takes 4 bytes for 3, and each folded line a space and a line end.
func minSealedFieldSize(plain int) int {
	b64 := base64.StdEncoding.EncodedLen(plain + 32)
	lines := (b64 + foldWidth - 1) / foldWidth
	return len(SealedField+": v1\n") + b64 + 2*lines
}

// sealTooLarge returns ErrSealTooLarge with the size (at least size, when
// atLeast), the limit, and the largest of the parameters. Credentials are
// named, never shown.
func sealTooLarge(p *Params, size int, atLeast bool) error {
	recipients := 0
	for _, a := range p.To {
		recipients += len(a) + 3 // quoted, and a comma
	}
	biggest := fmt.Sprintf("%d recipients take %d bytes of it: split them over several messages", len(p.To), recipients)
	most := recipients
	for _, f := range []struct {
		what string
		n    int
	}{
		{"the password", len(p.Password.Reveal())}, {"the OAuth2 token", len(p.OAuth2Token.Reveal())},
		{"the user name", len(p.Username)}, {"the HELO name", len(p.HELO)},
		{"the relay profile name", len(p.Relay)}, {"the host name", len(p.Host)}, {"the sender", len(p.From)},
	} {
		if f.n > most {
			most = f.n
			biggest = fmt.Sprintf("%s takes %d bytes of it", f.what, f.n)
		}
	}
	would := "would be"
	if atLeast {
		would = "would be at least"
	}
	return fmt.Errorf("%w: the %s field %s %d bytes, over the service's limit of %d (queuefile.MaxFieldSize); %s",
		ErrSealTooLarge, SealedField, would, size, MaxFieldSize, biggest)
}

// MakeTmpDir creates queueDir/.tmp if needed, with the same permission bits
// as queueDir itself, so that producers who may write into the queue folder
// (say, its group) may write into .tmp too.
func MakeTmpDir(queueDir string) error {
	tmp := filepath.Join(queueDir, TmpDir)
	if _, err := os.Stat(tmp); err == nil {
		return nil
	}
	if err := os.MkdirAll(queueDir, 0o750); err != nil {
		return err
	}
	fi, err := os.Stat(queueDir)
	if err != nil {
		return err
	}
	if err := os.Mkdir(tmp, 0o700); err != nil && !os.IsExist(err) {
		return err
	}
	return os.Chmod(tmp, fi.Mode().Perm()|fi.Mode()&os.ModeSetgid)
}

// sealedBytes returns the queue file's bytes: the seal, then the n bytes of
// body.
func sealedBytes(seal []byte, body *os.File, n int64) ([]byte, error) {
	b := make([]byte, len(seal), int64(len(seal))+n)
	copy(b, seal)
	if _, err := body.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	w := bytes.NewBuffer(b)
	if _, err := io.Copy(w, body); err != nil {
		return nil, err
	}
	return w.Bytes(), nil
}

// WriteFileSync creates path (never replacing an existing file) holding b,
// mode 0640 as queue files are, and fsyncs it. The caller renames it into
// place and fsyncs the folder (SyncDir).
func WriteFileSync(path string, b []byte) error { return writeFileSync(path, bytes.NewReader(b)) }

// writeFileSync is WriteFileSync from a reader. Group-readable: the service
// may run as another user in the queue folder's group; the credentials in a
// queue file are sealed.
func writeFileSync(path string, r io.Reader) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, r)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// addressFields are the fields Enqueue reads addresses from.
var addressFields = []string{"To", "Cc", "Bcc", "Sender", "From"}

// readHeaderSection reads up to and including the empty line that ends the
// header section.
func readHeaderSection(br *bufio.Reader) ([]byte, error) {
	var hdr []byte
	inLine := false // the previous read ended inside a line longer than br's buffer
	for {
		line, err := br.ReadSlice('\n')
		hdr = append(hdr, line...)
		if len(hdr) > MaxHeaderSection {
			return nil, fmt.Errorf("header section longer than %d bytes", MaxHeaderSection)
		}
		if err == bufio.ErrBufferFull {
			inLine = true
			continue
		}
		if err == io.EOF {
			if len(hdr) == 0 {
				return nil, errors.New("empty message")
			}
			return nil, ErrNoSeparator
		}
		if err != nil {
			return nil, err
		}
		if !inLine && isEmptyLine(line) {
			if len(hdr) == len(line) {
				return nil, errors.New("message has no header fields")
			}
			return hdr, nil
		}
		if len(hdr) == len(line) && (line[0] == ' ' || line[0] == '\t') {
			return nil, errors.New("message starts with a continuation line")
		}
		inLine = false
	}
}

func lineEnding(hdr []byte) string {
	if i := bytes.IndexByte(hdr, '\n'); i > 0 && hdr[i-1] == '\r' {
		return "\r\n"
	}
	return "\n"
}

var nameEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// NewName returns a unique queue-file name that sorts by time:
// 20261127T153826.123456789Z-<random>.eml.
func NewName(t time.Time) (string, error) {
	var rnd [10]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", err
	}
	return t.UTC().Format(nameTimeLayout) + "-" + nameEncoding.EncodeToString(rnd[:]) + Ext, nil
}

// nameTimeLayout is the time at the start of a queue-file name.
const nameTimeLayout = "20060102T150405.000000000Z"

// NameTime reads the enqueue time from a queue-file name made by NewName;
// ok is false for a name that carries none (a file dropped by hand).
func NameTime(name string) (t time.Time, ok bool) {
	i := strings.IndexByte(name, '-')
	if i < 0 {
		return time.Time{}, false
	}
	t, err := time.Parse(nameTimeLayout, name[:i])
	return t, err == nil
}

// IsQueueName reports whether a directory entry name is one the service picks
// up: not hidden, ending in .eml, no path separators.
func IsQueueName(name string) bool {
	return len(name) > len(Ext) && name[0] != '.' && strings.HasSuffix(name, Ext) &&
		!strings.ContainsAny(name, `/\`)
}
