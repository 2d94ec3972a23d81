//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/smtpq/smtpq/pipeline/smtptest"
)

// sink is an SMTP server that takes every message.
type sink interface {
	host() string
	port() int
	// count returns how many messages it has accepted.
	count() int
	close()
}

// fakeSink is package smtptest's server, in the harness's process.
type fakeSink struct{ srv *smtptest.Server }

func startFakeSink(ip string) (*fakeSink, error) {
	srv := smtptest.NewUnstartedServer()
	srv.Addr = net.JoinHostPort(ip, "0")
	if err := srv.Start(); err != nil {
		return nil, err
	}
	s := &fakeSink{srv: srv}
	return s, nil
}

func (s *fakeSink) host() string { return s.srv.Host() }
func (s *fakeSink) port() int    { return s.srv.Port() }
func (s *fakeSink) count() int   { return len(s.srv.Messages()) } // copies: call at the end only
func (s *fakeSink) close()       { s.srv.Close() }

// postfixSink is Postfix's smtp-sink, a separate process that throws every
// message away; its running counter (-c) goes to a file the harness reads.
type postfixSink struct {
	p      *proc
	ip     string
	portNo int
	out    string
}

const smtpSinkPath = "/usr/sbin/smtp-sink"

func haveSmtpSink() bool {
	_, err := os.Stat(smtpSinkPath)
	return err == nil
}

func startSmtpSink(ctx context.Context, dir, ip string) (*postfixSink, error) {
	if !haveSmtpSink() {
		return nil, fmt.Errorf("%s not found (apt-get install postfix)", smtpSinkPath)
	}
	s := &postfixSink{ip: ip, portNo: freePort(ip), out: filepath.Join(dir, fmt.Sprintf("smtp-sink-%s.out", ip))}
	argv := []string{smtpSinkPath, "-c", "-h", "sink.bench"}
	if os.Getuid() == 0 {
		argv = append(argv, "-u", "nobody") // it refuses to run as root
	}
	argv = append(argv, net.JoinHostPort(ip, strconv.Itoa(s.portNo)), "256")
	p, err := startProc("smtp-sink", s.out, argv...)
	if err != nil {
		return nil, err
	}
	s.p = p
	// Wait until it accepts connections.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(ip, strconv.Itoa(s.portNo)), time.Second)
		if err == nil {
			c.Close()
			return s, nil
		}
		if !p.running() || time.Now().After(deadline) {
			p.stop(time.Second)
			return nil, fmt.Errorf("smtp-sink did not start: %v\n%s", err, tail(s.out, 5))
		}
		select {
		case <-ctx.Done():
			p.stop(time.Second)
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

var mesgRe = regexp.MustCompile(`mesg=(\d+)`)

func (s *postfixSink) host() string { return s.ip }
func (s *postfixSink) port() int    { return s.portNo }

// count reads the last counter line smtp-sink wrote.
func (s *postfixSink) count() int {
	f, err := os.Open(s.out)
	if err != nil {
		return 0
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0
	}
	off := max(fi.Size()-256, 0)
	buf := make([]byte, fi.Size()-off)
	n, _ := f.ReadAt(buf, off)
	m := mesgRe.FindAllSubmatch(buf[:n], -1)
	if len(m) == 0 {
		return 0
	}
	c, _ := strconv.Atoi(string(m[len(m)-1][1]))
	return c
}

func (s *postfixSink) close() { s.p.stop(5 * time.Second) }

// startSink starts a sink of the given kind ("smtptest" or "smtp-sink") on ip.
func startSink(ctx context.Context, kind, dir, ip string) (sink, error) {
	switch kind {
	case "smtptest":
		return startFakeSink(ip)
	case "smtp-sink":
		return startSmtpSink(ctx, dir, ip)
	}
	return nil, fmt.Errorf("unknown sink %q", kind)
}

// run runs a command to completion, bounded by ctx, and returns its output.
func runCmd(ctx context.Context, timeout time.Duration, argv ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", argv[0], err, out)
	}
	return string(out), nil
}
