package spool

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smtpq/smtpq/stages"
)

// FuzzSpoolNames drops files with any names a file system allows (up to 255
// bytes, colliding with messages in flight, deferred or filed) and drives
// the spool as the Scanner and the Archiver do, with a fake server deciding
// each attempt from the input: every message dropped ends in Sent or
// Undeliverable exactly once, under its own name (or name-N), with its own
// content.
func FuzzSpoolNames(f *testing.F) {
	f.Add([]byte("report.eml\x00report.eml\x00daily.eml"), []byte{0, 1, 2, 3})
	f.Add([]byte("a b.eml\x00x\nall y.eml\x00"+strings.Repeat("n", 300)), []byte{2, 2, 0, 1, 3})
	f.Add([]byte("\xff\xfe.eml\x00.hidden.eml\x00no-ext\x00\xff\xfe.eml"), []byte{1, 0, 2})
	f.Fuzz(func(t *testing.T, names []byte, plan []byte) {
		d := testDirs(t)
		s, err := Open(d, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		want := map[string]string{} // content -> the name it was dropped under
		step := 0
		decide := func() byte {
			if len(plan) == 0 {
				return 0
			}
			b := plan[step%len(plan)]
			step++
			return b % 4
		}
		var inFlight []*stages.Job
		// settle files whatever is in flight as the fake server decides:
		// 0 sent, 1 undeliverable, 2 deferred (due at once), 3 returned.
		settle := func(final bool) {
			for _, j := range inFlight {
				j.Kind = stages.KindPickup
				what := decide()
				if final && what >= 2 {
					what %= 2
				}
				switch what {
				case 0:
					_, err = s.FileSent(j, false)
				case 1:
					_, err = s.FileUndeliverable(j, []byte("<smtpqLog/>"))
				case 2:
					err = s.Defer(j, time.Now().Add(-time.Second))
				case 3:
					err = s.Return(j)
				}
				if err != nil {
					t.Fatalf("filing %q (id %s): %v", j.Name, j.ID, err)
				}
			}
			inFlight = inFlight[:0]
		}
		claim := func() {
			_, err := s.Scan(t.Context(), time.Now(), nil, func(j *stages.Job) bool {
				inFlight = append(inFlight, j)
				return true
			})
			if err != nil {
				t.Fatalf("scan: %v", err)
			}
		}
		for i, raw := range strings.Split(string(names), "\x00") {
			if i >= 12 {
				break
			}
			name := fuzzFileName(raw)
			if name == "" {
				continue
			}
			content := fmt.Sprintf("message %d", i)
			// A producer that writes over its own file still waiting in
			// queue_dir replaces it: that is its doing, so drop only new
			// names there (O_EXCL). Names in flight are fair game.
			fh, err := os.OpenFile(filepath.Join(d.Queue, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
			if err != nil {
				continue // taken, or a name this file system refuses: nothing dropped
			}
			_, err = fh.WriteString(content)
			if cerr := fh.Close(); err != nil || cerr != nil {
				t.Fatal(err, cerr)
			}
			want[content] = name
			if decide()%2 == 0 {
				claim() // claimed: the next file of that name collides with it in flight
			}
			if decide() == 0 {
				settle(false)
			}
		}
		for range 20 { // deferrals and returns come back; the last round files all
			claim()
			settle(false)
		}
		for range 3 {
			claim()
			settle(true)
		}
		got := map[string]int{}
		for _, dir := range []string{d.Sent, d.Undeliverable} {
			for _, n := range pipelineFiles(t, dir) {
				if strings.HasSuffix(n, ".xml") {
					continue
				}
				b, _ := os.ReadFile(filepath.Join(dir, n))
				got[string(b)]++
				orig := want[string(b)]
				if orig == "" {
					t.Errorf("%q filed with unknown content %q", n, b)
					continue
				}
				if n != orig && !strings.HasPrefix(n, strings.TrimSuffix(orig, ".eml")[:min(len(orig)-4, 200)]) {
					t.Errorf("%q filed as %q", orig, n)
				}
			}
		}
		for content, name := range want {
			if got[content] != 1 {
				t.Errorf("%q (%s) filed %d times, want once", name, content, got[content])
			}
		}
		var left []string
		s.forEachWorking(func(w string) { left = append(left, w) })
		if len(left) > 0 {
			t.Errorf("left in the queue: %q", left)
		}
	})
}

// fuzzFileName makes raw a name a file system allows that the service
// picks up: no slash or NUL, not . or .., ending in .eml, at most 255
// bytes; "" if that leaves nothing.
func fuzzFileName(raw string) string {
	n := strings.NewReplacer("/", "_", "\x00", "_").Replace(raw)
	if !strings.HasSuffix(n, ".eml") {
		n += ".eml"
	}
	if len(n) > 255 {
		n = n[len(n)-255:]
	}
	if strings.HasPrefix(n, ".") {
		return "" // hidden: never picked up, by design
	}
	return n
}
