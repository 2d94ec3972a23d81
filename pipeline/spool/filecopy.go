package spool

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

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
