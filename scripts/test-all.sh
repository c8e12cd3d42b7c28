#!/usr/bin/env bash
# Every test and check lpcmon has, in one command: the README's test command, and what CI runs.
#
# On a fresh Debian 12 machine (as root) it installs what it needs first: Chromium and
# chromedriver for the dashboard test, mingw-w64 and wine for the Windows smoke test, the
# rustup targets for the no_std and Windows checks, schemathesis (pip, into .venv-ci/) and
# @redocly/cli (npm, into .ci-tools/) for the HTTP contract. Node.js 20.19+ must be on PATH
# (Debian 12's own nodejs is 18, too old for @redocly/cli 2; use NodeSource's node_20.x).
# scripts/check-driver.sh installs what the driver check needs (bindgen, clang, libclang-dev,
# mingw-w64's DDK headers).
# curl and python3 run the examples' tests (examples/curl.sh, examples/follow.py).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's wall time, printed at the end (also when a step fails), so CI's cost is visible.
step_name=""
step_started=$SECONDS
timings=()
end_step() {
    [ -n "$step_name" ] && timings+=("$(printf '%5ss  %s' "$((SECONDS - step_started))" "$step_name")")
    step_name=""
}
print_timings() {
    end_step
    printf '\n==> time per step (%ss in all)\n' "$SECONDS"
    printf '%s\n' "${timings[@]}"
}
trap print_timings EXIT
step() {
    end_step
    step_name="$*"
    step_started=$SECONDS
    printf '\n==> %s\n' "$*"
}
# shellcheck source=scripts/prerequisites.sh
. scripts/prerequisites.sh

step "prerequisites"
missing=()
have chromium || missing+=(chromium)
have chromedriver || missing+=(chromium-driver)
have x86_64-w64-mingw32-gcc || missing+=(gcc-mingw-w64-x86-64)
have wine || missing+=(wine wine64)
# The examples' tests run examples/curl.sh and examples/follow.py (standard library only).
have curl || missing+=(curl)
have python3 || missing+=(python3)
# The fleet tests (lpcmon/tests/fleet.rs) start real NATS JetStream servers.
have nats-server || missing+=(nats-server)
# The fleet's mutual-TLS test makes its certificates with openssl.
have openssl || missing+=(openssl)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
have npm || missing+=(nodejs npm)
have systemd-analyze || missing+=(systemd)
have dpkg-deb || missing+=(dpkg)
# scripts/check-driver.sh's packages too, so there is one `apt-get update` and one install.
driver_check_missing
install_missing "${missing[@]}"
# rust-toolchain.toml pins the toolchain and lists these targets; this makes sure they are there.
rustup target add x86_64-unknown-none x86_64-pc-windows-msvc x86_64-pc-windows-gnu >/dev/null
# The HTTP contract's tools, pinned, kept out of git (see .gitignore).
SCHEMATHESIS_VERSION=4.32.5
REDOCLY_VERSION=2.11.1
if ! .venv-ci/bin/schemathesis --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    python3 -m venv .venv-ci
    .venv-ci/bin/pip install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
if ! .ci-tools/node_modules/.bin/redocly --version 2>/dev/null | grep -qx "$REDOCLY_VERSION"; then
    npm install --silent --no-audit --no-fund --prefix .ci-tools "@redocly/cli@$REDOCLY_VERSION" >/dev/null
fi
# Builds the .deb at the end. Compiling it takes a few minutes the first time. Without its
# default features it compresses with the system's `xz` (xz-utils, always on Debian) instead of
# compiling liblzma.
have cargo-deb || cargo install cargo-deb --locked --quiet --no-default-features

step "format"
cargo fmt --all -- --check

step "clippy (Linux)"
cargo clippy --workspace --all-targets -- -D warnings

step "tests (Linux: protocol, simulation, sensor on the real proc connector, port, HTTP, browser)"
cargo test --workspace

step "HTTP contract: redocly lint (recommended rules; no errors, no warnings)"
lint=$(.ci-tools/node_modules/.bin/redocly lint openapi.yaml --format stylish 2>&1) || { echo "$lint"; exit 1; }
echo "$lint" | tail -3
if echo "$lint" | grep -qE '(warning|error) '; then
    echo "$lint"
    echo "redocly lint reported warnings" >&2
    exit 1
fi

step "HTTP contract: schemathesis against a real lpcmon serve (no token; token+header; token, no header)"
cargo build -p lpcmon --quiet
bash scripts/schemathesis.sh target/debug/lpcmon

step "loom: the producer queue's interleavings"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p lpcmon-protocol --release --test loom_queue

step "no allocator: the protocol as the driver builds it"
cargo check -p lpcmon-protocol --no-default-features --target x86_64-unknown-none

step "Windows: type-check and lint with clippy (x86_64-pc-windows-msvc)"
# The bundled SQLite is C, and compiling it for MSVC needs the Windows SDK, which Linux does not
# have. Type-checking needs no compiled library: point libsqlite3-sys at an empty one.
no_sqlite="$PWD/target/no-sqlite"
mkdir -p "$no_sqlite"
without_sqlite=(env LIBSQLITE3_SYS_USE_PKG_CONFIG=1 SQLITE3_LIB_DIR="$no_sqlite" SQLITE3_INCLUDE_DIR="$no_sqlite")
# clippy runs every check `cargo check` does, and the lints on top: one pass over the workspace.
"${without_sqlite[@]}" cargo clippy --workspace --all-targets --target x86_64-pc-windows-msvc -- -D warnings

step "Windows driver: compiled, linted and linked on Linux against mingw-w64's ntoskrnl exports"
bash scripts/check-driver.sh

step "Windows: mingw build run under wine"
bash scripts/windows-smoke.sh

step "Linux service: the systemd unit, and the .deb that installs it"
unit_dir="$(mktemp -d)"
# verify checks that ExecStart's binary exists: point it at the one just built.
cargo build --quiet -p lpcmon --bin lpcmon
sed "s#/usr/bin/lpcmon#$PWD/target/debug/lpcmon#" packaging/systemd/lpcmon.service >"$unit_dir/lpcmon.service"
systemd-analyze verify "$unit_dir/lpcmon.service"
systemd-analyze security --offline=yes --threshold=40 "$unit_dir/lpcmon.service" | tail -n 1
rm -r "$unit_dir"
bash scripts/package-assets.sh
cargo deb -p lpcmon --no-build
deb="$(ls -t target/debian/lpcmon_*.deb | head -n 1)"
contents="$(dpkg-deb --contents "$deb")"
for installed in usr/bin/lpcmon lpcmon.service man1/lpcmon.1.gz completions/lpcmon _lpcmon lpcmon.fish; do
    grep -qE "$installed\$" <<<"$contents" || { echo "$deb lacks $installed" >&2; exit 1; }
done
echo "$deb installs the binary, the unit, the man page and the completions"

step "all checks passed"
