#!/usr/bin/env bash
# Runs the service on the development config, with a loopback SMTP sink
# (smtpq devsink) on 127.0.0.1:2525 beside it. Used by "make run".
#
# Ctrl-C (SIGINT) or SIGTERM stops both, and the script exits with the
# service's status: 0 for a clean stop. Ctrl-C reaches the sink and the
# service together, so the sink may be gone before the cleanup runs; a
# signal sent to this script alone is passed on to the service (bash cannot
# trap SIGINT if it was started with SIGINT ignored, as a background job of
# another script is: send SIGTERM then).
#
# Overrides, for tests (relative paths are relative to the checkout):
# SMTPQ_BIN (bin/smtpq), SMTPQ_DEV_CONFIG (testdata/dev/smtpq.yaml),
# SMTPQ_DEV_DIR (.dev: the sink's folder and log) and SMTPQ_DEV_LISTEN
# (127.0.0.1:2525: the sink's address, which the config must name).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${SMTPQ_BIN:-bin/smtpq}
cfg=${SMTPQ_DEV_CONFIG:-testdata/dev/smtpq.yaml}
dev=${SMTPQ_DEV_DIR:-.dev}
listen=${SMTPQ_DEV_LISTEN:-127.0.0.1:2525}
mkdir -p "$dev"

sink= svc= forwarded=
# Stop the sink on the way out. Ctrl-C may have stopped it already: a
# failed kill is no error.
trap '[ -z "$sink" ] || { kill "$sink" 2>/dev/null || true; wait "$sink" 2>/dev/null || true; }' EXIT
# A signal for this script is the service's: pass it on, then keep waiting
# for the service to finish its shutdown. Before the service has started
# there is nothing to stop: exit 0.
trap 'forwarded=1; [ -n "$svc" ] || exit 0; kill -INT "$svc" 2>/dev/null || true' INT
trap 'forwarded=1; [ -n "$svc" ] || exit 0; kill -TERM "$svc" 2>/dev/null || true' TERM

"$bin" devsink --listen "$listen" --dir "$dev/received" --fail-prefix nobody >"$dev/devsink.log" 2>&1 &
sink=$!
echo "devsink (pid $sink) on $listen, saving to $dev/received/ (log: $dev/devsink.log)"

# In the background so that the traps above run while it shuts down; Go
# takes SIGINT back even though a background job starts with it ignored.
"$bin" run --config "$cfg" --init &
svc=$!
echo "smtpq run (pid $svc): Ctrl-C stops both"
# The web console, if the config turns it on (console: listen: ...).
console=$(sed -n '/^console:/,/^[^ #]/s/^  listen: *//p' "$cfg" | head -n 1)
if [ -n "$console" ]; then
  echo "web console: http://$console/ (user admin, password smtpq-dev; see $cfg)"
fi
while :; do
  forwarded=
  status=0
  wait "$svc" || status=$?
  # A trapped signal makes wait return early (above 128) while the service
  # is still shutting down: wait again for its own status.
  [ -n "$forwarded" ] || break
done
exit "$status"
