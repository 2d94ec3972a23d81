#!/usr/bin/env bash
# make demo: a fake SMTP server and the service; the sample messages in
# testdata/messages are enqueued (some to fail on purpose), and the script
# shows where each one went.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=bin/smtpq
cfg=testdata/dev/demo.yaml
rm -rf .dev/demo
mkdir -p .dev/demo

"$bin" devsink --listen 127.0.0.1:2526 --dir .dev/demo/received --fail-prefix nobody >.dev/demo/devsink.log 2>&1 &
sink=$!
svc=
cleanup() {
  [ -n "$svc" ] && kill "$svc" 2>/dev/null && wait "$svc" 2>/dev/null || true
  kill "$sink" 2>/dev/null; wait "$sink" 2>/dev/null || true
}
trap cleanup EXIT

"$bin" keygen --config "$cfg"
mkdir -p .dev/demo/queue

declare -A want
echo "== enqueueing"
for f in testdata/messages/*.eml; do
  path=$("$bin" enqueue --config "$cfg" --from app@example.com --to "user@example.org" "$f")
  want[$(basename "$path")]="$(basename "$f") -> user@example.org"
  case "$f" in
    *long-lines.eml) want[$(basename "$path")]+=" (a 5,000-character line: the server refuses it, as many do)" ;;
  esac
done
# Refused by the server (550): goes to Undeliverable with an XML log.
path=$("$bin" enqueue --config "$cfg" --from app@example.com --to nobody@example.org testdata/messages/plain-crlf.eml)
want[$(basename "$path")]="plain-crlf.eml -> nobody@example.org (refused on purpose)"
# Through the sendmail interface, recipients from the headers.
printf 'From: cron@example.com\nTo: ops@example.org\nSubject: nightly job\n\nall good\n' |
  "$bin" sendmail --config "$cfg" -t -v | sed 's/^/sendmail: /'
# A tampered file: a copy of a queued message with one byte of its seal changed.
tmp=$(mktemp -d)
src=$("$bin" enqueue --config "$cfg" --from app@example.com --to user@example.org testdata/messages/plain-lf.eml)
sed '2s/./X/5' "$src" > "$tmp/20000101T000000.000000000Z-tampered.eml"
mv "$tmp/20000101T000000.000000000Z-tampered.eml" .dev/demo/queue/
want[20000101T000000.000000000Z-tampered.eml]="a tampered seal (refused on purpose)"
rmdir "$tmp"
"$bin" enqueue --config "$cfg" --from app@example.com --to later@example.org --not-before 1h testdata/messages/plain-lf.eml >/dev/null

echo "== starting the service on the backlog"
"$bin" run --config "$cfg" --init >.dev/demo/service.log 2>&1 &
svc=$!

echo "== waiting for the queue to drain"
for _ in $(seq 100); do
  left=$({ find .dev/demo/queue -maxdepth 1 -name '*.eml' 2>/dev/null || true; } | wc -l)
  active=$({ find .dev/demo/queue/.active -name '*.eml' 2>/dev/null || true; } | wc -l)
  [ "$left" = 0 ] && [ "$active" = 0 ] && break
  sleep 0.2
done
sleep 0.5

echo "== where each message went"
for name in "${!want[@]}"; do
  where=queue
  for d in sent undeliverable; do [ -f ".dev/demo/$d/$name" ] && where=$d; done
  if [ "$where" = queue ] && find .dev/demo/queue/.deferred -name "$name" 2>/dev/null | grep -q .; then where=deferred; fi
  printf '%-14s %s  (%s)\n' "$where" "$name" "${want[$name]}"
done | sort
echo
echo "received by the fake server: $(ls .dev/demo/received | wc -l) messages in .dev/demo/received/"
echo "Undeliverable logs:"
for x in .dev/demo/undeliverable/*.xml; do
  printf '  %s: %s\n' "$(basename "$x")" "$(grep -o '<failure[^>]*>[^<]*' "$x" | sed 's/<failure //')"
done
echo "(a message scheduled 1h ahead with --not-before is waiting in .dev/demo/queue/.deferred/)"
echo "service log: .dev/demo/service.log"
