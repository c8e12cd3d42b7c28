#!/usr/bin/env bash
# Property-based contract tests of the real `lpcmon serve` against openapi.yaml (issue 9):
# schemathesis with every check, three times:
#   1. no token configured;
#   2. a token configured, and every request carries `Authorization: Bearer`;
#   3. a token configured and no header: every protected route must answer 401.
# Each run is bounded by --max-examples and a short --request-timeout (the SSE route never
# ends; schemathesis reads it until the timeout, then checks the events it got).
#
# Needs: the venv with schemathesis (scripts/test-all.sh makes it), a built `lpcmon` binary.
# Usage: scripts/schemathesis.sh [path/to/lpcmon]
set -euo pipefail
cd "$(dirname "$0")/.."

LPCMON=${1:-target/debug/lpcmon}
ST=${SCHEMATHESIS:-.venv-ci/bin/schemathesis}
EXAMPLES=${SCHEMATHESIS_EXAMPLES:-20}
TIMEOUT=${SCHEMATHESIS_REQUEST_TIMEOUT:-1}

work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Starts `lpcmon serve` on a free loopback port with a few hundred events stored; sets $base.
start_server() {
    local port sock
    port=$(free_port)
    sock="$work/port-$port/events.sock"
    "$LPCMON" serve --store memory --listen "127.0.0.1:$port" --port "$sock" --sensor none \
        --header-timeout 5s --idle-timeout 30s >"$work/server-$port.log" 2>&1 &
    server_pid=$!
    base="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do
        if curl -fsS "$base/healthz" >/dev/null 2>&1; then
            break
        fi
        sleep 0.1
    done
    curl -fsS "$base/healthz" >/dev/null || { cat "$work/server-$port.log"; exit 1; }
    # Events to page through, fetch by id and replay on the stream.
    "$LPCMON" loadgen --connect "$sock" --count 300 --rate 0 >/dev/null
}

stop_server() {
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=
}

run() {
    local name=$1
    shift
    printf '\n--- schemathesis: %s\n' "$name"
    "$ST" run openapi.yaml --url "$base" --checks all \
        --max-examples "$EXAMPLES" --request-timeout "$TIMEOUT" \
        --seed 9 --no-color --warnings off "$@"
}

start_server
run "no token"
stop_server

token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
export LPCMON_TOKEN=$token
start_server
run "token and header" -H "Authorization: Bearer $token"

# Without the header every protected operation must refuse: the spec documents 401 for them,
# and the public ones (/, /assets, /healthz) must still work.
printf '\n--- token without header: every protected route answers 401\n'
for path in /events /events/1 /events/stream /stats /metrics /openapi.yaml; do
    status=$(curl -s -o /dev/null -w '%{http_code}' --max-time "$TIMEOUT" "$base$path" || true)
    if [ "$status" != 401 ]; then
        echo "$path answered $status without a token, not 401" >&2
        exit 1
    fi
done
run "token, no header (protected routes expect 401)" \
    --include-path-regex '^/(events|stats|metrics|openapi\.yaml)'
stop_server
unset LPCMON_TOKEN
printf '\nschemathesis: all runs passed\n'
