package stream_test

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/smtpq/smtpq/pipeline/natstest"
	"github.com/smtpq/smtpq/pipeline/spool/stream"
)

// smallPayload is the test servers' max_payload: a few MiB is many times
// over it.
const smallPayload = 64 << 10

// bigMessage is a message of n bytes: a header section, then random-looking
// lines (not one repeated block, so a chunk out of place shows).
func bigMessage(n int) []byte {
	b := make([]byte, 0, n)
	b = append(b, "From: a@example.org\r\nTo: b@example.org\r\nSubject: big\r\n\r\n"...)
	r := rand.New(rand.NewPCG(1, 2))
	const alpha = "abcdefghijklmnopqrstuvwxyz0123456789"
	for len(b) < n {
		line := min(76, n-len(b))
		for i := 0; i < line-2; i++ {
			b = append(b, alpha[r.IntN(len(alpha))])
		}
		b = append(b, "\r\n"[max(0, 2-line):]...)
	}
	return b[:n]
}

// objects lists the names of the objects in the big bucket.
func objects(t *testing.T, js jetstream.JetStream) []string {
	t.Helper()
	obs, err := js.ObjectStore(t.Context(), stream.BigBucket(""))
	if err != nil {
		t.Fatal(err)
	}
	list, err := obs.List(t.Context())
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, o := range list {
		names = append(names, o.Name)
	}
	return names
}

// A message over the server's max_payload is published through the object
// store: claimed, it reads back byte for byte and stats at its size; filed
// as sent, its copy is exact and its object is gone.
func TestBigMessageFileSent(t *testing.T) {
	js := connect(t, natstest.NewServer(t, natstest.WithMaxPayload(smallPayload)).URL())
	s := node(t, js, stream.Config{})
	body := bigMessage(3<<20 + 12345)
	id, err := stream.PublishReader(t.Context(), js, "", "big.eml", bytes.NewReader(body), int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	if got := objects(t, js); len(got) != 1 || got[0] != id {
		t.Fatalf("objects after the publish: %v, want [%s]", got, id)
	}
	jobs := fetch(t, s, 1)
	if len(jobs) != 1 {
		t.Fatalf("claimed %d jobs, want 1", len(jobs))
	}
	job := jobs[0]
	if job.ID != id || job.Name != "big.eml" {
		t.Fatalf("claimed %q %q, want %q big.eml", job.ID, job.Name, id)
	}
	if fi, err := job.Msg.Stat(); err != nil || fi.Size() != int64(len(body)) || !fi.Mode().IsRegular() || time.Since(fi.ModTime()) > time.Minute {
		t.Fatalf("stat: %v, %v", fi, err)
	}
	if got := read(t, job); got != string(body) {
		t.Fatalf("read back %d bytes, not the %d published", len(got), len(body))
	}
	if got := read(t, job); got != string(body) { // opened again, as the Sender does after the Parser
		t.Fatal("a second read differs")
	}
	path, err := s.FileSent(job, false)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || !bytes.Equal(b, body) {
		t.Fatalf("Sent copy: %d bytes, %v; want the %d published", len(b), err, len(body))
	}
	if got := objects(t, js); len(got) != 0 {
		t.Errorf("objects left after filing: %v", got)
	}
	waitEmpty(t, js)
}

// Publish with bytes over the limit takes the same way; a publish retried
// under the same id stores the message once and its object still reads
// back whole. Filed as undeliverable, the copy is streamed from the object.
func TestBigMessageRetriedAndUndeliverable(t *testing.T) {
	js := connect(t, natstest.NewServer(t, natstest.WithMaxPayload(smallPayload)).URL())
	s := node(t, js, stream.Config{})
	body := bigMessage(1 << 20)
	const id = "0123456789abcdef"
	for range 2 {
		if err := stream.PublishAs(t.Context(), js, "", id, "retried.eml", body); err != nil {
			t.Fatal(err)
		}
	}
	jobs := fetch(t, s, 1)
	if len(jobs) != 1 {
		t.Fatalf("claimed %d jobs, want 1", len(jobs))
	}
	if read(t, jobs[0]) != string(body) {
		t.Fatal("the object does not read back after a retried publish")
	}
	path, err := s.FileUndeliverable(jobs[0], []byte("<log/>"))
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, body) {
		t.Errorf("Undeliverable copy: %d bytes, want %d", len(b), len(body))
	}
	if got := objects(t, js); len(got) != 0 {
		t.Errorf("objects left after filing: %v", got)
	}
	waitEmpty(t, js) // the retry was stored once: nothing more to claim
}

// A held large message keeps its object: the held copy refers to it.
// Deferred, it comes back and still reads.
func TestBigMessageDeferAndHold(t *testing.T) {
	js := connect(t, natstest.NewServer(t, natstest.WithMaxPayload(smallPayload)).URL())
	s := node(t, js, stream.Config{})
	body := bigMessage(512 << 10)
	id, err := stream.Publish(t.Context(), js, "", "held.eml", body)
	if err != nil {
		t.Fatal(err)
	}
	job := fetch(t, s, 1)[0]
	if err := s.Defer(job, time.Now().Add(100*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	again := fetch(t, s, 1)
	if len(again) != 1 || read(t, again[0]) != string(body) {
		t.Fatal("a deferred large message did not come back whole")
	}
	if err := s.Hold(again[0]); err != nil {
		t.Fatal(err)
	}
	if got := objects(t, js); len(got) != 1 || got[0] != id {
		t.Fatalf("objects after a hold: %v, want [%s]", got, id)
	}
	str, err := js.Stream(t.Context(), stream.DefaultStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := str.GetLastMsgForSubject(t.Context(), stream.DefaultStream+".held."+id)
	if err != nil || m.Header.Get(stream.HeaderObject) != id || len(m.Data) != 0 {
		t.Fatalf("held copy: %v, object header %q", err, m.Header.Get(stream.HeaderObject))
	}
}

// On an R3 cluster, where any replica may answer a chunk's read, large
// messages published just before read back whole.
func TestBigMessageReplicated(t *testing.T) {
	c := natstest.NewCluster(t, 3, natstest.WithMaxPayload(smallPayload))
	js := connect(t, c.URLs()...)
	s := node(t, js, stream.Config{Replicas: 3})
	bodies := map[string][]byte{}
	for i := range 3 {
		body := bigMessage(1<<20 + i*1000)
		id, err := stream.PublishReader(t.Context(), js, "", fmt.Sprintf("r%d.eml", i), bytes.NewReader(body), int64(len(body)))
		if err != nil {
			t.Fatal(err)
		}
		bodies[id] = body
	}
	for _, job := range fetch(t, s, len(bodies)) {
		if read(t, job) != string(bodies[job.ID]) {
			t.Errorf("%s does not read back whole", job.Name)
		}
		if _, err := s.FileSent(job, true); err != nil {
			t.Fatal(err)
		}
		delete(bodies, job.ID)
	}
	if len(bodies) != 0 {
		t.Errorf("%d messages not claimed", len(bodies))
	}
}

// A message that gives other than the size it was announced with is not
// published (a dropped file that changed while it was read).
func TestPublishReaderSizeMismatch(t *testing.T) {
	js := connect(t, natstest.NewServer(t, natstest.WithMaxPayload(smallPayload)).URL())
	if _, _, err := stream.Setup(t.Context(), js, "", 1); err != nil {
		t.Fatal(err)
	}
	body := bigMessage(300 << 10)
	for _, size := range []int64{int64(len(body)) - 1, int64(len(body)) + 1, 100} {
		if _, err := stream.PublishReader(t.Context(), js, "", "x.eml", bytes.NewReader(body), size); err == nil || !strings.Contains(err.Error(), "changed") {
			t.Errorf("size %d for %d bytes: %v", size, len(body), err)
		}
	}
	if got := objects(t, js); len(got) != 0 {
		t.Errorf("objects left by refused publishes: %v", got)
	}
}

// Reading a large message holds one chunk at a time, not the message: the
// heap in use while a 64 MiB message is published from a reader, then read
// through Open, stays a small fraction of its size. This is a property of
// memory, not of speed. The NATS server runs in another process, so that
// its caches do not count.
func TestBigMessageBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 64 MiB through NATS")
	}
	const size = 64 << 20
	js := connect(t, serverProcess(t))
	s := node(t, js, stream.Config{})

	// Collect often, so that the heap in use is about what is live, not
	// garbage a collection would free.
	defer debug.SetGCPercent(debug.SetGCPercent(10))
	peak := newPeakHeap()
	src := &genReader{left: size, r: rand.New(rand.NewPCG(3, 4)), peak: peak}
	want := sha256.New()
	id, err := stream.PublishReader(t.Context(), js, "", "huge.eml", io.TeeReader(src, want), size)
	if err != nil {
		t.Fatal(err)
	}
	pubPeak := peak.max - peak.base

	job := fetch(t, s, 1)[0]
	if job.ID != id {
		t.Fatalf("claimed %s, want %s", job.ID, id)
	}
	peak = newPeakHeap()
	r, err := job.Msg.Open()
	if err != nil {
		t.Fatal(err)
	}
	got := sha256.New()
	n, err := io.Copy(&peakWriter{w: got, peak: peak}, r)
	r.Close()
	if err != nil || n != size {
		t.Fatalf("read %d bytes, %v; want %d", n, err, size)
	}
	readPeak := peak.max - peak.base
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("the message read back differs from the one published")
	}
	t.Logf("heap in use above the start: publishing %d KiB, reading %d KiB, for a %d KiB message", pubPeak>>10, readPeak>>10, size>>10)
	for what, p := range map[string]int64{"publishing": pubPeak, "reading": readPeak} {
		if p > size/16 {
			t.Errorf("%s a %d MiB message: heap grew by %d MiB", what, size>>20, p>>20)
		}
	}
	if _, err := s.FileSent(job, true); err != nil {
		t.Fatal(err)
	}
	if got := objects(t, js); len(got) != 0 {
		t.Errorf("objects left after filing: %v", got)
	}
}

// peakHeap samples the heap in use, after a collection, every few MiB.
type peakHeap struct {
	base, max int64
	since     int64
}

func newPeakHeap() *peakHeap {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return &peakHeap{base: int64(ms.HeapInuse), max: int64(ms.HeapInuse)}
}

func (p *peakHeap) add(n int) {
	p.since += int64(n)
	if p.since < 4<<20 {
		return
	}
	p.since = 0
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms) // not after a GC: what is live and not yet collected counts too
	p.max = max(p.max, int64(ms.HeapInuse))
}

type peakWriter struct {
	w    io.Writer
	peak *peakHeap
}

func (w *peakWriter) Write(b []byte) (int, error) {
	w.peak.add(len(b))
	return w.w.Write(b)
}

// genReader gives left pseudo-random bytes without holding them.
type genReader struct {
	left int64
	r    *rand.Rand
	peak *peakHeap
}

func (g *genReader) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), g.left)]
	for i := range p {
		p[i] = byte('a' + g.r.IntN(26))
	}
	g.left -= int64(len(p))
	g.peak.add(len(p))
	return len(p), nil
}

// serverProcess starts a NATS server (max_payload 1 MiB) in a child process
// (this test binary, running TestNATSServerProcess) and returns its URL. It
// stops when the test ends.
func serverProcess(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestNATSServerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), "SMTPQ_NATS_SERVER_PROCESS=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(stdout)
	t.Cleanup(func() {
		stdin.Close()
		io.Copy(io.Discard, br)
		cmd.Wait()
	})
	line, err := br.ReadString('\n')
	url := strings.TrimSpace(line)
	if err != nil || !strings.HasPrefix(url, "nats://") {
		t.Fatalf("the NATS server process said %q, %v", line, err)
	}
	return url
}

// TestNATSServerProcess is serverProcess's child: it runs a NATS server,
// prints its URL and stops when its standard input closes.
func TestNATSServerProcess(t *testing.T) {
	if os.Getenv("SMTPQ_NATS_SERVER_PROCESS") == "" {
		t.Skip("runs in the child process of TestBigMessageBoundedMemory")
	}
	srv := natstest.NewServer(t, natstest.WithMaxPayload(1<<20))
	fmt.Println(srv.URL())
	io.Copy(io.Discard, os.Stdin)
}
