#!/usr/bin/env bash
# Compiles, lints and links the Windows kernel driver (driver/) on Linux, with mingw-w64.
#
# 1. Stand-in `wdk-sys` bindings: bindgen (Debian's, over libclang) renders mingw-w64's DDK
#    <ntddk.h>, allow-listed to the names driver/src uses, with wdk-sys's settings (`core` types,
#    enums as module constants); every STATUS_* of ntstatus.h is added.
# 2. Stand-ins for `wdk`, `wdk-panic`, `wdk-alloc`, `wdk-build` (scripts/driver-check/): exactly
#    what the driver uses. They replace the real crates through `[patch.crates-io]` entries passed
#    as `cargo --config` arguments: the driver's manifests are not edited, and its Cargo.lock
#    (which cargo rewrites for the patch) is restored on exit.
# 3. `cargo check` and `cargo clippy -D warnings` for x86_64-pc-windows-gnu.
# 4. `cargo build --release`: the stand-in wdk-build links the cdylib with GNU ld as a native
#    image with entry DriverEntry, against mingw-w64's libntoskrnl.a and a small import library
#    (drivercheck/extra-imports.def, made with dlltool) for the exports it lacks. The result is
#    target/driver/lpcmon_driver.sys.
# 5. The PE is checked: native subsystem, DriverEntry as entry point, imports from ntoskrnl.exe
#    only.
#
# What this proves and what not: see "Building on Linux" in driver/README.md. The real build
# (Microsoft's WDK, MSVC link, signing, packaging) is .github/workflows/driver.yml.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$root/target/driver-check
target=x86_64-pc-windows-gnu

step() { printf '\n==> driver: %s\n' "$*"; }
# shellcheck source=scripts/prerequisites.sh
. scripts/prerequisites.sh

step "prerequisites"
missing=()
driver_check_missing
install_missing "${missing[@]}"
rustup target add "$target" >/dev/null

step "stand-in WDK crates in $work/crates"
rm -rf "$work/crates"
mkdir -p "$work/crates" "$work/imports"
cp -r scripts/driver-check/wdk-sys scripts/driver-check/wdk scripts/driver-check/wdk-panic \
    scripts/driver-check/wdk-alloc scripts/driver-check/wdk-build "$work/crates/"

inc=/usr/share/mingw-w64/include
# Every name driver/src takes from wdk-sys, and DbgPrint for the `wdk` stand-in.
functions='DbgPrint|ExFreePool|KeInitializeEvent|KeSetEvent|KeWaitForMultipleObjects|KeWaitForSingleObject|MmGetSystemRoutineAddress|ObReferenceObjectByHandle|ObfDereferenceObject|PsCreateSystemThread|PsGetCurrentThreadId|PsRemoveCreateThreadNotifyRoutine|PsRemoveLoadImageNotifyRoutine|PsSetCreateThreadNotifyRoutine|PsSetLoadImageNotifyRoutine|PsTerminateSystemThread|ZwClose|ZwOpenKey|ZwQueryValueKey'
types='BOOLEAN|DRIVER_OBJECT|HANDLE|KEVENT|KPROCESSOR_MODE|LARGE_INTEGER|NTSTATUS|OBJECT_ATTRIBUTES|PCUNICODE_STRING|PDRIVER_OBJECT|PEPROCESS|PETHREAD|PIMAGE_INFO|PUNICODE_STRING|PVOID|SIZE_T|ULONG|UNICODE_STRING|_EVENT_TYPE|_KEY_VALUE_INFORMATION_CLASS|_KWAIT_REASON|_MODE|_WAIT_TYPE'
bindgen "$root/scripts/driver-check/ntddk.h" \
    --use-core --ctypes-prefix core::ffi --default-enum-style moduleconsts \
    --no-layout-tests --no-doc-comments \
    --allowlist-function "^($functions)\$" --allowlist-type "^($types)\$" \
    -o "$work/crates/wdk-sys/src/bindings.rs" \
    -- --target=x86_64-w64-mingw32 -I"$inc/ddk" -I"$inc" -D_AMD64_ \
    -Wno-pragma-pack -Wno-incompatible-library-redeclaration 2>"$work/bindgen.log" \
    || { cat "$work/bindgen.log" >&2; exit 1; }
# ntstatus.h spells each code as `#define STATUS_X ((NTSTATUS)0x...)`, a cast bindgen cannot
# evaluate; render them as wdk-sys does, NTSTATUS constants.
sed -nE 's/^#define (STATUS_[A-Z0-9_]+) +\(\(NTSTATUS\)(0x[0-9A-Fa-f]+)L?\).*/pub const \1: NTSTATUS = \2_u32 as NTSTATUS;/p' \
    "$inc/ntstatus.h" | sort -u -t: -k1,1 > "$work/crates/wdk-sys/src/status.rs"
routines=$(awk '/^extern "C" \{/ {on=1; next} on && /^\}/ {on=0} on && /pub fn/ {n++} END {print n+0}' \
    "$work/crates/wdk-sys/src/bindings.rs")
echo "$routines routines, $(wc -l < "$work/crates/wdk-sys/src/status.rs") status codes"

step "import library for exports mingw-w64's libntoskrnl.a lacks"
x86_64-w64-mingw32-dlltool --input-def scripts/driver-check/extra-imports.def \
    --dllname ntoskrnl.exe --output-lib "$work/imports/liblpcmon_extra_imports.a"
export LPCMON_EXTRA_IMPORTS_DIR="$work/imports"

patch=()
for crate in wdk-sys wdk wdk-panic wdk-alloc wdk-build; do
    patch+=(--config "patch.crates-io.$crate.path=\"$work/crates/$crate\"")
done
lock_backup=$(mktemp)
cp driver/Cargo.lock "$lock_backup"
trap 'cp "$lock_backup" "$root/driver/Cargo.lock"; rm -f "$lock_backup"' EXIT

cd driver
export CARGO_TARGET_DIR="$work/target"
step "cargo check ($target)"
cargo check "${patch[@]}" --target "$target"
step "cargo clippy -D warnings ($target)"
cargo clippy "${patch[@]}" --target "$target" -- -D warnings
step "link (release, GNU ld, native subsystem)"
cargo build "${patch[@]}" --target "$target" --release
cd "$root"
mkdir -p target/driver
sys=target/driver/lpcmon_driver.sys
cp "$work/target/$target/release/lpcmon_driver.dll" "$sys"

step "check the PE: $sys"
headers=$(x86_64-w64-mingw32-objdump -p "$sys")
fail() { echo "check-driver: $*" >&2; exit 1; }
grep -Eq '^Subsystem[[:space:]]+00000001' <<<"$headers" || fail "subsystem is not native (1)"
dlls=$(sed -nE 's/^[[:space:]]*DLL Name: (.*)$/\1/p' <<<"$headers" | sort -u)
[ "$dlls" = "ntoskrnl.exe" ] || fail "imports from other than ntoskrnl.exe: $(echo $dlls)"
entry=$(sed -nE 's/^AddressOfEntryPoint[[:space:]]+([0-9a-fA-F]+)$/\1/p' <<<"$headers")
base=$(sed -nE 's/^ImageBase[[:space:]]+([0-9a-fA-F]+)$/\1/p' <<<"$headers")
# The export table lists RVAs by index ("[ i] +base[ o] RVA Export RVA") and names by index
# ("[ i] name"); the entry point must be DriverEntry's RVA.
export_rva=$(awk '
    /^Export Address Table -- Ordinal Base/ { section = "rva"; next }
    /^\[Ordinal\/Name Pointer\] Table/ { section = "name"; next }
    /^$/ { section = "" }
    section == "rva" && /Export RVA/ { gsub(/[][]/, " "); rva[$1] = $4 }
    section == "name" { gsub(/[][]/, " "); if ($2 == "DriverEntry") found = $1 }
    END { if (found != "") print rva[found] }' <<<"$headers")
[ -n "$export_rva" ] || fail "DriverEntry is not exported"
[ "$((16#$entry))" -eq "$((16#$export_rva))" ] || fail "entry point $entry is not DriverEntry ($export_rva)"
imports=$(awk '/DLL Name: ntoskrnl.exe/{on=1;next} on && /^$/{on=0} on && NF>=3 {print $NF}' <<<"$headers" | grep -v -e '^Name$' -e '^Bound-To$' | sort -u)
echo "$sys: $(stat -c %s "$sys") bytes, subsystem native, entry DriverEntry (base 0x$base + 0x$entry)"
echo "imports from ntoskrnl.exe ($(wc -l <<<"$imports")): $(echo $imports)"
