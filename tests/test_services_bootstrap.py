"""The set-up that `make run` and `make test` promise in the README.

scripts/ensure_services.sh starts a PostgreSQL and a Redis that are not running: the tests
point DATABASE_URL and REDIS_URL at free local ports where nothing runs (so the machine's
own servers are never touched), let the script bring both up under a private var
directory, check that they answer and that the database exists, and stop them again with
`--stop-local`. And the README's configuration table names every environment variable
that siphera/settings.py reads.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "ensure_services.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def private_services():
    """Environment for the script: URLs on two unused ports, state in a fresh directory.

    The directory is made under /tmp with mode 755 because, as root, the script runs
    PostgreSQL as the `postgres` user, which must be able to reach it.
    """
    pg_port = _free_port()
    redis_port = _free_port()
    while redis_port == pg_port:
        redis_port = _free_port()
    assert not _answers(pg_port) and not _answers(redis_port)
    var_dir = Path(tempfile.mkdtemp(prefix="siphera-bootstrap-"))
    var_dir.chmod(0o755)
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{pg_port}/bootstrap_check",
        "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "SIPHERA_VAR_DIR": str(var_dir),
    }
    yield env, pg_port, redis_port
    stop = subprocess.run(
        ["bash", str(SCRIPT), "--stop-local"], env=env, capture_output=True, text=True
    )
    shutil.rmtree(var_dir, ignore_errors=True)
    assert stop.returncode == 0, stop.stderr
    assert not _answers(pg_port), "PostgreSQL still runs after --stop-local"
    assert not _answers(redis_port), "Redis still runs after --stop-local"


def _ensure(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=240
    )


def test_ensure_services_starts_stopped_postgres_and_redis_and_creates_the_database(
    private_services,
):
    env, pg_port, redis_port = private_services

    result = _ensure(env)

    assert result.returncode == 0, result.stderr
    with psycopg.connect(env["DATABASE_URL"], connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("bootstrap_check",)
    client = redis.Redis.from_url(env["REDIS_URL"], socket_timeout=5)
    try:
        assert client.ping() is True
    finally:
        client.close()
    assert "Creating database bootstrap_check" in result.stderr


def test_ensure_services_leaves_running_services_alone_on_a_second_run(private_services):
    env, _, _ = private_services
    assert _ensure(env).returncode == 0

    again = _ensure(env)

    assert again.returncode == 0, again.stderr
    assert "PostgreSQL answers" in again.stderr
    assert "Database bootstrap_check exists" in again.stderr
    assert "Redis answers" in again.stderr
    assert "Starting" not in again.stderr


def test_readme_configuration_table_lists_every_variable_settings_reads():
    settings_source = (ROOT / "siphera" / "settings.py").read_text()
    read = set(
        re.findall(r"""\benv(?:_int|_bool|_list)?\(\s*["']([A-Z][A-Z0-9_]*)["']""", settings_source)
    ) | set(
        re.findall(
            r"""(?:os\.environ\.get|os\.getenv|os\.environ\[)\(?\s*["']([A-Z][A-Z0-9_]*)["']""",
            settings_source,
        )
    )
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", readme, re.MULTILINE))

    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY"} <= read  # the scan itself works
    missing = sorted(read - documented)
    assert not missing, f"add these to the README's configuration table: {missing}"
