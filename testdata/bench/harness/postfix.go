//go:build linux

package main

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The Postfix reference runs a private Postfix instance: its own
// configuration directory, queue and data directories under bench/out/work,
// listening only on 127.0.0.1 at a free port, relaying everything to
// smtp-sink on [127.0.0.2]. The system's Postfix configuration (/etc/postfix)
// and any running instance are left alone: every command gets -c with the
// private directory.
//
// The backlog is injected with smtp-source while defer_transports holds
// delivery, so that it waits in the deferred queue like smtpq's backlog waits
// in queue_dir; then delivery is released and the queue flushed, and the
// clock runs until smtp-sink has counted every message.

const (
	postfixCmd = "/usr/sbin/postfix"
	postconf   = "/usr/sbin/postconf"
	postqueue  = "/usr/sbin/postqueue"
	smtpSource = "/usr/sbin/smtp-source"
)

// postfixUnavailable says why the reference cannot run, or "".
func postfixUnavailable(o *options) string {
	if o.postfix == "off" {
		return "POSTFIX=off"
	}
	for _, p := range []string{postfixCmd, postconf, postqueue, smtpSource, smtpSinkPath} {
		if _, err := os.Stat(p); err != nil {
			return p + " is not installed"
		}
	}
	if os.Getuid() != 0 {
		return "a private Postfix instance needs root"
	}
	if _, err := user.Lookup("postfix"); err != nil {
		return "no postfix user"
	}
	return ""
}

func postfixMainCf(dir string, sinkPort int) string {
	return fmt.Sprintf(`# Private instance for smtpq's benchmark; see testdata/bench/harness/postfix.go.
compatibility_level = 3.6
queue_directory = %[1]s/queue
data_directory = %[1]s/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = pfbench.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.2]:%[2]d
default_destination_concurrency_limit = 2
smtp_destination_concurrency_limit = 2
defer_transports = smtp
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtputf8_enable = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
maillog_file = %[1]s/maillog
maillog_file_prefixes = %[1]s
`, dir, sinkPort)
}

func postfixMasterCf(injectPort int) string {
	return fmt.Sprintf(`# Private instance for smtpq's benchmark: no port 25, no chroot.
127.0.0.1:%d inet n - n - - smtpd
pickup    fifo  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`, injectPort)
}

// postfixDrain measures the private Postfix relaying n 4 KiB messages.
func postfixDrain(ctx context.Context, o *options, n int) (res drainResult) {
	res = drainResult{what: "Postfix, destination concurrency 2, smtp-sink", n: n}
	dir := filepath.Join(o.work, "postfix")
	conf := filepath.Join(dir, "conf")
	for _, d := range []string{conf, filepath.Join(dir, "data"), filepath.Join(dir, "queue")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			res.err = err
			return res
		}
	}
	pf, _ := user.Lookup("postfix")
	uid, _ := strconv.Atoi(pf.Uid)
	if err := os.Chown(filepath.Join(dir, "data"), uid, -1); err != nil {
		res.err = err
		return res
	}
	sk, err := startSmtpSink(ctx, dir, "127.0.0.2")
	if err != nil {
		res.err = err
		return res
	}
	defer sk.close()
	injectPort := freePort("127.0.0.1")
	if err := os.WriteFile(filepath.Join(conf, "main.cf"), []byte(postfixMainCf(dir, sk.port())), 0o644); err != nil {
		res.err = err
		return res
	}
	if err := os.WriteFile(filepath.Join(conf, "master.cf"), []byte(postfixMasterCf(injectPort)), 0o644); err != nil {
		res.err = err
		return res
	}
	msgPath := filepath.Join(dir, "message.eml")
	if err := os.WriteFile(msgPath, message(4096, ""), 0o644); err != nil {
		res.err = err
		return res
	}
	stopPostfix := atExit(func() {
		runCmd(context.Background(), time.Minute, postfixCmd, "-c", conf, "stop")
		// Postfix's master daemonizes: wait for it to go, by its PID file.
		pidFile := filepath.Join(dir, "queue", "pid", "master.pid")
		for range 100 {
			b, err := os.ReadFile(pidFile)
			pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil || pid <= 0 || !pidAlive(pid) {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
		runCmd(context.Background(), time.Minute, postfixCmd, "-c", conf, "abort")
	})
	defer stopPostfix()
	if out, err := runCmd(ctx, time.Minute, postfixCmd, "-c", conf, "start"); err != nil {
		res.err = fmt.Errorf("starting postfix: %v %s\n%s", err, out, tail(filepath.Join(dir, "maillog"), 10))
		return res
	}
	start := time.Now()
	if _, err := runCmd(ctx, 10*time.Minute, smtpSource, "-s", "4", "-m", strconv.Itoa(n), "-d", "-F", msgPath,
		"-f", envFrom, "-t", envTo, fmt.Sprintf("127.0.0.1:%d", injectPort)); err != nil {
		res.err = fmt.Errorf("injecting with smtp-source: %v", err)
		return res
	}
	// Wait until the whole backlog sits in the deferred queue.
	queue := filepath.Join(dir, "queue")
	deadline := time.Now().Add(drainTimeout(n))
	for {
		deferred := countFiles(filepath.Join(queue, "deferred"))
		busy := countFiles(filepath.Join(queue, "incoming")) + countFiles(filepath.Join(queue, "active")) + countFiles(filepath.Join(queue, "maildrop"))
		if deferred >= n && busy == 0 {
			break
		}
		if time.Now().After(deadline) {
			res.err = fmt.Errorf("backlog not in the deferred queue after %v: %d deferred, %d in flight\n%s",
				drainTimeout(n), deferred, busy, tail(filepath.Join(dir, "maillog"), 5))
			return res
		}
		select {
		case <-ctx.Done():
			res.err = ctx.Err()
			return res
		case <-time.After(200 * time.Millisecond):
		}
	}
	logf("  postfix: %d messages injected and deferred in %v", n, time.Since(start).Round(time.Millisecond))
	if _, err := runCmd(ctx, time.Minute, postconf, "-c", conf, "-e", "defer_transports ="); err != nil {
		res.err = err
		return res
	}
	if _, err := runCmd(ctx, time.Minute, postfixCmd, "-c", conf, "reload"); err != nil {
		res.err = err
		return res
	}
	// Let the reload take effect (qmgr restarts with the new setting).
	select {
	case <-ctx.Done():
		res.err = ctx.Err()
		return res
	case <-time.After(2 * time.Second):
	}
	got0 := sk.count()
	t0 := time.Now()
	if _, err := runCmd(ctx, time.Minute, postqueue, "-c", conf, "-f"); err != nil {
		res.err = err
		return res
	}
	deadline = time.Now().Add(drainTimeout(n))
	for sk.count()-got0 < n {
		if time.Now().After(deadline) {
			res.err = fmt.Errorf("timed out: smtp-sink got %d of %d\n%s", sk.count()-got0, n, tail(filepath.Join(dir, "maillog"), 5))
			return res
		}
		select {
		case <-ctx.Done():
			res.err = ctx.Err()
			return res
		case <-time.After(20 * time.Millisecond):
		}
	}
	res.dur = time.Since(t0)
	res.sinkGot = sk.count()
	if got0 > 0 {
		res.err = fmt.Errorf("smtp-sink got %d messages before the flush", got0)
	}
	return res
}

func countFiles(dir string) int {
	n := 0
	filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			n++
		}
		return nil
	})
	return n
}

func pidAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie (state Z) has exited; nobody may reap it in a container.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}
