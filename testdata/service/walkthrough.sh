#!/usr/bin/env bash
# The "smtpq service" walk-through, scripted, for a machine whose service
# manager is SysV init scripts (Debian without systemd running, for
# example). It installs a service under a name of its own, starts it,
# enqueues a message and checks that it reaches a loopback SMTP sink,
# checks status, stops the service (and that the pipeline logged a clean
# "smtpq stopped"), uninstalls it and checks that nothing is left behind:
# init script, rc links, pid file.
#
#   make build && sudo testdata/service/walkthrough.sh [path/to/smtpq]
#
# Needs root (it writes /etc/init.d). Everything else lives in a temporary
# folder. On exit, however it exits, it uninstalls its service and stops
# the sink it started; it kills no process but that sink (the service is
# stopped through its own init script). Not run by "make test".
#
# Environment: SMTPQ_WALK_NAME (service name, default smtpq-walkthrough),
# SMTPQ_WALK_PORT (sink port, default 2599), SMTPQ_WALK_KEEP=1 keeps the
# temporary folder and the service's log for a look afterwards.
set -euo pipefail

cd "$(dirname "$0")/../.."
bin=$(realpath "${1:-bin/smtpq}")
name=${SMTPQ_WALK_NAME:-smtpq-walkthrough}
port=${SMTPQ_WALK_PORT:-2599}
script=/etc/init.d/$name
pid_file=/var/run/$name.pid
log_file=/var/log/$name.log

say() { printf '\n== %s\n' "$*"; }
run() {
	printf '$ %s\n' "$*"
	"$@"
}
fail() {
	printf 'walkthrough: FAILED: %s\n' "$*" >&2
	exit 1
}
# alive PID: the process exists and is not a zombie.
alive() {
	local state
	state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
	[ -n "$state" ] && [ "$state" != Z ]
}
# status_code: the exit status of "smtpq service status".
status_code() {
	local code=0
	"$bin" service status --name "$name" >/dev/null 2>&1 || code=$?
	echo "$code"
}

[ -x "$bin" ] || fail "$bin: not an executable (run make build first)"
[ "$(id -u)" = 0 ] || fail "needs root: it installs an init script in /etc/init.d"
platform=$({ "$bin" service status --name "$name" 2>/dev/null || true; } | sed -n 's/^service: .*(\(.*\))$/\1/p')
[ "$platform" = unix-systemv ] || fail "this machine's service manager is ${platform:-none}, not SysV init scripts (unix-systemv)"
[ "$(status_code)" = 4 ] || fail "a service named $name is installed already; choose another SMTPQ_WALK_NAME"

work=$(mktemp -d /tmp/smtpq-walkthrough.XXXXXX)
sink_pid=
installed=

cleanup() {
	local code=$?
	set +e
	if [ -n "$installed" ] && [ -e "$script" ]; then
		echo "walkthrough: cleaning up: uninstalling $name"
		"$bin" service uninstall --name "$name"
	fi
	if [ -n "$sink_pid" ]; then
		kill "$sink_pid" 2>/dev/null
		wait "$sink_pid" 2>/dev/null
	fi
	if [ "$code" != 0 ] && [ -e "$log_file" ]; then
		echo "walkthrough: the end of $log_file:" >&2
		tail -n 20 "$log_file" >&2
	fi
	if [ "${SMTPQ_WALK_KEEP:-}" = 1 ]; then
		echo "walkthrough: kept $work and $log_file"
	else
		rm -rf "$work"
		[ -n "$installed" ] && rm -f "$log_file"
	fi
	exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "A configuration under $work, mail to a loopback sink on 127.0.0.1:$port"
cfg=$work/smtpq.yaml
cat >"$cfg" <<EOF
queue_dir: queue
sent_dir: sent
undeliverable_dir: undeliverable
identity_file: keys/identity.txt
recipient_file: keys/recipient.txt
relays:
  devsink:
    host: 127.0.0.1
    port: $port
    tls: none
default_relay: devsink
scan_interval: 1s
EOF
run "$bin" keygen --config "$cfg"
mkdir -p "$work/queue"
"$bin" devsink --listen "127.0.0.1:$port" --dir "$work/received" >"$work/devsink.log" 2>&1 &
sink_pid=$!
for _ in $(seq 50); do
	grep -q listening "$work/devsink.log" 2>/dev/null && break
	alive "$sink_pid" || fail "devsink did not start: $(cat "$work/devsink.log")"
	sleep 0.1
done
grep -q listening "$work/devsink.log" || fail "devsink did not start listening"
echo "devsink pid $sink_pid: $(head -n 1 "$work/devsink.log")"

say "Install"
installed=1
run "$bin" service install --config "$cfg" --name "$name"
[ -x "$script" ] || fail "no $script"
for l in 2 3 4 5; do
	[ -L "/etc/rc$l.d/S50$name" ] || fail "no /etc/rc$l.d/S50$name (start type auto)"
done
grep -q "^cmd=\"$bin run --config $cfg\"$" "$script" || fail "$script does not run $bin run --config $cfg"

say "Start"
run "$bin" service start --name "$name"
pid=$(cat "$pid_file")
alive "$pid" || fail "pid $pid from $pid_file is not running"
ps -o pid,ppid,sid,tty,user,args -p "$pid"
tr '\0' '\n' <"/proc/$pid/environ" | grep -qx "SMTPQ_SERVICE=$name" || fail "the service's environment lacks SMTPQ_SERVICE=$name"

say "Enqueue a message"
run "$bin" enqueue --config "$cfg" --to you@example.org testdata/messages/plain-crlf.eml
for _ in $(seq 150); do
	[ -e "$work/received/000001.eml" ] && break
	sleep 0.2
done
[ -e "$work/received/000001.eml" ] || fail "the message did not reach the sink in 30s"
run ls "$work/received" "$work/sent"

say "Status"
run "$bin" service status --name "$name"
out=$("$bin" service status --name "$name")
grep -q "^running:    yes (pid $pid)$" <<<"$out" || fail "status does not say running (pid $pid)"
grep -q "^config:     $cfg$" <<<"$out" || fail "status does not name the config $cfg"

say "Reload"
run "$bin" service reload --name "$name"
for _ in $(seq 50); do
	grep -q "configuration reloaded" "$log_file" && break
	sleep 0.1
done
grep -q "configuration reloaded" "$log_file" || fail "the service did not log \"configuration reloaded\" in $log_file"
grep "configuration reloaded" "$log_file" | tail -n 1

say "Stop"
run "$bin" service stop --name "$name"
for _ in $(seq 50); do
	alive "$pid" || break
	sleep 0.1
done
alive "$pid" && fail "pid $pid still runs after stop"
echo "pid $pid: gone"
[ -e "$pid_file" ] && fail "$pid_file left after stop"
grep -q "smtpq stopped" "$log_file" || fail "the pipeline did not log \"smtpq stopped\" in $log_file"
grep "smtpq stopped" "$log_file" | tail -n 1
code=$(status_code)
[ "$code" = 3 ] || fail "status after stop exits $code, want 3"
echo "status after stop: exit 3 (installed, not running)"

say "Uninstall"
run "$bin" service uninstall --name "$name"
installed=
left=$(ls -d "$script" /etc/rc?.d/[SK][0-9][0-9]"$name" "$pid_file" 2>/dev/null || true)
[ -z "$left" ] || fail "left behind: $left"
code=$(status_code)
[ "$code" = 4 ] || fail "status after uninstall exits $code, want 4"
echo "nothing left behind (no $script, rc links or $pid_file); status: exit 4 (not installed)"
rm -f "$log_file"

printf '\nwalkthrough: OK\n'
