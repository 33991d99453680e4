#!/usr/bin/env bash
# coturn (the TURN relay calls use) for development and the tests.
#
#   scripts/ensure_coturn.sh                 install Debian's coturn when `turnserver` is
#                                            missing (`make test`; `make run` with RUN_COTURN)
#   scripts/ensure_coturn.sh --config FILE   write FILE (mode 600): a turnserver config for a
#                                            loopback-only TURN server that accepts the
#                                            credentials Siphera signs with TURN_SECRETS
#
# --config reads TURN_SECRETS (comma-separated, required; every one is accepted, as during a
# rotation), COTURN_PORT (3478), COTURN_REALM (siphera.local) and COTURN_PID_FILE (beside
# FILE). The server it describes listens on 127.0.0.1 only (UDP and TCP, no TLS/DTLS),
# relays on 127.0.0.1 and allows loopback peers (so two clients on this machine can talk
# through it), has no CLI, and logs to stdout, not syslog. Never use it in production: see
# docs/operations.md, "TURN". The secrets go into the file, not onto a command line that
# `ps` would show.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

ensure_installed() {
    if command -v turnserver >/dev/null 2>&1; then
        say "coturn is installed ($(command -v turnserver))"
        return
    fi
    say "coturn's turnserver is missing (the TURN tests and RUN_COTURN need it); installing coturn"
    apt_install coturn
    command -v turnserver >/dev/null 2>&1 || die "coturn was installed but turnserver is not on PATH."
    say "coturn installed ($(turnserver --version 2>/dev/null | head -n 1 || echo turnserver))"
}

write_config() {
    local file=$1
    local port="${COTURN_PORT:-3478}" realm="${COTURN_REALM:-siphera.local}"
    local pid_file="${COTURN_PID_FILE:-${file%.conf}.pid}"
    [[ -n ${TURN_SECRETS:-} ]] || die "TURN_SECRETS is empty: coturn would accept no credential."
    [[ $port =~ ^[0-9]+$ ]] || die "COTURN_PORT must be a port number, not '$port'."
    [[ $realm =~ ^[A-Za-z0-9.-]+$ ]] || die "COTURN_REALM must be a host-like name, not '$realm'."
    local dir
    dir="$(dirname "$file")"
    mkdir -p "$dir"
    local secret secrets=()
    IFS=',' read -r -a secrets <<<"$TURN_SECRETS"
    (
        umask 077
        {
            echo "# Written by scripts/ensure_coturn.sh: a loopback-only TURN server for"
            echo "# development and tests (use-auth-secret, TURN REST API credentials)."
            echo "listening-ip=127.0.0.1"
            echo "listening-port=$port"
            echo "relay-ip=127.0.0.1"
            echo "allow-loopback-peers"
            echo "no-multicast-peers"
            echo "realm=$realm"
            echo "use-auth-secret"
            for secret in "${secrets[@]}"; do
                secret="${secret#"${secret%%[![:space:]]*}"}"
                secret="${secret%"${secret##*[![:space:]]}"}"
                if [[ -n $secret ]]; then echo "static-auth-secret=$secret"; fi
            done
            echo "fingerprint"
            echo "no-tls"
            echo "no-dtls"
            echo "no-cli"
            echo "log-file=stdout"
            echo "simple-log"
            echo "pidfile=$pid_file"
            # Its own (empty) user database, not the system's /var/lib/turn/turndb.
            echo "userdb=$dir/turndb"
        } >"$file"
    )
    chmod 600 "$file"
}

case "${1:-}" in
"") ensure_installed ;;
--config)
    [[ -n ${2:-} ]] || { usage >&2 && exit 2; }
    write_config "$2"
    ;;
-h | --help) usage ;;
*) usage >&2 && exit 2 ;;
esac
