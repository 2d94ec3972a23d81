#!/usr/bin/env bash
# make test-packages: installs smtpq's .deb on THIS machine and checks what
# the package promises, then leaves the machine as it found it (postfix back,
# so /usr/sbin/smtp-sink is there for the other tests).
#
#  1. builds two .debs of the checkout (versions 0.0.1~pkgtest1 and ~pkgtest2)
#  2. apt-get install ./smtpq_..1.deb: postfix goes (both provide
#     mail-transport-agent); checks the links, the smtpq user and group, the
#     setgid spool, the key pair, the conffile, the enabled unit, and that the
#     unit's start condition refuses a configuration without a relay
#  3. points the configuration at a loopback sink (smtpq devsink from this
#     checkout, on a free 127.0.0.1 port), starts the service (systemctl when
#     systemd is PID 1, else "smtpq run" as user smtpq, by PID), and sends
#     with mail(1) (bsd-mailx), with cron's command line and message
#     (/usr/sbin/sendmail -FCronDaemon -i -B8BITMIME -oem ..., with MAILTO
#     and MAILFROM set, and cron's default: recipient "root", From "root
#     (Cron Daemon)"), with mail(1) without -r, and as an unprivileged user
#     in group smtpq
#     (one outside the group is refused)
#  4. stops it, queues one more message, upgrades to ..2: keys, conffile
#     and the queued message are kept; started again, the message goes out
#  5. purges smtpq while putting postfix back in the same apt transaction:
#     config, keys, queue, user and group are gone, sent/ and
#     undeliverable/ are kept (then removed by this test)
#
# Skips (exit 0, with a SKIPPED line) when not root, or without apt-get and
# dpkg. Refuses (exit 1) if smtpq is already installed or /var/spool/smtpq
# exists, since it would change them. Any failed step fails the test; the
# EXIT trap stops what it started (by PID), removes smtpq and reinstalls
# postfix whatever happened. Loopback only. About one to two minutes.
set -euo pipefail
cd "$(dirname "$0")/../../.."
top=$PWD

say() { printf 'test-packages: %s\n' "$*"; }
fail() { printf 'test-packages: FAIL: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" != 0 ]; then
	say "SKIPPED: needs root (it installs and purges a .deb on this machine)"
	exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg >/dev/null; then
	say "SKIPPED: needs apt-get and dpkg (Debian or Ubuntu)"
	exit 0
fi
for c in mail setpriv; do
	command -v "$c" >/dev/null || fail "$c is missing (bash .ci/install-packages installs bsd-mailx)"
done
if dpkg-query -W -f='${Status}' smtpq 2>/dev/null | grep -q 'installed'; then
	fail "smtpq is already installed here: not touching it"
fi
[ ! -e /var/spool/smtpq ] || fail "/var/spool/smtpq exists: not touching it"

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -qq -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
pkgtool=${PKGTOOL:-$top/dist/tools/pkgtool}
[ -x "$pkgtool" ] || fail "$pkgtool missing (make pkgtool)"
work=$(mktemp -d /tmp/smtpq-pkgtest.XXXXXX)
chmod 755 "$work"
sink_pid= svc_pid=
had_postfix=no
dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q 'ok installed' && had_postfix=yes

# No service start during package operations (postfix's on reinstall, ours
# through deb-systemd-invoke): the test starts smtpq itself.
policy=/usr/sbin/policy-rc.d
made_policy=no
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy"
	chmod +x "$policy"
	made_policy=yes
fi

stop_pid() { # pid: SIGTERM, wait for it (it is our child)
	[ -n "$1" ] || return 0
	kill -TERM "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
}

use_systemd=no
[ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ] && use_systemd=yes

cleanup() {
	status=$?
	set +e
	stop_pid "$svc_pid"
	[ "$use_systemd" = no ] || systemctl stop smtpq.service 2>/dev/null
	stop_pid "$sink_pid"
	# Whatever happened: smtpq out, postfix back (one transaction, as an
	# administrator swaps MTAs).
	if dpkg-query -W -f='${Status}' smtpq 2>/dev/null | grep -q installed; then
		say "cleanup: purging smtpq"
		if [ "$had_postfix" = yes ]; then
			apt-get install "${apt_opts[@]}" --purge postfix smtpq- >/dev/null 2>&1 ||
				dpkg --purge smtpq >/dev/null 2>&1
		else
			dpkg --purge smtpq >/dev/null 2>&1
		fi
	fi
	if [ "$had_postfix" = yes ] && [ ! -x /usr/sbin/smtp-sink ]; then
		say "cleanup: reinstalling postfix"
		echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
		apt-get install "${apt_opts[@]}" --no-install-recommends postfix >/dev/null 2>&1 ||
			{ apt-get update -qq && apt-get install "${apt_opts[@]}" --no-install-recommends postfix >/dev/null; }
	fi
	# bsd-mailx goes with the last MTA; the other tests do not need it,
	# but leave it as found.
	command -v mail >/dev/null || apt-get install "${apt_opts[@]}" --no-install-recommends bsd-mailx >/dev/null 2>&1
	rm -rf /var/spool/smtpq
	[ "$made_policy" = no ] || rm -f "$policy"
	rm -rf "$work"
	if [ "$had_postfix" = yes ] && [ ! -x /usr/sbin/smtp-sink ]; then
		printf 'test-packages: FAIL: postfix (smtp-sink) could not be put back\n' >&2
		status=1
	fi
	if [ $status = 0 ]; then say PASS; else say "FAILED (status $status)"; fi
	exit $status
}
trap cleanup EXIT

# 1. Two versions of the package, and the sink from this checkout.
say "building the packages"
CGO_ENABLED=0 go build -trimpath -o "$work/smtpq" ./cmd/smtpq
v1=0.0.1~pkgtest1 v2=0.0.1~pkgtest2
deb1=$("$pkgtool" deb -bin "$work/smtpq" -arch "$(dpkg --print-architecture)" -version $v1 -out "$work")
deb2=$("$pkgtool" deb -bin "$work/smtpq" -arch "$(dpkg --print-architecture)" -version $v2 -out "$work")

mkdir "$work/received"
"$work/smtpq" devsink --listen 127.0.0.1:0 --dir "$work/received" >"$work/sink.log" 2>&1 &
sink_pid=$!
for _ in $(seq 50); do grep -q 'listening on' "$work/sink.log" && break; sleep 0.1; done
port=$(sed -n 's/^devsink listening on 127\.0\.0\.1:\([0-9]*\),.*/\1/p' "$work/sink.log")
[ -n "$port" ] || fail "the sink did not start: $(cat "$work/sink.log")"
say "sink on 127.0.0.1:$port (pid $sink_pid)"

# 2. Install.
say "installing $v1 (replaces postfix)"
apt-get install "${apt_opts[@]}" "$deb1" </dev/null >"$work/apt1.log" 2>&1 || { cat "$work/apt1.log"; fail "apt-get install $deb1"; }
dpkg-query -W -f='${Status} ${Version}\n' smtpq | grep -qx "install ok installed $v1" || fail "smtpq $v1 not installed"
if [ "$had_postfix" = yes ]; then
	! dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q 'ok installed' || fail "postfix still installed beside smtpq"
fi
[ "$(readlink -f /usr/sbin/sendmail)" = /usr/bin/smtpq ] || fail "/usr/sbin/sendmail is not a link to /usr/bin/smtpq"
[ "$(readlink -f /usr/lib/sendmail)" = /usr/bin/smtpq ] || fail "/usr/lib/sendmail is not a link to /usr/bin/smtpq"
[ -x /usr/bin/mailq ] || fail "no /usr/bin/mailq"
getent passwd smtpq >/dev/null || fail "no user smtpq"
getent group smtpq >/dev/null || fail "no group smtpq"
check_stat() { # path expected-"%U:%G %a"
	got=$(stat -c '%U:%G %a' "$1") || fail "$1 is missing"
	[ "$got" = "$2" ] || fail "$1 is $got, want $2"
}
check_stat /var/spool/smtpq/queue "smtpq:smtpq 2770"
check_stat /var/spool/smtpq/sent "smtpq:smtpq 2750"
check_stat /var/spool/smtpq/undeliverable "smtpq:smtpq 2750"
check_stat /var/lib/smtpq/identity.txt "smtpq:smtpq 600"
check_stat /var/lib/smtpq/recipient.txt "smtpq:smtpq 644"
check_stat /etc/smtpq/smtpq.yaml "root:root 644"
dpkg-query -W -f='${Conffiles}\n' smtpq | grep -q '^ /etc/smtpq/smtpq.yaml ' || fail "/etc/smtpq/smtpq.yaml is not a conffile"
[ -L /etc/systemd/system/multi-user.target.wants/smtpq.service ] || fail "smtpq.service is not enabled"
/usr/bin/smtpq config check --config /etc/smtpq/smtpq.yaml >/dev/null || fail "the installed configuration does not load"
if /usr/lib/smtpq/has-relay /etc/smtpq/smtpq.yaml 2>/dev/null; then
	fail "the unit's start condition passes without a relay"
fi
# Without a relay, sendmail says so with EX_CONFIG (78).
st=0; printf 'Subject: x\n\nx\n' | /usr/sbin/sendmail -f a@example.org b@example.org 2>/dev/null || st=$?
[ $st = 78 ] || fail "sendmail without default_relay: exit $st, want 78"
id_sum=$(sha256sum </var/lib/smtpq/identity.txt)

# 3. Configure, start, send.
cat >>/etc/smtpq/smtpq.yaml <<EOF

# Added by make test-packages.
relays:
  sink:
    host: 127.0.0.1
    port: $port
    tls: none
default_relay: sink
allowed_hosts:
  - 127.0.0.1:$port
scan_interval: 1s
EOF
/usr/lib/smtpq/has-relay /etc/smtpq/smtpq.yaml || fail "the unit's start condition refuses a configuration with a relay"

start_service() {
	if [ "$use_systemd" = yes ]; then
		systemctl start smtpq.service
		systemctl is-active --quiet smtpq.service || fail "smtpq.service did not start"
	else
		# As the unit runs it: user smtpq, umask 0007, SMTPQ_SERVICE unset
		# (no service manager here: SIGTERM stops it all the same).
		(umask 0007; exec setpriv --reuid=smtpq --regid=smtpq --init-groups \
			/usr/bin/smtpq run --config /etc/smtpq/smtpq.yaml) >>"$work/service.log" 2>&1 &
		svc_pid=$!
		sleep 1
		kill -0 "$svc_pid" 2>/dev/null || { cat "$work/service.log"; fail "smtpq run exited at once"; }
	fi
	say "service started ($([ "$use_systemd" = yes ] && echo systemd || echo "pid $svc_pid"))"
}
stop_service() {
	if [ "$use_systemd" = yes ]; then
		systemctl stop smtpq.service
	else
		kill -TERM "$svc_pid"
		st=0; wait "$svc_pid" || st=$?
		svc_pid=
		[ $st = 0 ] || { cat "$work/service.log"; fail "smtpq run stopped with status $st"; }
	fi
}
wait_received() { # count: files in the sink's folder
	for _ in $(seq 300); do
		[ "$(find "$work/received" -type f | wc -l)" -ge "$1" ] && return 0
		sleep 0.1
	done
	cat "$work/service.log" 2>/dev/null || true
	fail "the sink received $(find "$work/received" -type f | wc -l) messages, want $1"
}
received_has() { grep -rlq -- "$1" "$work/received" || fail "no message with \"$1\" reached the sink"; }

start_service
sent=0

say "sending with mail(1)"
echo "body from mailx" | mail -r app@example.org -s "pkgtest mailx" admin@example.org
sent=$((sent + 1))

# cron runs exactly this command line, with a message of this shape (Debian's
# cron 3.0pl1: From is $MAILFROM, else "root (Cron Daemon)"; To is $MAILTO,
# else the crontab's owner), here for MAILTO=admin@example.org and
# MAILFROM=cron@example.org in the crontab.
say "sending with cron's command line"
cron_msg() { printf 'From: %s\nTo: %s\nSubject: Cron <root@%s> %s\nMIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\nX-Cron-Env: <SHELL=/bin/sh>\nX-Cron-Env: <MAILTO=%s>\n\ncron output\n' "$1" "$2" "$(hostname -s)" "$3" "$2"; }
cron_msg cron@example.org admin@example.org "pkgtest-cron-mailto" |
	/usr/sbin/sendmail -FCronDaemon -i -B8BITMIME -oem admin@example.org
sent=$((sent + 1))
# And cron's default, neither set: recipient "root", From "root (Cron
# Daemon)": the bare names are qualified with the host name (sendmail.domain
# unset), so cron's mail goes out.
st=0
cron_msg "root (Cron Daemon)" root "pkgtest-cron-default" |
	/usr/sbin/sendmail -FCronDaemon -i -B8BITMIME -oem root 2>"$work/cron-default.err" || st=$?
[ $st = 0 ] || fail "cron's default command line (recipient root): exit $st: $(cat "$work/cron-default.err")"
sent=$((sent + 1))

say "sending with mail(1) without -r (no sender at all)"
echo "body from mailx, no -r" | mail -s "pkgtest mailx-nor" admin@example.org
sent=$((sent + 1))

say "sending as an unprivileged user in group smtpq, and one outside it"
gid=$(getent group smtpq | cut -d: -f3)
printf 'From: app@example.org\nSubject: pkgtest group\n\nfrom nobody\n' |
	setpriv --reuid=nobody --regid=nogroup --groups="$gid" /usr/sbin/sendmail -i admin@example.org ||
	fail "a member of group smtpq cannot enqueue"
sent=$((sent + 1))
st=0
printf 'From: app@example.org\nSubject: pkgtest outsider\n\nx\n' |
	setpriv --reuid=nobody --regid=nogroup --clear-groups /usr/sbin/sendmail -i admin@example.org 2>/dev/null || st=$?
[ $st = 73 ] || fail "a user outside group smtpq: exit $st, want 73 (cannot create the queue file)"

wait_received $sent
received_has "pkgtest mailx"
received_has "pkgtest-cron-mailto"
received_has "pkgtest-cron-default"
received_has "pkgtest mailx-nor"
received_has "pkgtest group"
n=$(find /var/spool/smtpq/sent -name '*.eml' | wc -l)
[ "$n" -eq $sent ] || fail "sent/ holds $n messages, want $sent"
/usr/bin/mailq >/dev/null || fail "mailq failed"
say "$sent messages delivered"

# 4. Upgrade over itself, with a message waiting.
stop_service
printf 'From: app@example.org\nSubject: pkgtest upgrade\n\nqueued before the upgrade\n' |
	/usr/sbin/sendmail -i admin@example.org
[ "$(find /var/spool/smtpq/queue -maxdepth 1 -name '*.eml' | wc -l)" = 1 ] || fail "the message is not in the queue"
say "upgrading to $v2"
apt-get install "${apt_opts[@]}" "$deb2" </dev/null >"$work/apt2.log" 2>&1 || { cat "$work/apt2.log"; fail "apt-get install $deb2"; }
dpkg-query -W -f='${Version}' smtpq | grep -qx "$v2" || fail "smtpq $v2 not installed"
[ "$(sha256sum </var/lib/smtpq/identity.txt)" = "$id_sum" ] || fail "the upgrade changed the identity"
grep -q "port: $port" /etc/smtpq/smtpq.yaml || fail "the upgrade replaced the edited configuration"
[ "$(find /var/spool/smtpq/queue -maxdepth 1 -name '*.eml' | wc -l)" = 1 ] || fail "the upgrade lost the queued message"
check_stat /var/spool/smtpq/queue "smtpq:smtpq 2770"
start_service
sent=$((sent + 1))
wait_received $sent
received_has "pkgtest upgrade"
stop_service
say "upgrade kept keys, configuration and queue"

# 5. Purge, putting postfix back in the same transaction.
say "purging smtpq$([ "$had_postfix" = yes ] && echo ", reinstalling postfix")"
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
if [ "$had_postfix" = yes ]; then
	apt-get install "${apt_opts[@]}" --no-install-recommends --purge postfix smtpq- </dev/null >"$work/apt3.log" 2>&1 ||
		{ cat "$work/apt3.log"; fail "apt-get purge smtpq / install postfix"; }
	[ -x /usr/sbin/smtp-sink ] || fail "postfix is back but /usr/sbin/smtp-sink is not"
else
	apt-get purge "${apt_opts[@]}" smtpq </dev/null >"$work/apt3.log" 2>&1 || { cat "$work/apt3.log"; fail "apt-get purge smtpq"; }
fi
! dpkg-query -W -f='${Status}' smtpq 2>/dev/null | grep -q installed || fail "smtpq still installed"
for p in /usr/bin/smtpq /etc/smtpq /var/lib/smtpq /var/spool/smtpq/queue /lib/systemd/system/smtpq.service \
	/etc/systemd/system/multi-user.target.wants/smtpq.service; do
	[ ! -e "$p" ] || fail "purge left $p"
done
! getent passwd smtpq >/dev/null || fail "purge left the user smtpq"
! getent group smtpq >/dev/null || fail "purge left the group smtpq"
[ -d /var/spool/smtpq/sent ] && [ -d /var/spool/smtpq/undeliverable ] || fail "purge removed the mail folders"
[ "$(find /var/spool/smtpq/sent -name '*.eml' | wc -l)" -eq $sent ] || fail "purge lost sent mail"
say "purge removed the package's files, kept sent/ and undeliverable/"
