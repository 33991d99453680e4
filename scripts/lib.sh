# Shared helpers for the set-up scripts (sourced, not run).
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where local state lives (project-local PostgreSQL/Redis, logs, beat schedule).
VAR_DIR="${SIPHERA_VAR_DIR:-$ROOT/var}"

say() { printf '==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$1" >&2
    shift
    for line in "$@"; do printf '       %s\n' "$line" >&2; done
    exit 1
}

# Run a command as root: directly when we are root, else through passwordless sudo.
# Returns 127 (and says why) when neither is possible.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        printf 'ERROR: need root for: %s\n' "$*" >&2
        printf '       run as root, or allow passwordless sudo, or run it yourself.\n' >&2
        return 127
    fi
}

_APT_UPDATED=""
# Install Debian packages (apt-get update once per script run first). Another apt-get
# running (two `make` targets at once, unattended-upgrades) is waited for, up to 5 min.
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "cannot install $* here: no apt-get (this is not Debian/Ubuntu)." \
            "Install $* with your system's package manager, then run this again."
    if [[ -z $_APT_UPDATED ]]; then
        say "apt-get update (to install $*)"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq ||
            die "apt-get update failed; cannot install $*."
        _APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
        --no-install-recommends "$@" \
        </dev/null || die "apt-get install $* failed (see above)."
}

# Wait up to $1 seconds for the command "${@:2}" to succeed.
wait_for() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}
