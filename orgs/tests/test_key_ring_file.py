"""A key-ring file that cannot be used (siphera.keyring; docs/key-rotation.md, "When the
file is wrong"): malformed, unreadable, open to other users. A command refuses it with the
file and the fault named; a running web process keeps the ring it read before (a hand
edit gone wrong must not stop every process) and says so in /ready; a process that never
had a ring is not ready and answers 503, never 500."""

from __future__ import annotations

import json
import os
import time
from io import StringIO

import httpx
import pytest
from django.core.management import CommandError, call_command

from siphera import keyring
from siphera.health import KEPT_RING
from tests.fixtures import (
    PASSWORD,
    Api,
    DeviceKeys,
    host_of,
    make_user,
    register_device,
    server_with_env,
    unique,
)

GOOD = {"v": 1, "keys": [], "retired": []}
STAMP = "2026-01-01T00:00:00+00:00"


def _write(path, content: str | dict, mode: int = 0o600) -> None:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    os.chmod(path, mode)


# What a key-ring file must not be, and the words that say so.
BAD_FILES = [
    ("{not json", 0o600, "not valid JSON"),
    ("[]", 0o600, "not a version 1 key-ring file"),
    ({"v": 2, "keys": []}, 0o600, "not a version 1 key-ring file"),
    ({"v": 1, "keys": {}}, 0o600, "must be lists"),
    ({"v": 1, "keys": [{"state": "active"}]}, 0o600, "key 0 has no `material`"),
    ({"v": 1, "keys": [{"material": " ", "state": "old"}]}, 0o600, "key 0 has no `material`"),
    ({"v": 1, "keys": [{"material": "k" * 44, "state": "ACTIVE"}]}, 0o600, "has state 'ACTIVE'"),
    (
        {"v": 1, "keys": [{"material": "k" * 44, "state": "active", "added_at": "yesterday"}]},
        0o600,
        "bad `added_at`",
    ),
    (
        {"v": 1, "keys": [{"material": "k" * 44, "promoted_at": "2026-01-01T00:00:00"}]},
        0o600,
        "bad `promoted_at`",
    ),
    ({"v": 1, "keys": [], "retired": ["abc"]}, 0o600, "retired entry 0 has no `id`"),
    (GOOD, 0o644, "open to other users (mode 0644)"),
    (GOOD, 0o604, "open to other users"),
    (GOOD, 0o620, "open to other users"),
    (b"\xff\xfe".decode("latin-1"), 0o600, "not valid JSON"),
]


@pytest.fixture
def ring_file(settings, tmp_path):
    settings.KEY_RING_FILE = str(tmp_path / "key_ring.json")
    settings.CACHE_KEY_PREFIX = unique("keyring-file")
    keyring.forget_cached()
    yield tmp_path / "key_ring.json"
    keyring.forget_cached()


@pytest.mark.parametrize(("content", "mode", "says"), BAD_FILES)
def test_a_command_refuses_an_unusable_key_ring_file_naming_the_fault(
    ring_file, content, mode, says
):
    _write(ring_file, content, mode)
    for args in (["--status"], ["--new-key"]):
        with pytest.raises(CommandError) as refused:
            call_command("rotate_keys", *args, stdout=StringIO(), stderr=StringIO())
        assert says in str(refused.value) and str(ring_file) in str(refused.value)
    # Nothing was written over it.
    assert os.stat(ring_file).st_mode & 0o777 == mode


def test_a_file_that_goes_away_under_a_running_process_leaves_its_keys_in_place(ring_file):
    material = keyring.new_material()
    _write(ring_file, {"v": 1, "keys": [{"material": material, "state": "active"}]})
    assert keyring.active().material == material
    ring_file.unlink()  # a volume not mounted, say
    assert keyring.active().material == material
    assert "is gone" in keyring.problem()
    # A process starting now has no file to read: SECRET_KEYS alone, as before any key.
    keyring.forget_cached()
    assert keyring.active().material != material and keyring.problem() is None


def test_a_directory_in_place_of_the_file_is_refused(ring_file):
    ring_file.mkdir(mode=0o700)
    with pytest.raises(keyring.KeyRingError, match="not a regular file"):
        keyring.ring()


def test_a_group_readable_file_and_a_file_without_keys_are_accepted(ring_file):
    from django.conf import settings

    _write(ring_file, GOOD, 0o640)
    assert [k.material for k in keyring.ring()] == list(settings.SECRET_KEYS)
    material = keyring.new_material()
    _write(
        ring_file,
        {"v": 1, "keys": [{"material": material, "state": "active", "promoted_at": STAMP}]},
        0o600,
    )
    keyring.forget_cached()
    assert keyring.active().material == material


# --- web processes ------------------------------------------------------------------------


def _ready(server) -> tuple[int, dict]:
    response = httpx.get(f"{server.url}/ready", timeout=15)
    return response.status_code, response.json()


def _register(server, org, username):
    """Sign in and register a device: both audited, so both need the key ring."""
    api = Api(server, host_of(org))
    login = api.post("/api/v1/auth/login", json={"username": username, "password": PASSWORD})
    if login.status_code != 200:
        return login
    return api.post(
        "/api/v1/devices",
        json=DeviceKeys.generate().registration(),
        headers={"Authorization": f"Grant {login.json()['grant']}"},
    )


def test_a_running_server_keeps_its_ring_when_the_file_goes_bad(org_a, tmp_path):
    path = tmp_path / "key_ring.json"
    _write(path, GOOD)
    user = make_user(org_a)
    with server_with_env(tmp_path / "web.log", KEY_RING_FILE=str(path)) as live:
        assert _ready(live)[1]["status"] == "ok"
        register_device(Api(live, host_of(org_a)), user.username)

        # An operator's edit leaves the file broken: every request still works.
        _write(path, '{"v": 1, "keys": [')
        for _ in range(3):
            assert _register(live, org_a, user.username).status_code == 201
        status, body = _ready(live)
        assert (status, body["status"], body["checks"]["key_ring"]) == (200, "degraded", KEPT_RING)
        assert str(path) not in json.dumps(body)  # the probe answers on any host
        # Once per version of the file in the log, with the file and the fault.
        log = live.log_text()
        assert log.count("key ring file unusable") == 1
        assert str(path) in log and "not valid JSON" in log

        # Opened to everyone: refused as well, and said again.
        _write(path, GOOD, 0o644)
        assert _register(live, org_a, user.username).status_code == 201
        assert _ready(live)[1]["checks"]["key_ring"] == KEPT_RING
        deadline = time.monotonic() + 20
        while "mode 0644" not in live.log_text():
            assert time.monotonic() < deadline
            time.sleep(0.2)

        # Fixed: ready again.
        os.chmod(path, 0o600)
        status, body = _ready(live)
        assert (status, body["status"], body["checks"]["key_ring"]) == (200, "ok", "ok")
        assert _register(live, org_a, user.username).status_code == 201


def test_a_server_started_with_an_unusable_file_is_not_ready_and_answers_503(org_a, tmp_path):
    path = tmp_path / "key_ring.json"
    _write(path, {"v": 1, "keys": [{"state": "active"}]})
    user = make_user(org_a)
    with server_with_env(tmp_path / "web.log", KEY_RING_FILE=str(path)) as live:
        status, body = _ready(live)
        assert (status, body["status"]) == (503, "unavailable")
        assert body["checks"]["key_ring"] == "error: KeyRingError"
        refused = _register(live, org_a, user.username)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "key_ring_unavailable"
        assert refused.headers["Retry-After"]
        assert "key 0 has no `material`" in live.log_text()

        _write(path, GOOD)
        assert _ready(live)[0] == 200
        assert _register(live, org_a, user.username).status_code == 201
