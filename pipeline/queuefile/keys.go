package queuefile

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"filippo.io/age"
)

// maxKeyFile bounds what is read from a key file; real ones are a few lines.
const maxKeyFile = 64 << 10

// LoadIdentities reads the service's private age identities from the given
// files, in order (rotation: the current key first, older ones after, so that
// files sealed to an old recipient still open). Each file must be a regular
// file (not a symlink), owned by the user running the service and readable by
// that user only; otherwise the error names the file and the reason.
func LoadIdentities(paths ...string) ([]age.Identity, error) {
	if len(paths) == 0 {
		return nil, errors.New("no identity_file configured")
	}
	var ids []age.Identity
	for _, p := range paths {
		b, err := readPrivateFile(p)
		if err != nil {
			return nil, err
		}
		got, err := age.ParseIdentities(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("identity file %s: not an age identity file: %v", p, err)
		}
		for _, id := range got {
			fast, err := fastIdentity(id)
			if err != nil {
				return nil, fmt.Errorf("identity file %s: %v", p, err)
			}
			ids = append(ids, fast)
		}
	}
	return ids, nil
}

func readPrivateFile(path string) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("identity file: %w", err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return nil, fmt.Errorf("identity file %s: is a symlink; point the config at the file itself", path)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("identity file %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	if err := checkPrivate(path, fi); err != nil {
		return nil, fmt.Errorf("identity file %s: %w", path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("identity file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, fmt.Errorf("identity file %s: %w", path, err)
	}
	if len(b) > maxKeyFile {
		return nil, fmt.Errorf("identity file %s: larger than %d bytes, not a key file", path, maxKeyFile)
	}
	return b, nil
}

// maxSecretFile bounds what is read from a password or token file.
const maxSecretFile = 64 << 10

// ReadSecretFile reads a password or token from the first line of a small
// file, without its line ending. Errors name the file, never its content.
func ReadSecretFile(path string) (Secret, error) {
	f, err := os.Open(path)
	if err != nil {
		return Secret{}, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		return Secret{}, fmt.Errorf("%s: is a directory", path)
	}
	br := bufio.NewReader(io.LimitReader(f, maxSecretFile))
	line, err := br.ReadString('\n')
	if err != nil && err != io.EOF {
		return Secret{}, fmt.Errorf("%s: %w", path, err)
	}
	if err == io.EOF && len(line) == maxSecretFile {
		return Secret{}, fmt.Errorf("%s: first line longer than %d bytes", path, maxSecretFile)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return Secret{}, fmt.Errorf("%s: the first line is empty", path)
	}
	if strings.ContainsAny(line, "\r\x00") {
		return Secret{}, fmt.Errorf("%s: the first line contains a CR or NUL character", path)
	}
	return NewSecret(line), nil
}

// LoadRecipients reads the public age recipients (one per line, # comments
// allowed) that producers seal to.
func LoadRecipients(path string) ([]age.Recipient, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("recipient file: %w", err)
	}
	defer f.Close()
	rs, err := age.ParseRecipients(io.LimitReader(f, maxKeyFile))
	if err != nil {
		return nil, fmt.Errorf("recipient file %s: %v", path, err)
	}
	return rs, nil
}

// GenerateKeys creates a new X25519 identity at identityPath (mode 0600) and
// its public recipient at recipientPath (mode 0644). It refuses to overwrite
// either file; on error it leaves neither behind.
func GenerateKeys(identityPath, recipientPath string) (recipient string, err error) {
	for _, p := range []string{identityPath, recipientPath} {
		if _, err := os.Lstat(p); err == nil {
			return "", fmt.Errorf("%s already exists; refusing to overwrite a key", p)
		}
	}
	id, err := age.GenerateX25519Identity()
	if err != nil {
		return "", err
	}
	rcpt := id.Recipient().String()
	// The public key's folder is made first, open to all: producers
	// running as other users (PHP as www-data) must reach the file. The
	// private key is kept by its own mode, 0600, wherever it is.
	rdir := filepath.Dir(recipientPath)
	if _, err := os.Stat(rdir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(rdir, 0o755); err != nil {
			return "", err
		}
		if err := os.Chmod(rdir, 0o755); err != nil { // whatever the umask
			return "", err
		}
	}
	if err := os.MkdirAll(filepath.Dir(identityPath), 0o700); err != nil {
		return "", err
	}
	idText := fmt.Sprintf("# smtpq identity: keep private (mode 0600)\n# public key: %s\n%s\n", rcpt, id)
	if err := writeNew(identityPath, idText, 0o600); err != nil {
		return "", err
	}
	if err := writeNew(recipientPath, fmt.Sprintf("# smtpq public key: give this file to producers\n%s\n", rcpt), 0o644); err != nil {
		os.Remove(identityPath)
		return "", err
	}
	// Readable by every producer whatever the umask (it is public).
	if err := os.Chmod(recipientPath, 0o644); err != nil {
		os.Remove(identityPath)
		os.Remove(recipientPath)
		return "", err
	}
	return rcpt, nil
}

func writeNew(path, text string, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	_, err = f.WriteString(text)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
	}
	return err
}
