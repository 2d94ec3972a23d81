// Command baseline is the bare SMTP client that smtpq's drain is compared
// with (issue 5): go-smtp's client, no pipeline, no seal to open, no state.
//
// With -mode file it does the file work a queue needs at the least: it lists
// the queue folder, and for each file reads it, leaves out the sealed header
// (without opening it), sends it over one of -conns reused connections,
// renames it into the sent folder and fsyncs that folder. With -mode memory
// it sends the same message -n times from memory and touches no file.
//
// It is built and run by the benchmark harness (testdata/bench/harness); by
// hand:
//
//	go run ./testdata/bench/baseline -mode file -queue Q -sent S -addr 127.0.0.1:2525 -conns 2
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

func main() {
	var (
		mode  = flag.String("mode", "file", "file: send the queue folder's files; memory: send one message -n times")
		queue = flag.String("queue", "", "queue folder (file mode)")
		sent  = flag.String("sent", "", "folder the sent files are renamed into (file mode)")
		addr  = flag.String("addr", "127.0.0.1:2525", "SMTP server")
		conns = flag.Int("conns", 2, "connections, each reused for every message it sends")
		n     = flag.Int("n", 10000, "messages to send (memory mode)")
		size  = flag.Int("size", 4096, "message size (memory mode)")
		from  = flag.String("from", "app@example.com", "envelope sender")
		to    = flag.String("to", "user@example.org", "envelope recipient")
	)
	flag.Parse()
	if err := run(*mode, *queue, *sent, *addr, *conns, *n, *size, *from, *to); err != nil {
		fmt.Fprintln(os.Stderr, "baseline:", err)
		os.Exit(1)
	}
}

func run(mode, queue, sent, addr string, conns, n, size int, from, to string) error {
	var next func() (name string, ok bool)
	var body func(name string) ([]byte, error)
	var done func(name string, sentDir *os.File) error
	switch mode {
	case "file":
		if queue == "" || sent == "" {
			return errors.New("-queue and -sent are required in file mode")
		}
		names, err := queueNames(queue)
		if err != nil {
			return err
		}
		n = len(names)
		var i atomic.Int64
		next = func() (string, bool) {
			k := int(i.Add(1)) - 1
			if k >= len(names) {
				return "", false
			}
			return names[k], true
		}
		body = func(name string) ([]byte, error) {
			b, err := os.ReadFile(filepath.Join(queue, name))
			if err != nil {
				return nil, err
			}
			return withoutSeal(b), nil
		}
		done = func(name string, sentDir *os.File) error {
			if err := os.Rename(filepath.Join(queue, name), filepath.Join(sent, name)); err != nil {
				return err
			}
			return sentDir.Sync()
		}
	case "memory":
		msg := message(size)
		var i atomic.Int64
		next = func() (string, bool) { return "", int(i.Add(1)) <= n }
		body = func(string) ([]byte, error) { return msg, nil }
		done = func(string, *os.File) error { return nil }
	default:
		return fmt.Errorf("unknown -mode %q", mode)
	}

	start := time.Now()
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		errs  []error
		count atomic.Int64
	)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := worker(addr, sent, from, to, next, body, done, &count); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Printf("sent %d messages in %v over %d connections: %.0f msg/s\n",
		count.Load(), el.Round(time.Millisecond), conns, float64(count.Load())/el.Seconds())
	// The harness cannot read this after the exit (wait4's ru_maxrss counts
	// the parent's memory from before exec), so say it here.
	fmt.Printf("peak_rss_kb=%d\n", peakRSS())
	if int(count.Load()) != n {
		return fmt.Errorf("sent %d of %d messages", count.Load(), n)
	}
	return nil
}

// worker sends messages over one connection until next says there are no
// more.
func worker(addr, sent, from, to string, next func() (string, bool), body func(string) ([]byte, error),
	done func(string, *os.File) error, count *atomic.Int64) error {
	var sentDir *os.File
	if sent != "" {
		d, err := os.Open(sent)
		if err != nil {
			return err
		}
		defer d.Close()
		sentDir = d
	}
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	c.CommandTimeout = time.Minute
	c.SubmissionTimeout = time.Minute
	if err := c.Hello("baseline.bench"); err != nil {
		return err
	}
	for {
		name, ok := next()
		if !ok {
			return c.Quit()
		}
		b, err := body(name)
		if err != nil {
			return err
		}
		if err := c.Mail(from, nil); err != nil {
			return err
		}
		if err := c.Rcpt(to, nil); err != nil {
			return err
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
		if err := done(name, sentDir); err != nil {
			return err
		}
		count.Add(1)
	}
}

// peakRSS returns VmHWM from /proc/self/status in kB (0 where there is none).
func peakRSS() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return n
		}
	}
	return 0
}

// queueNames lists the queue files of dir as the service would see them.
func queueNames(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") && strings.HasSuffix(e.Name(), ".eml") {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// withoutSeal leaves out the leading sealed block: an X-SmtpQ-Sealed
// field and the X-SmtpQ-Pad field after it, with their continuation lines,
// without opening the seal (the benchmark's files have them first).
func withoutSeal(b []byte) []byte {
	for hasField(b, "x-smtpq-sealed:") || hasField(b, "x-smtpq-pad:") {
		for {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return nil
			}
			b = b[i+1:]
			if len(b) == 0 || (b[0] != ' ' && b[0] != '\t') {
				break
			}
		}
	}
	return b
}

// hasField reports whether b starts with the field name and colon given
// in lower case, in any case.
func hasField(b []byte, field string) bool {
	return len(b) >= len(field) && strings.EqualFold(string(b[:len(field)]), field)
}

// message is a plain message of size bytes.
func message(size int) []byte {
	m := []byte("From: App <app@example.com>\r\nTo: user@example.org\r\nSubject: drain benchmark\r\n" +
		"Message-ID: <drain@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	line := []byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n")
	for len(m) < size {
		m = append(m, line[:min(len(line), size-len(m))]...)
	}
	return m
}
