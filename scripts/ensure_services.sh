#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis named by DATABASE_URL and REDIS_URL answer, starting
# (or installing) them when they are local and down, then create the database if missing.
#
#   scripts/ensure_services.sh               ensure both (used by `make run` / `make test`)
#   scripts/ensure_services.sh --stop-local  stop the project-local servers this script
#                                            started under var/ for these URLs
#
# For a local address (127.0.0.1, localhost, ::1, a socket directory) that does not answer:
#   PostgreSQL: start the Debian cluster on that port (pg_ctlcluster), else initdb a
#     project-local cluster under var/postgres-<port>/ (trust auth) and start it, else
#     install PostgreSQL with apt-get and try again.
#   Redis: start redis-server on that port with no persistence, data under var/redis-<port>/,
#     installing redis-server with apt-get when it is missing.
# A remote address is only checked: this script never starts anything elsewhere.
set -euo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/siphera}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# --- URLs -----------------------------------------------------------------------------------

parse_urls() {
    local python
    python="$(command -v python3 || command -v python3.11 || true)"
    [[ -n $python ]] || die "python3 is needed to read DATABASE_URL/REDIS_URL and is missing."
    local out
    out="$(
        "$python" - "$DATABASE_URL" "$REDIS_URL" <<'PY'
import shlex
import sys
from urllib.parse import unquote, urlsplit

db, redis = urlsplit(sys.argv[1]), urlsplit(sys.argv[2])
if db.scheme not in ("postgres", "postgresql", "pgsql", "postgis"):
    sys.exit(f"DATABASE_URL must be a postgres:// URL, got scheme {db.scheme!r}")
if redis.scheme not in ("redis", "rediss"):
    sys.exit(f"REDIS_URL must be a redis:// or rediss:// URL, got scheme {redis.scheme!r}")
values = {
    "PG_USER": unquote(db.username or "postgres"),
    "PG_PASSWORD": unquote(db.password or ""),
    # A percent-encoded path in the host part is a Unix socket directory.
    "PG_HOST": unquote(db.hostname or "") if "%2f" not in db.netloc.lower()
    else unquote(db.netloc.rsplit("@", 1)[-1].split(":")[0]),
    "PG_PORT": str(db.port or 5432),
    "PG_DB": unquote(db.path.lstrip("/")) or "postgres",
    "REDIS_HOST": redis.hostname or "127.0.0.1",
    "REDIS_PORT": str(redis.port or 6379),
    "REDIS_PASSWORD": unquote(redis.password or ""),
    "REDIS_TLS": "1" if redis.scheme == "rediss" else "",
}
for key, value in values.items():
    print(f"{key}={shlex.quote(value)}")
PY
    )" || die "cannot read DATABASE_URL/REDIS_URL (see above)."
    eval "$out"
}

is_local() {
    case "$1" in
    "" | 127.0.0.1 | localhost | ::1 | /*) return 0 ;;
    *) return 1 ;;
    esac
}

# Run a command that may leave a daemon behind without handing it our lock (a daemon
# holding it would block every later run).
no_lock() {
    if [[ -n ${LOCK_FD:-} ]]; then "$@" {LOCK_FD}>&-; else "$@"; fi
}

pg_where() { echo "${PG_HOST:-local socket}:$PG_PORT"; }

# --- PostgreSQL ---------------------------------------------------------------------------

pg_answers() {
    if command -v pg_isready >/dev/null 2>&1 && pg_isready --version >/dev/null 2>&1; then
        local args=(-q -t 3 -p "$PG_PORT")
        [[ -n $PG_HOST ]] && args+=(-h "$PG_HOST")
        pg_isready "${args[@]}"
    elif [[ -n $PG_HOST && $PG_HOST != /* ]]; then
        # No client tools: an open TCP port is the best we can tell.
        timeout 5 bash -c "exec 3<>/dev/tcp/${PG_HOST}/${PG_PORT}" 2>/dev/null
    else
        return 1
    fi
}

# Directory with initdb/pg_ctl: the newest Debian server package, else whatever is on PATH.
pg_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x $dir/initdb && -x $dir/pg_ctl ]] && { echo "$dir"; return 0; }
    done
    if command -v initdb >/dev/null 2>&1; then
        dir="$(dirname "$(readlink -f "$(command -v initdb)")")"
        [[ -x $dir/pg_ctl ]] && { echo "$dir"; return 0; }
    fi
    return 1
}

# PostgreSQL refuses to run as root: as root, the project-local cluster belongs to `postgres`.
pg_owner() {
    if [[ $(id -u) -eq 0 ]]; then echo postgres; else id -un; fi
}

as_pg_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# The project-local cluster's directory: var/postgres-<port>, unless we are root and the
# `postgres` user cannot reach var/ (a checkout under /root, say): then a directory of its
# own under /var/lib/postgresql, named after this checkout so two checkouts never share one.
local_pg_dir() {
    local preferred="$VAR_DIR/postgres-$PG_PORT"
    if [[ $(id -u) -eq 0 ]] && id postgres >/dev/null 2>&1; then
        mkdir -p "$VAR_DIR"
        if ! runuser -u postgres -- test -x "$VAR_DIR" 2>/dev/null; then
            local tag
            tag="$(printf '%s' "$VAR_DIR" | cksum | cut -d' ' -f1)"
            echo "/var/lib/postgresql/siphera-$tag-$PG_PORT"
            return
        fi
    fi
    echo "$preferred"
}

# "version name owner logfile" of the Debian cluster on $PG_PORT, if any.
debian_cluster() {
    command -v pg_lsclusters >/dev/null 2>&1 || return 1
    pg_lsclusters --no-header 2>/dev/null |
        awk -v port="$PG_PORT" '$3 == port { print $1, $2, $5, $7; found = 1; exit }
            END { exit !found }'
}

start_debian_cluster() {
    local version=$1 name=$2 owner=$3 logfile=$4
    say "Starting the Debian PostgreSQL cluster $version/$name on port $PG_PORT"
    local cmd=(pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start)
    if [[ $(id -un) == "$owner" ]]; then
        no_lock "${cmd[@]}" || true
    else
        no_lock as_root "${cmd[@]}" || true
    fi
    wait_for 30 pg_answers ||
        die "PostgreSQL cluster $version/$name did not come up on port $PG_PORT." \
            "Its log: $logfile"
}

start_local_cluster() {
    local bindir=$1 dir data owner
    dir="$(local_pg_dir)"
    data="$dir/data"
    owner="$(pg_owner)"
    if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
        die "PostgreSQL will not run as root and there is no 'postgres' user to run it as." \
            "Create one (useradd --system postgres) or run this as an ordinary user."
    fi
    if [[ ! -f $data/PG_VERSION ]]; then
        say "Creating a project-local PostgreSQL cluster in $data (port $PG_PORT, trust auth)"
        [[ $dir == "$VAR_DIR"/* ]] ||
            note "(not under $VAR_DIR: the 'postgres' user cannot reach that directory)"
        mkdir -p "$dir"
        [[ $(id -u) -eq 0 ]] && chown "$owner": "$dir"
        as_pg_owner "$bindir/initdb" -D "$data" -U "$PG_USER" --auth=trust -E UTF8 --no-locale \
            >"$dir/initdb.log" 2>&1 ||
            die "initdb failed; its output is in $dir/initdb.log"
        local listen sockets="''"
        case "$PG_HOST" in
        /*) listen="''" sockets="'$PG_HOST'" ;;
        "") listen="'localhost'" sockets="'/var/run/postgresql,/tmp'" ;;
        *) listen="'$PG_HOST'" ;;
        esac
        as_pg_owner tee -a "$data/postgresql.conf" >/dev/null <<CONF

# Set by scripts/ensure_services.sh for this project-local cluster
port = $PG_PORT
listen_addresses = $listen
unix_socket_directories = $sockets
max_connections = 200
CONF
    fi
    say "Starting the project-local PostgreSQL in $data (port $PG_PORT)"
    no_lock as_pg_owner "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start \
        >/dev/null ||
        die "PostgreSQL did not start; its log is $dir/server.log"
    wait_for 30 pg_answers || die "PostgreSQL started but does not answer at $(pg_where)." \
        "Its log: $dir/server.log"
    note "started; stop it with: scripts/ensure_services.sh --stop-local"
}

ensure_postgres() {
    if pg_answers; then
        say "PostgreSQL answers at $(pg_where)"
        return
    fi
    is_local "$PG_HOST" ||
        die "PostgreSQL at $(pg_where) (DATABASE_URL) does not answer." \
            "It is not a local address, so this script will not start it: start it, or" \
            "point DATABASE_URL at one that runs."
    say "PostgreSQL does not answer at $(pg_where); starting one"
    local cluster bindir
    if cluster="$(debian_cluster)"; then
        # shellcheck disable=SC2086
        start_debian_cluster $cluster
        return
    fi
    if [[ -f "$(local_pg_dir)/data/PG_VERSION" ]] || bindir="$(pg_bindir)"; then
        bindir="${bindir:-$(pg_bindir)}" ||
            die "The project-local cluster in $(local_pg_dir) exists but PostgreSQL is gone."
        start_local_cluster "$bindir"
        return
    fi
    say "PostgreSQL is not installed"
    no_lock apt_install postgresql
    if pg_answers; then
        say "PostgreSQL answers at $(pg_where) (started by its package)"
    elif cluster="$(debian_cluster)"; then
        # shellcheck disable=SC2086
        start_debian_cluster $cluster
    else
        bindir="$(pg_bindir)" || die "PostgreSQL was installed but initdb/pg_ctl are not found."
        start_local_cluster "$bindir"
    fi
}

pg_client_args() {
    # -w: never prompt for a password (a prompt would hang `make` under CI).
    PG_ARGS=(-w -p "$PG_PORT" -U "$PG_USER")
    [[ -n $PG_HOST ]] && PG_ARGS+=(-h "$PG_HOST")
    return 0
}

# --- a password for a local server that asks for one ---------------------------------------
#
# Debian's clusters (`apt-get install postgresql`, pg_createcluster) ask for a password over
# TCP (scram-sha-256 on pg_hba.conf's host lines) and the default DATABASE_URL carries none.
# For a local server only, this does what Debian's docs do: as the `postgres` OS user over
# the local socket (peer authentication; runuser as root, else passwordless sudo) it gives
# the URL's role a generated password, creating the role (LOGIN CREATEDB) when it does not
# exist, and keeps the password in var/pgpass (mode 600), libpq's password file, which every
# process of the checkout reads (siphera/settings.py points PGPASSFILE at it; so does this
# script). pg_hba.conf is left as it is. A role that has a password of its own is left alone:
# that one belongs in DATABASE_URL.

PGPASS_FILE="$VAR_DIR/pgpass"

use_pgpass_file() {
    [[ -z ${PGPASSFILE:-} && -f $PGPASS_FILE ]] && export PGPASSFILE="$PGPASS_FILE"
    return 0
}

# psql as PostgreSQL's superuser over the local socket, as the `postgres` OS user.
# Returns 127 when this script cannot become that user.
psql_as_postgres() {
    local cmd=(psql -X -q -w -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres "$@")
    [[ $PG_HOST == /* ]] && cmd+=(-h "$PG_HOST")
    if [[ $(id -un) == postgres ]]; then
        "${cmd[@]}"
    elif [[ $(id -u) -eq 0 ]] && id postgres >/dev/null 2>&1; then
        (cd / && runuser -u postgres -- "${cmd[@]}")
    elif command -v sudo >/dev/null 2>&1 && sudo -n -u postgres true 2>/dev/null; then
        (cd / && sudo -n -u postgres -- "${cmd[@]}")
    else
        return 127
    fi
}

# Our line for this port and role in var/pgpass, if any.
pgpass_has_ours() {
    [[ -f $PGPASS_FILE ]] &&
        awk -F: -v p="$PG_PORT" -v u="$PG_USER" '$2 == p && $4 == u { found = 1 }
            END { exit !found }' "$PGPASS_FILE"
}

give_role_a_password() {
    local ask="PostgreSQL at $(pg_where) asks for a password for role $PG_USER and DATABASE_URL has none"
    local state status=0
    state="$(psql_as_postgres -t -A -v role="$PG_USER" <<'SQL'
SELECT coalesce((SELECT CASE WHEN rolpassword IS NULL THEN 'none' ELSE 'set' END
                 FROM pg_authid WHERE rolname = :'role'), 'missing');
SQL
    )" || status=$?
    case $status in
    0) ;;
    127) die "$ask." "Put the password in DATABASE_URL (postgres://$PG_USER:PASSWORD@...), or run" \
        "this as root or with passwordless sudo: it then sets one up as the postgres user" \
        "(docs/operations.md, \"A fresh Debian machine\")." ;;
    *) die "$ask, and connecting as the postgres OS user over the local socket failed (see" \
        "above). Put the password in DATABASE_URL (postgres://$PG_USER:PASSWORD@...)." ;;
    esac
    if [[ $state == set ]] && ! pgpass_has_ours; then
        die "$ask." "Role $PG_USER has a password of its own, which this script does not change:" \
            "put it in DATABASE_URL (postgres://$PG_USER:PASSWORD@$(pg_where)/$PG_DB)."
    fi
    local password
    password="$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32)"
    [[ ${#password} -eq 32 ]] || die "could not generate a password (/dev/urandom?)."
    # The password travels on psql's standard input, never on a command line.
    psql_as_postgres -v role="$PG_USER" -v state="$state" >/dev/null <<SQL ||
\\set password '$password'
SELECT format(CASE WHEN :'state' = 'missing' THEN 'CREATE ROLE %I LOGIN CREATEDB PASSWORD %L'
                   ELSE 'ALTER ROLE %I PASSWORD %L' END, :'role', :'password') \\gexec
SQL
        die "could not set the password of role $PG_USER (see above)."
    local hosts=(localhost) host
    [[ -n $PG_HOST && $PG_HOST != /* && $PG_HOST != localhost ]] && hosts+=("${PG_HOST//:/\\:}")
    mkdir -p "$VAR_DIR"
    (
        umask 077
        {
            [[ -f $PGPASS_FILE ]] &&
                awk -F: -v p="$PG_PORT" -v u="$PG_USER" '!($2 == p && $4 == u)' "$PGPASS_FILE"
            for host in "${hosts[@]}"; do
                printf '%s:%s:*:%s:%s\n' "$host" "$PG_PORT" "$PG_USER" "$password"
            done
        } >"$PGPASS_FILE.tmp"
    )
    mv "$PGPASS_FILE.tmp" "$PGPASS_FILE"
    use_pgpass_file
    case $state in
    missing) say "Created role $PG_USER (LOGIN CREATEDB) with a generated password" ;;
    none) say "Gave role $PG_USER a generated password (it had none)" ;;
    set) say "Gave role $PG_USER a new generated password (the one in $PGPASS_FILE was refused)" ;;
    esac
    note "$ask: set up as the postgres user over the local socket; the password is in"
    note "$PGPASS_FILE (mode 600), which the checkout's processes read. pg_hba.conf is unchanged."
}

ensure_database() {
    export PGPASSWORD="$PG_PASSWORD" PGCONNECT_TIMEOUT=10
    use_pgpass_file
    if command -v psql >/dev/null 2>&1 && psql --version >/dev/null 2>&1; then
        pg_client_args
        local exists maintenance=postgres failed
        # Connect to the maintenance database to look; a fresh server always has one of these.
        if ! failed="$(psql -X -q "${PG_ARGS[@]}" -d postgres -c "" 2>&1 >/dev/null)"; then
            if [[ $failed == *"no password supplied"* || $failed == *"password authentication failed"* ]] &&
                [[ -z $PG_PASSWORD ]] && is_local "$PG_HOST"; then
                give_role_a_password
            elif [[ $failed == *"database \"postgres\" does not exist"* ]]; then
                maintenance=template1
            fi
        fi
        [[ $PG_DB == postgres ]] && { say "Database postgres exists"; return; }
        exists="$(psql -X -q -t -A "${PG_ARGS[@]}" -d "$maintenance" -v db="$PG_DB" \
            <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")" ||
            die "Cannot connect to PostgreSQL at $(pg_where) as $PG_USER (see above)."
        if [[ $exists == 1 ]]; then
            say "Database $PG_DB exists"
        else
            say "Creating database $PG_DB"
            createdb "${PG_ARGS[@]}" --maintenance-db="$maintenance" -- "$PG_DB" ||
                die "Could not create database $PG_DB (does $PG_USER have CREATEDB?)."
        fi
    else
        # No client tools here (a remote server): use the project's own driver.
        local python="$ROOT/.venv/bin/python"
        [[ -x $python ]] || die "Neither psql nor the project's virtualenv is available to" \
            "create database $PG_DB: run 'make' targets (they create .venv) or install psql."
        "$python" - "$DATABASE_URL" <<'PY' || die "Could not check/create database $PG_DB."
import sys

import dj_database_url
import psycopg
from psycopg import sql

cfg = dj_database_url.parse(sys.argv[1])
conn = psycopg.connect(
    dbname="postgres", user=cfg["USER"] or "postgres", password=cfg["PASSWORD"] or None,
    host=cfg["HOST"] or None, port=cfg["PORT"] or 5432, autocommit=True, connect_timeout=10,
)
name = cfg["NAME"]
if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
    print(f"==> Database {name} exists", file=sys.stderr)
else:
    print(f"==> Creating database {name}", file=sys.stderr)
    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
PY
    fi
}

# --- Redis --------------------------------------------------------------------------------

redis_answers() {
    if [[ -n $REDIS_TLS ]]; then
        # A TLS endpoint is a managed service: an open port is what we can check from bash.
        timeout 5 bash -c "exec 3<>/dev/tcp/${REDIS_HOST}/${REDIS_PORT}" 2>/dev/null
        return
    fi
    local reply
    reply="$(
        timeout 5 bash -c '
            exec 3<>"/dev/tcp/$1/$2" || exit 1
            [[ -n $3 ]] && printf "AUTH %s\r\n" "$3" >&3 && IFS= read -r -t 3 _ <&3
            printf "PING\r\n" >&3
            IFS= read -r -t 3 line <&3 && printf "%s" "$line"
        ' _ "$REDIS_HOST" "$REDIS_PORT" "$REDIS_PASSWORD" 2>/dev/null
    )" || return 1
    [[ $reply == +PONG* ]]
}

local_redis_dir() { echo "$VAR_DIR/redis-$REDIS_PORT"; }

start_local_redis() {
    local dir bind
    dir="$(local_redis_dir)"
    mkdir -p "$dir"
    case "$REDIS_HOST" in
    ::1) bind="::1" ;;
    *) bind="127.0.0.1 -::1" ;; # "-" : bind ::1 too when the machine has it
    esac
    say "Starting redis-server on port $REDIS_PORT (no persistence; files in $dir)"
    local args=(--daemonize yes --port "$REDIS_PORT" --save "" --appendonly no
        --dir "$dir" --logfile "$dir/redis.log" --pidfile "$dir/redis.pid")
    # shellcheck disable=SC2206
    args+=(--bind $bind)
    [[ -n $REDIS_PASSWORD ]] && args+=(--requirepass "$REDIS_PASSWORD")
    no_lock redis-server "${args[@]}" </dev/null ||
        die "redis-server did not start; its log is $dir/redis.log"
    wait_for 20 redis_answers ||
        die "redis-server started but does not answer on port $REDIS_PORT; log: $dir/redis.log"
    note "started; stop it with: scripts/ensure_services.sh --stop-local"
}

ensure_redis() {
    if redis_answers; then
        say "Redis answers at $REDIS_HOST:$REDIS_PORT"
        return
    fi
    is_local "$REDIS_HOST" ||
        die "Redis at $REDIS_HOST:$REDIS_PORT (REDIS_URL) does not answer." \
            "It is not a local address, so this script will not start it: start it, or" \
            "point REDIS_URL at one that runs."
    [[ -z $REDIS_TLS ]] || die "REDIS_URL is rediss:// (TLS) on a local address and does not" \
        "answer; a local Redis is started only for plain redis:// URLs."
    say "Redis does not answer at $REDIS_HOST:$REDIS_PORT; starting one"
    if ! command -v redis-server >/dev/null 2>&1; then
        say "redis-server is not installed"
        no_lock apt_install redis-server
        # Its package may have started a server on the default port.
        if redis_answers; then
            say "Redis answers at $REDIS_HOST:$REDIS_PORT (started by its package)"
            return
        fi
    fi
    start_local_redis
}

# --- stop ---------------------------------------------------------------------------------

stop_local() {
    local dir data pid
    dir="$(local_pg_dir)"
    data="$dir/data"
    if [[ -f $data/postmaster.pid ]]; then
        local bindir
        bindir="$(pg_bindir)" || die "Cannot find pg_ctl to stop the cluster in $data."
        say "Stopping the project-local PostgreSQL in $data"
        as_pg_owner "$bindir/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
    else
        say "No project-local PostgreSQL runs for port $PG_PORT"
    fi
    dir="$(local_redis_dir)"
    pid="$(cat "$dir/redis.pid" 2>/dev/null || true)"
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        say "Stopping the project-local redis-server (pid $pid, port $REDIS_PORT)"
        kill -TERM "$pid"
        wait_for 20 bash -c "! kill -0 $pid" || kill -KILL "$pid" 2>/dev/null || true
        rm -f "$dir/redis.pid"
    else
        say "No project-local redis-server runs for port $REDIS_PORT"
    fi
}

# --- main ---------------------------------------------------------------------------------

main() {
    case "${1:-}" in
    "") ;;
    --stop-local) parse_urls && stop_local && return ;;
    -h | --help) usage && return ;;
    *) usage >&2 && exit 2 ;;
    esac
    parse_urls
    mkdir -p "$VAR_DIR"
    # One run at a time per checkout: two `make test` started together must not both start
    # the same server.
    exec {LOCK_FD}>"$VAR_DIR/.ensure_services.lock"
    flock -w 300 "$LOCK_FD" || die "another ensure_services.sh has held $VAR_DIR's lock for 5 min."
    ensure_postgres
    ensure_database
    ensure_redis
}

main "$@"
