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
