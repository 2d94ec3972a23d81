#!/usr/bin/env bash
# Runs the service on the development config, with a loopback SMTP sink
# (smtpq devsink) on 127.0.0.1:2525 beside it. Used by "make run".
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=bin/smtpq
cfg=testdata/dev/smtpq.yaml
mkdir -p .dev
"$bin" devsink --listen 127.0.0.1:2525 --dir .dev/received --fail-prefix nobody >.dev/devsink.log 2>&1 &
sink=$!
trap 'kill "$sink" 2>/dev/null; wait "$sink" 2>/dev/null || true' EXIT
echo "devsink (pid $sink) on 127.0.0.1:2525, saving to .dev/received/ (log: .dev/devsink.log)"
"$bin" run --config "$cfg" --init
