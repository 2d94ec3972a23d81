package spool

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestCopierFilesDurableCopiesUnderFreeNames(t *testing.T) {
	for _, unnamed := range []bool{true, false} {
		t.Run(map[bool]string{true: "unnamed", false: "temporary file"}[unnamed], func(t *testing.T) {
			dir := t.TempDir()
			if err := os.MkdirAll(filepath.Join(dir, ".tmp"), 0o750); err != nil {
				t.Fatal(err)
			}
			c := NewCopier(dir)
			c.unnamed.Store(unnamed)
			// Eight filings at once of messages of one name: each gets a
			// name of its own, none is lost or overwritten.
			const n = 8
			paths := make([]string, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					p, err := c.Copy("m.eml", "id"+string(rune('a'+i)), func(w io.Writer) error {
						_, err := io.WriteString(w, "message "+string(rune('a'+i)))
						return err
					})
					if err != nil {
						t.Error(err)
					}
					paths[i] = p
				})
			}
			wg.Wait()
			seen := map[string]bool{}
			for i, p := range paths {
				b, err := os.ReadFile(p)
				if err != nil || string(b) != "message "+string(rune('a'+i)) {
					t.Errorf("copy %d at %s: %q, %v", i, p, b, err)
				}
				seen[filepath.Base(p)] = true
			}
			if len(seen) != n || !seen["m.eml"] || !seen["m-7.eml"] {
				t.Errorf("names %v, want m.eml to m-7.eml", seen)
			}
			if left, _ := os.ReadDir(filepath.Join(dir, ".tmp")); len(left) != 0 {
				t.Errorf("temporary files left: %v", left)
			}
		})
	}
}

func TestCopierWriteErrorLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, ".tmp"), 0o750); err != nil {
		t.Fatal(err)
	}
	c := NewCopier(dir)
	broken := errors.New("the message could not be read")
	_, err := c.Copy("m.eml", "id", func(w io.Writer) error {
		io.WriteString(w, "half a mess")
		return broken
	})
	if !errors.Is(err, broken) {
		t.Fatalf("Copy returned %v, want the writer's error", err)
	}
	if es, _ := os.ReadDir(dir); len(es) != 1 || es[0].Name() != ".tmp" {
		t.Errorf("left in the folder: %v", es)
	}
}
