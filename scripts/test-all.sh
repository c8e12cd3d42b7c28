#!/usr/bin/env bash
# Every test and check lpcmon has, in one command: the README's test command, and what CI runs.
#
# On a fresh Debian 12 machine (as root) it installs what it needs first: Chromium and
# chromedriver for the dashboard test, mingw-w64 and wine for the Windows smoke test, and the
# rustup targets for the no_std and Windows checks.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

step "prerequisites"
missing=()
have chromium || missing+=(chromium)
have chromedriver || missing+=(chromium-driver)
have x86_64-w64-mingw32-gcc || missing+=(gcc-mingw-w64-x86-64)
have wine || missing+=(wine wine64)
have systemd-analyze || missing+=(systemd)
have dpkg-deb || missing+=(dpkg)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: ${missing[*]} (run as root, or apt-get install them)" >&2
        exit 2
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# rust-toolchain.toml pins the toolchain and lists these targets; this makes sure they are there.
rustup target add x86_64-unknown-none x86_64-pc-windows-msvc x86_64-pc-windows-gnu >/dev/null
# Builds the .deb below. Compiling it takes a few minutes the first time.
have cargo-deb || cargo install cargo-deb --locked --quiet

step "format"
cargo fmt --all -- --check

step "clippy (Linux)"
cargo clippy --workspace --all-targets -- -D warnings

step "tests (Linux: protocol, simulation, sensor on the real proc connector, port, HTTP, browser)"
cargo test --workspace

step "loom: the producer queue's interleavings"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p lpcmon-protocol --release --test loom_queue

step "no allocator: the protocol as the driver builds it"
cargo check -p lpcmon-protocol --no-default-features --target x86_64-unknown-none

step "Windows: type-check and clippy (x86_64-pc-windows-msvc)"
# The bundled SQLite is C, and compiling it for MSVC needs the Windows SDK, which Linux does not
# have. Type-checking needs no compiled library: point libsqlite3-sys at an empty one.
no_sqlite="$PWD/target/no-sqlite"
mkdir -p "$no_sqlite"
without_sqlite=(env LIBSQLITE3_SYS_USE_PKG_CONFIG=1 SQLITE3_LIB_DIR="$no_sqlite" SQLITE3_INCLUDE_DIR="$no_sqlite")
"${without_sqlite[@]}" cargo check --workspace --all-targets --target x86_64-pc-windows-msvc
"${without_sqlite[@]}" cargo clippy --workspace --all-targets --target x86_64-pc-windows-msvc -- -D warnings

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
cargo deb -p lpcmon
deb="$(ls -t target/debian/lpcmon_*.deb | head -n 1)"
dpkg-deb --contents "$deb" | grep -E 'usr/bin/lpcmon$|lpcmon\.service$'

step "all checks passed"
