# Sourced by the test scripts: installs Debian packages that are missing.
#
#   missing=(); have foo || missing+=(foo-package); install_missing "${missing[@]}"

have() { command -v "$1" >/dev/null 2>&1; }

# Installs the packages named (none: nothing to do). Needs root; otherwise says what to install
# and exits 2.
install_missing() {
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages: $* (run as root, or apt-get install them)" >&2
        exit 2
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Appends to `missing` what scripts/check-driver.sh needs: bindgen over libclang, and mingw-w64's
# compiler, binutils and DDK headers.
driver_check_missing() {
    have bindgen || missing+=(bindgen)
    have clang || missing+=(clang)
    ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || missing+=(libclang-dev)
    [ -e /usr/share/mingw-w64/include/ddk/ntddk.h ] || missing+=(mingw-w64-x86-64-dev)
    have x86_64-w64-mingw32-gcc || missing+=(gcc-mingw-w64-x86-64)
    have x86_64-w64-mingw32-dlltool || missing+=(binutils-mingw-w64-x86-64)
}
