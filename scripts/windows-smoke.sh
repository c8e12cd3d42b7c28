#!/usr/bin/env bash
# Windows smoke test on Linux: cross-builds lpcmon.exe with mingw-w64 and runs it under wine.
#
# Wine has no LPC or ALPC (its legacy port calls are stubs returning STATUS_NOT_IMPLEMENTED, and
# its ntdll does not export NtAlpc* at all), so this proves only that the Windows build starts and
# that a port it cannot create is reported clearly and ends the process with a failure:
#   1. `lpcmon.exe --help` runs and exits 0 (the exe and all its imports load);
#   2. `lpcmon.exe serve` (ALPC) fails naming the missing ntdll ALPC function (the first it needs
#      is AlpcMaxAllowedMessageLength) and STATUS_PROCEDURE_NOT_FOUND,
#      because lpcmon resolves ntdll's port functions at run time instead of importing them;
#   3. `lpcmon.exe serve --port-api lpc` fails with NtCreatePort's STATUS_NOT_IMPLEMENTED.
#
# Needs gcc-mingw-w64-x86-64 and wine (Debian 12: wine 8.0); installs them with apt-get when run
# as root. SMOKE_PACKAGE / SMOKE_BIN pick another binary with the same command line.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
package=${SMOKE_PACKAGE:-lpcmon}
bin=${SMOKE_BIN:-lpcmon}
target=x86_64-pc-windows-gnu

have() { command -v "$1" >/dev/null 2>&1; }

if ! have x86_64-w64-mingw32-gcc || ! have wine; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "windows-smoke: needs gcc-mingw-w64-x86-64 and wine: apt-get install gcc-mingw-w64-x86-64 wine wine64" >&2
        exit 2
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-mingw-w64-x86-64 wine wine64 >/dev/null
fi
if have rustup; then
    (cd "$root" && rustup target add "$target" >/dev/null 2>&1) || true
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
# The dev profile: this test checks that the exe starts and reports errors, not its speed, and
# an unoptimised cross-build takes half the time.
(cd "$root" && cargo build --quiet --target "$target" -p "$package" --bin "$bin")
exe=$CARGO_TARGET_DIR/$target/debug/$bin.exe

work=$(mktemp -d)
export WINEPREFIX=$work/prefix WINEARCH=win64 WINEDEBUG=-all
cleanup() {
    # Stop only this prefix's wineserver, which the runs below started.
    wineserver -k >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

cp "$exe" "$work/"
# Rust's std (1.78 and later) imports ProcessPrng from bcryptprimitives.dll, which Windows 10
# and later have and wine 8.0 does not, so without this the exe does not even load. The shim sits
# next to the exe, where the loader looks first, and only for this test.
cat >"$work/prng.c" <<'EOF'
#include <windows.h>
#include <ntsecapi.h>
__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (!RtlGenRandom(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
EOF
x86_64-w64-mingw32-gcc -shared -O2 -o "$work/bcryptprimitives.dll" "$work/prng.c" -ladvapi32

passed=0
failed=0
status=0
output=""

# Runs the exe under wine with a time limit; leaves its exit status and output (without
# wine's own prefix-creation chatter) in $status and $output.
run() {
    set +e
    output=$(cd "$work" && timeout 180 wine "./$bin.exe" "$@" 2>&1 \
        | grep -v -e 'rundll32.exe' -e 'configuration directory' -e 'has been updated')
    status=${PIPESTATUS[0]}
    set -e
    printf '%s\n' "$output" | sed 's/^/    | /'
}

verdict() {
    if [ "$1" = ok ]; then
        echo "ok: $2"
        passed=$((passed + 1))
    else
        echo "FAILED: $2 (exit status $status)"
        failed=$((failed + 1))
    fi
}

# A failure that ended the process on its own: non-zero, and neither a timeout nor a crash.
failed_cleanly() { [ "$status" -ne 0 ] && [ "$status" -ne 124 ] && [ "$status" -lt 128 ]; }

echo "windows-smoke: $bin.exe --help"
run --help
if [ "$status" -eq 0 ]; then verdict ok "starts under wine"; else verdict no "starts under wine"; fi

echo "windows-smoke: $bin.exe serve"
run serve --store memory
# The first ALPC function serve needs is AlpcMaxAllowedMessageLength (to size the port), then
# NtAlpcCreatePort; wine lacks both, and the error must name the one it hit.
if failed_cleanly && grep -qE 'ntdll!(Nt)?Alpc[A-Za-z]+' <<<"$output" && grep -q 'STATUS_PROCEDURE_NOT_FOUND' <<<"$output"; then
    verdict ok "ALPC serve reports the missing ntdll ALPC function and exits non-zero"
else
    verdict no "ALPC serve reports the missing ntdll ALPC function and exits non-zero"
fi

echo "windows-smoke: $bin.exe serve --port-api lpc"
run serve --store memory --port-api lpc
if failed_cleanly && grep -q 'NtCreatePort' <<<"$output" && grep -q 'STATUS_NOT_IMPLEMENTED' <<<"$output"; then
    verdict ok "legacy LPC serve reports STATUS_NOT_IMPLEMENTED and exits non-zero"
else
    verdict no "legacy LPC serve reports STATUS_NOT_IMPLEMENTED and exits non-zero"
fi

echo "windows-smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
