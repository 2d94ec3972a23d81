package spool

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/smtpq/smtpq/pipeline/queuefile"
)

// FileCopy files a new copy of a message in dir (a Sent or Undeliverable
// folder) under name, or name-1, name-2... if the name is taken, and, if
// xmlLog is not nil, its XML log beside it under the same name with .xml.
// write writes the message; tmp names the temporary files in dir/.tmp (an
// id: unique among the writers of dir). Each file is synced before it is
// named and the folder after, so what FileCopy returns is durable. It is
// how a backend without a queue file of its own (the JetStream one) files
// its copies; the directory spool files its own by links and renames.
func FileCopy(dir, name, tmp string, write func(io.Writer) error, xmlLog []byte) (string, error) {
	tmpDir := filepath.Join(dir, queuefile.TmpDir)
	msgTmp := filepath.Join(tmpDir, tmp+queuefile.Ext)
	f, err := os.OpenFile(msgTmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return "", err
	}
	err = write(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	defer os.Remove(msgTmp)
	if err != nil {
		return "", err
	}
	for i := 0; i < 1000; i++ {
		n := suffixed(name, i)
		if xmlLog != nil {
			// The log first, under the name it shares with the message: a
			// log whose message is missing says a filing was cut short.
			logName := strings.TrimSuffix(n, queuefile.Ext) + ".xml"
			logTmp := filepath.Join(tmpDir, tmp+".xml")
			if err := writeFileSynced(logTmp, xmlLog); err != nil {
				os.Remove(logTmp)
				return "", fmt.Errorf("writing XML log: %w", err)
			}
			err := moveNoReplace(logTmp, filepath.Join(dir, logName))
			os.Remove(logTmp)
			if os.IsExist(err) {
				continue
			}
			if err != nil {
				return "", fmt.Errorf("filing XML log: %w", err)
			}
		}
		err := moveNoReplace(msgTmp, filepath.Join(dir, n))
		if os.IsExist(err) {
			if xmlLog != nil {
				os.Remove(filepath.Join(dir, strings.TrimSuffix(n, queuefile.Ext)+".xml"))
			}
			continue
		}
		if err != nil {
			return "", err
		}
		return filepath.Join(dir, n), queuefile.SyncDir(dir)
	}
	return "", fmt.Errorf("no free name for %s in %s", name, dir)
}

// Copier files new copies of messages in one folder, for a backend with
// no queue file to rename there (a stream node's Sent folder): each copy is
// an unnamed file (Linux's O_TMPFILE) while the file system allows it,
// named once written and synced, and the folder's fsync is shared by the
// filings that run at once; elsewhere it is FileCopy. An unnamed file
// costs no temporary name to create and rename away, and nothing is left
// behind by a crash. Its methods are safe for concurrent use.
type Copier struct {
	dir     string
	sync    *dirSync
	unnamed atomic.Bool // false once the file system refused an unnamed file
}

// NewCopier returns a Copier into dir.
func NewCopier(dir string) *Copier {
	c := &Copier{dir: dir, sync: newDirSync(dir)}
	c.unnamed.Store(true)
	return c
}

// Copy files a copy written by write under name, or name-1, name-2... if
// the name is taken, and returns its path once it is durable. tmp names
// the temporary file where FileCopy is used (an id).
func (c *Copier) Copy(name, tmp string, write func(io.Writer) error) (string, error) {
	if c.unnamed.Load() {
		p, err := c.copyUnnamed(name, write)
		if !errors.Is(err, errNoUnnamed) {
			return p, err
		}
		c.unnamed.Store(false)
	}
	return FileCopy(c.dir, name, tmp, write, nil)
}

func (c *Copier) copyUnnamed(name string, write func(io.Writer) error) (string, error) {
	f, err := createUnnamed(c.dir)
	if err != nil {
		return "", err
	}
	defer f.Close()
	if err := write(f); err != nil {
		return "", err
	}
	if err := f.Sync(); err != nil {
		return "", err
	}
	n, err := linkFree(c.dir, c.dir, name, func(p string) error { return linkUnnamed(f, p) }, c.sync)
	if err != nil {
		return "", err
	}
	return filepath.Join(c.dir, n), nil
}
