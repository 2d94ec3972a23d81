#!/usr/bin/env bash
# A local three-node cluster, for trying the NATS JetStream queue on one
# machine. Used by "make run-cluster".
#
# Three "smtpq run" processes, each running an embedded NATS server
# (nats.embedded) clustered with the other two over loopback routes, share
# one stream kept three times (replicas: 3); the loopback SMTP sink (smtpq
# devsink) takes what they send. Everything lives under .dev/cluster/: the
# shared keys in keys/, each node's configuration (written here, on every
# start), folders, NATS store and log in node1/ to node3/, what the sink
# received in received/.
#
# Ctrl-C (SIGINT) or SIGTERM stops the three nodes and the sink, and the
# script exits 0 if every node stopped cleanly, as run.sh does: a signal
# sent to this script alone is passed on to the nodes (bash cannot trap
# SIGINT if it was started with SIGINT ignored, as a background job of
# another script is: send SIGTERM then). If a node stops by itself, the
# others are stopped too and the script exits with that node's status.
#
# Overrides, for tests (relative paths are relative to the checkout):
# SMTPQ_BIN (bin/smtpq), SMTPQ_DEV_DIR (.dev/cluster), SMTPQ_DEV_LISTEN
# (127.0.0.1:2527: the sink's address) and SMTPQ_CLUSTER_PORTS (six
# loopback ports: the three nodes' NATS client ports, then their route
# ports; "14222 14223 14224 16222 16223 16224").
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${SMTPQ_BIN:-bin/smtpq}
dev=${SMTPQ_DEV_DIR:-.dev/cluster}
listen=${SMTPQ_DEV_LISTEN:-127.0.0.1:2527}
read -r -a ports <<<"${SMTPQ_CLUSTER_PORTS:-14222 14223 14224 16222 16223 16224}"
if [ "${#ports[@]}" != 6 ]; then
  echo "SMTPQ_CLUSTER_PORTS: six ports, not \"${ports[*]}\"" >&2
  exit 2
fi
sink_host=${listen%:*}
sink_port=${listen##*:}
mkdir -p "$dev"

routes="[nats-route://127.0.0.1:${ports[3]}, nats-route://127.0.0.1:${ports[4]}, nats-route://127.0.0.1:${ports[5]}]"
for i in 1 2 3; do
  mkdir -p "$dev/node$i"
  cat >"$dev/node$i/smtpq.yaml" <<EOF
# Node $i of the local cluster; written by testdata/dev/run-cluster.sh at
# each start (edit the script, not this file). Relative paths are relative
# to this file's folder.
queue_dir: queue              # a drop folder: what lands here is published to the stream
sent_dir: sent
undeliverable_dir: undeliverable
identity_file: ../keys/identity.txt
recipient_file: ../keys/recipient.txt

relays:
  devsink:
    host: $sink_host
    port: $sink_port
    tls: none
default_relay: devsink
pickup_compat: true
allowed_hosts:
  - 127.0.0.1:*
  - "[::1]:*"
  - localhost:*

max_threads: 4
hosts:
  default:
    max_connections: 2
    idle_timeout: 2s
retry:
  min_backoff: 5s
  max_backoff: 1m
  max_attempts: 3
scan_interval: 2s
log:
  level: info
  format: console

nats:
  node: node$i
  replicas: 3
  ack_wait: 30s
  embedded:
    listen: 127.0.0.1:${ports[$((i - 1))]}
    store_dir: nats
    cluster_name: smtpq-dev
    cluster_listen: 127.0.0.1:${ports[$((i + 2))]}
    routes: $routes
EOF
done

# One key pair for the three nodes, made once.
if [ ! -e "$dev/keys/identity.txt" ]; then
  "$bin" keygen --config "$dev/node1/smtpq.yaml" >/dev/null
  echo "created the cluster's key pair in $dev/keys/"
fi

sink= svcs=() forwarded= stopping= failed=
declare -A live=() # the nodes' PIDs not yet waited for: only these get signals
stop_nodes() { # $1: the signal
  local pid
  for pid in "${!live[@]}"; do kill -"$1" "$pid" 2>/dev/null || true; done
}
# On the way out, stop whatever is still running, by PID: the sink (Ctrl-C
# may have stopped it already: a failed kill is no error) and a node left
# by an error of this script.
trap 'stop_nodes TERM; for p in "${!live[@]}"; do wait "$p" 2>/dev/null || true; done
      [ -z "$sink" ] || { kill "$sink" 2>/dev/null || true; wait "$sink" 2>/dev/null || true; }' EXIT
# A signal for this script is the nodes': pass it on, then keep waiting for
# them to finish their shutdown. Before a node has started there is nothing
# to stop: exit 0.
trap 'forwarded=1 stopping=1; [ ${#svcs[@]} -gt 0 ] || exit 0; stop_nodes INT' INT
trap 'forwarded=1 stopping=1; [ ${#svcs[@]} -gt 0 ] || exit 0; stop_nodes TERM' TERM

"$bin" devsink --listen "$listen" --dir "$dev/received" --fail-prefix nobody >"$dev/devsink.log" 2>&1 &
sink=$!
echo "devsink (pid $sink) on $listen, saving to $dev/received/ (log: $dev/devsink.log)"

# In the background so that the traps above run while they shut down; Go
# takes SIGINT back even though a background job starts with it ignored.
for i in 1 2 3; do
  "$bin" run --config "$dev/node$i/smtpq.yaml" --init >"$dev/node$i/smtpq.log" 2>&1 &
  svcs+=($!)
  live[$!]=$i
  echo "node$i: smtpq run (pid $!), NATS on 127.0.0.1:${ports[$((i - 1))]}, log $dev/node$i/smtpq.log"
done

# Wait until the three have joined the stream (the embedded servers find
# each other and elect a leader first: a few seconds).
for _ in $(seq 600); do
  up=0
  for i in 1 2 3; do
    grep -q 'smtpq running' "$dev/node$i/smtpq.log" 2>/dev/null && up=$((up + 1))
  done
  [ "$up" = 3 ] && break
  [ -z "$stopping" ] || break
  for i in 0 1 2; do
    if ! kill -0 "${svcs[$i]}" 2>/dev/null; then
      echo "node$((i + 1)) stopped while starting; its log ($dev/node$((i + 1))/smtpq.log) ends:" >&2
      tail -n 5 "$dev/node$((i + 1))/smtpq.log" >&2
      break 2
    fi
  done
  sleep 0.1
done
if [ -z "$stopping" ] && [ "${up:-0}" = 3 ]; then
  cat <<EOF
cluster running: 3 nodes on one stream (replicas: 3). Ctrl-C stops all.

enqueue (through any node's configuration; the stream gives it to one node):
  printf 'From: you@example.org\r\nTo: you@example.org\r\nSubject: hello from the cluster\r\n\r\nhello\r\n' | $bin enqueue --config $dev/node2/smtpq.yaml -

watch:
  tail -f $dev/node*/smtpq.log          # the nodes' logs: which one sent what
  ls $dev/node*/sent $dev/received      # the nodes' Sent copies; what the sink got
EOF
elif [ -z "$stopping" ]; then
  echo "the cluster did not come up; stopping it" >&2
  failed=1 stopping=1
  stop_nodes TERM
fi

# Wait for every node. A trapped signal makes wait return early (above 128)
# while a node is still shutting down: wait again for its own status. Once
# one node has stopped, by a signal or by itself, the others are stopped too.
status=0
for pid in "${svcs[@]}"; do
  while :; do
    forwarded=
    st=0
    wait "$pid" || st=$?
    [ -n "$forwarded" ] || break
  done
  unset "live[$pid]"
  [ "$status" != 0 ] || status=$st
  if [ -z "$stopping" ]; then
    stopping=1
    stop_nodes TERM
  fi
done
[ -z "$failed" ] || [ "$status" != 0 ] || status=1
exit "$status"
