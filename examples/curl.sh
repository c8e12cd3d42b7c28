#!/usr/bin/env bash
# The README's tour of lpcmon's HTTP API with nothing but curl:
#   1. the newest events, then paging through history with `after` / `next_after`;
#   2. filtering (kind, pid, substring);
#   3. following the live stream (server-sent events);
#   4. resuming the stream where it stopped with `Last-Event-ID`.
#
# Usage: examples/curl.sh [BASE_URL]     (or LPCMON_URL; default http://127.0.0.1:7878)
# With a token: LPCMON_TOKEN=... examples/curl.sh
set -euo pipefail

BASE="${1:-${LPCMON_URL:-http://127.0.0.1:7878}}"
BASE="${BASE%/}"
auth=()
if [ -n "${LPCMON_TOKEN:-}" ]; then
    auth=(-H "Authorization: Bearer ${LPCMON_TOKEN}")
fi
# Loopback needs no proxy, whatever the environment says.
export no_proxy="*" NO_PROXY="*"

get() { curl -sS --fail-with-body --max-time 10 "${auth[@]}" "$BASE$1"; }
# The value of a numeric JSON field (good enough for lpcmon's flat page envelope).
field() { { grep -o "\"$1\":[0-9]*" || true; } | head -n 1 | cut -d: -f2; }
section() { printf '\n== %s\n' "$*"; }

section "health"
get /healthz
echo

section "the 3 newest events"
get '/events?limit=3'
echo

section "paging through history from the start, 10 events a page"
after=0
pages=0
total=0
while [ "$pages" -lt 1000 ]; do
    page=$(get "/events?after=${after}&limit=10")
    n=$(printf '%s' "$page" | { grep -o '"id":[0-9]*,"kind"' || true; } | wc -l)
    [ "$n" -eq 0 ] && break
    next=$(printf '%s' "$page" | field next_after)
    [ -z "$next" ] && break
    pages=$((pages + 1))
    total=$((total + n))
    echo "page ${pages}: ${n} events, next_after=${next}"
    after=$next
done
echo "paged ${total} events in ${pages} pages"

section "filtered: process.exec events only, newest 3"
get '/events?kind=process.exec&limit=3'
echo

section "following the live stream for 2 seconds"
# A stream never ends by itself: --max-time stops it (curl's exit code 28 is expected).
stream=$(curl -s -N --max-time 2 "${auth[@]}" "$BASE/events/stream?after=0" || true)
printf '%s\n' "$stream" | { grep -E '^(id|event):' || true; } | head -n 20
last=$(printf '%s\n' "$stream" | { grep '^id:' || true; } | tail -n 1 | cut -d: -f2 | tr -d ' ')
echo "last id seen: ${last:-none}"

section "resuming after id ${last:-0} with Last-Event-ID (2 seconds)"
{ curl -s -N --max-time 2 "${auth[@]}" -H "Last-Event-ID: ${last:-0}" "$BASE/events/stream" || true; } \
    | { grep -E '^(id|event):' || true; } | head -n 20
echo "(only events after ${last:-0}, and a 'gap' if some were evicted meanwhile)"
