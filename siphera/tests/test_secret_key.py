"""With DEBUG off the server refuses to start on the development placeholder key (as
SECRET_KEY or anywhere in the SECRET_KEYS ring), with a message that says what to do."""

from __future__ import annotations

import secrets
import subprocess
import sys

import httpx
import pytest

from siphera.settings import DEV_SECRET_KEY
from tests.fixtures import ROOT, _free_port, child_env, server_with_env


def start_server(tmp_path, **env: str) -> subprocess.CompletedProcess:
    env.setdefault("SIPHERA_VAR_DIR", str(tmp_path))  # no var/secret_key of this checkout
    return subprocess.run(
        [sys.executable, "-m", "siphera.serve", "--host", "127.0.0.1", "--port", str(_free_port())],
        cwd=ROOT,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    "keys",
    [
        {"SECRET_KEY": DEV_SECRET_KEY, "SECRET_KEYS": ""},
        {"SECRET_KEY": "", "SECRET_KEYS": ""},
        {"SECRET_KEY": "a-real-key-" + "x" * 40, "SECRET_KEYS": f"new-{'y' * 40},{DEV_SECRET_KEY}"},
    ],
    ids=["placeholder-key", "empty-key", "placeholder-in-ring"],
)
def test_the_server_refuses_to_start_on_the_placeholder_key_with_debug_off(keys, tmp_path):
    # Given DEBUG off and the development placeholder (or no key) where a key belongs
    # When the web process starts
    started = start_server(tmp_path, DEBUG="false", **keys)
    # Then it exits non-zero at once, saying which setting to fix and how
    assert started.returncode != 0
    output = started.stdout + started.stderr
    assert "Refusing to start" in output, output[-3000:]
    assert "SECRET_KEY" in output and "Traceback" not in output, output[-3000:]


def test_without_secret_key_the_key_make_run_generated_is_used(tmp_path):
    # Given no SECRET_KEY, and the key file `make run` writes on its first run
    (tmp_path / "secret_key").write_text(secrets.token_urlsafe(50) + "\n")
    # When the web process starts with DEBUG off, it serves
    with server_with_env(
        tmp_path / "server.log",
        DEBUG="false",
        SECRET_KEY="",
        SECRET_KEYS="",
        SIPHERA_VAR_DIR=str(tmp_path),
    ) as server:
        assert httpx.get(f"{server.url}/health").status_code == 200
