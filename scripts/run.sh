#!/usr/bin/env bash
# `make run`, after the virtualenv and services are ensured: migrate, seed the demo org,
# then run web (uvicorn), worker and beat (Celery) in the foreground until Ctrl-C/SIGTERM,
# and stop everything it started then, or as soon as one of them exits. With
# RUN_COTURN=true it also runs a loopback-only coturn (TURN) that web hands credentials for.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

PY="$ROOT/.venv/bin/python"
[[ -x $PY ]] || die ".venv is missing: run 'make run' (it creates it) or scripts/ensure_venv.sh."
PORT="${PORT:-8000}"
HOST="${HOST:-127.0.0.1}"
QUEUE="${CELERY_QUEUE:-siphera}"
DEMO_PASSWORD="${DEMO_PASSWORD:-demo-pass-123}"
export DEMO_PASSWORD
mkdir -p "$VAR_DIR"

# With DEBUG off the server refuses the placeholder SECRET_KEY. Unless one is given, make
# one on the first run and keep it in var/secret_key (mode 600): siphera/settings.py reads
# it whenever SECRET_KEY is unset (web, worker, beat, and manage.py in another shell).
KEY_FILE="$VAR_DIR/secret_key"
if [[ -z ${SECRET_KEY:-} && ! -s $KEY_FILE ]]; then
    (umask 077 && "$PY" -c 'import secrets; print(secrets.token_urlsafe(50))' >"$KEY_FILE.tmp")
    mv "$KEY_FILE.tmp" "$KEY_FILE"
    note "SECRET_KEY is not set: generated one in $KEY_FILE (kept for the next runs)"
fi
export SIPHERA_VAR_DIR="$VAR_DIR"

# Fail before migrating if the port is taken, with a message that says what to do.
if ! "$PY" - "$HOST" "$PORT" <<'PY'; then
import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as exc:
        sys.exit(f"ERROR: cannot listen on {host}:{port} ({exc.strerror}).")
PY
    die "Port $PORT is taken: stop what uses it, or run on another: make run PORT=8001"
fi

# A TURN server on 127.0.0.1 for calls between clients on this machine (docs/operations.md,
# "TURN"). Web signs credentials with TURN_SECRETS (made up for this run when unset) and,
# unless TURN_URLS says otherwise, hands out this server's URLs.
COTURN_CONF=""
if [[ ${RUN_COTURN:-false} =~ ^(1|true|yes|on)$ ]]; then
    "$ROOT/scripts/ensure_coturn.sh"
    COTURN_PORT="${COTURN_PORT:-3478}"
    [[ $COTURN_PORT =~ ^[0-9]+$ ]] || die "COTURN_PORT must be a port number, not '$COTURN_PORT'."
    "$PY" -c "import socket; socket.socket().bind(('127.0.0.1', $COTURN_PORT)); \
socket.socket(type=socket.SOCK_DGRAM).bind(('127.0.0.1', $COTURN_PORT))" 2>/dev/null ||
        die "Port $COTURN_PORT (TCP or UDP) is taken: stop what uses it (a system coturn?)," \
            "or run coturn on another: make run RUN_COTURN=true COTURN_PORT=3479"
    if [[ -z ${TURN_SECRETS:-} ]]; then
        TURN_SECRETS="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(32))')"
        note "TURN_SECRETS is not set: coturn and web share a secret made for this run"
    fi
    TURN_URLS="${TURN_URLS:-turn:127.0.0.1:$COTURN_PORT?transport=udp,turn:127.0.0.1:$COTURN_PORT?transport=tcp}"
    export TURN_SECRETS TURN_URLS
    COTURN_CONF="$VAR_DIR/coturn-$COTURN_PORT/turnserver.conf"
    COTURN_PORT=$COTURN_PORT "$ROOT/scripts/ensure_coturn.sh" --config "$COTURN_CONF"
fi

say "Migrating the public schema (shared apps: orgs and domains)"
"$PY" manage.py migrate_schemas --shared --noinput
say "Migrating every org's schema (tenant apps)"
"$PY" manage.py migrate_schemas --tenant --noinput
say "Seeding the demo org (kept as it is when it exists)"
"$PY" manage.py seed_demo
say "Collecting static files into var/static (whitenoise serves them)"
"$PY" manage.py collectstatic --noinput -v 0

# --- processes ------------------------------------------------------------------------------

declare -A NAME_OF=()
PIDS=()

# Each process gets its own session and process group (setsid), so stopping it stops its
# children too (Celery's pool); --pdeathsig stops it if this script is killed outright.
start() {
    local name=$1
    shift
    setsid setpriv --pdeathsig TERM -- "$@" </dev/null &
    local pid=$!
    PIDS+=("$pid")
    NAME_OF[$pid]=$name
    note "$name started (pid $pid): $*"
}

STOPPING=""
# TERM each process (uvicorn and Celery shut down gracefully and stop their own children),
# then, after at most 20 s, KILL whatever is left in each process group.
stop_all() {
    [[ -z $STOPPING ]] || return 0
    STOPPING=1
    trap '' INT TERM HUP
    say "Stopping web, worker and beat"
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    local deadline=$((SECONDS + 20))
    for pid in "${PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
            sleep 0.2
        done
        kill -0 "$pid" 2>/dev/null && note "${NAME_OF[$pid]} did not stop within 20 s; killing it"
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    say "Stopped"
}
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM HUP
trap 'stop_all' EXIT

if [[ -n $COTURN_CONF ]]; then
    say "Starting coturn on 127.0.0.1:$COTURN_PORT (config $COTURN_CONF)"
    start coturn turnserver -c "$COTURN_CONF"
fi
say "Starting web, worker and beat (Ctrl-C stops all three)"
start web "$PY" -m siphera.serve --host "$HOST" --port "$PORT"
start worker "$PY" -m celery -A siphera worker -Q "$QUEUE" --loglevel INFO \
    --hostname "siphera-$PORT@%h"
start beat "$PY" -m celery -A siphera beat --loglevel INFO \
    --schedule "$VAR_DIR/celerybeat-schedule"

# Tell the URL once the web process answers.
deadline=$((SECONDS + 60))
until "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/health', timeout=1)" \
    2>/dev/null; do
    if ! kill -0 "${PIDS[0]}" 2>/dev/null || ((SECONDS > deadline)); then
        die "the web process did not come up on port $PORT (its output is above)."
    fi
    sleep 0.3
done
[[ $HOST == 127.0.0.1 || $HOST == 0.0.0.0 || $HOST == localhost ]] && shown=127.0.0.1 || shown=$HOST
turn_shown="${TURN_URLS:-not configured (make run RUN_COTURN=true runs a local coturn)}"
[[ -n $COTURN_CONF ]] && turn_shown="coturn on 127.0.0.1:$COTURN_PORT; web hands out $TURN_URLS"
cat >&2 <<BANNER

  Siphera is running.
    Portal:   http://demo.localhost:$PORT/portal/   (or http://$shown:$PORT/)
    API:      http://demo.localhost:$PORT/api/v1/docs/
    Health:   http://$shown:$PORT/health   Ready: http://$shown:$PORT/ready
    Log in as admin (owner), alice, bob or carol with password: $DEMO_PASSWORD
    TURN:     $turn_shown
  Ctrl-C stops web, worker and beat.

BANNER

# Run until a signal arrives (the traps stop everything) or one process exits on its own.
set +e
wait -n -p exited "${PIDS[@]}"
status=$?
set -e
say "${NAME_OF[${exited:-}]:-a process} exited with status $status; stopping the others"
exit 1
