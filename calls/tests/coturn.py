"""A real coturn (`turnserver`, Debian's package) for tests, and a Siphera server that hands
out credentials it accepts.

Each coturn runs on a free loopback port with the config scripts/ensure_coturn.sh --config
writes (the one `make run RUN_COTURN=true` uses): it listens and relays on 127.0.0.1 and
allows loopback peers, so two clients on this machine can talk through it.

Shared by calls/tests (test_turn.py, test_aiortc_call.py) and siphera_client/tests: a
conftest imports `turn_deployment` to offer it as a fixture.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures import ROOT, LiveServer, child_env, server_with_env, stop_process


@dataclass
class Coturn:
    port: int
    log_path: Path

    def urls(self) -> str:
        return f"turn:127.0.0.1:{self.port}?transport=udp,turn:127.0.0.1:{self.port}?transport=tcp"


def free_udp_and_tcp_port() -> int:
    while True:
        with socket.socket() as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(type=socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


@contextlib.contextmanager
def coturn(directory: Path, *secrets: str) -> Iterator[Coturn]:
    """turnserver on 127.0.0.1 accepting credentials signed with any of `secrets`."""
    turnserver = shutil.which("turnserver")
    assert turnserver, "coturn is not installed: run scripts/ensure_coturn.sh (make test does)"
    port = free_udp_and_tcp_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "turnserver.conf"
    subprocess.run(
        [str(ROOT / "scripts" / "ensure_coturn.sh"), "--config", str(config)],
        env={**child_env(), "TURN_SECRETS": ",".join(secrets), "COTURN_PORT": str(port)},
        check=True,
        capture_output=True,
    )
    log_path = directory / "coturn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [turnserver, "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while True:  # up once it accepts TCP on its port (UDP is bound before TCP)
            assert proc.poll() is None, f"turnserver exited:\n{log_path.read_text()[-3000:]}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, f"turnserver not up:\n{log_path.read_text()}"
            time.sleep(0.1)
        yield Coturn(port=port, log_path=log_path)
    finally:
        stop_process(proc)


@dataclass
class TurnDeployment:
    """A coturn and a Siphera server (same database and Redis as `server`) whose
    `GET /api/v1/calls/turn` hands out credentials that coturn accepts."""

    coturn: Coturn
    server: LiveServer
    secret: str


@pytest.fixture(scope="session")
def turn_deployment(_database, tmp_path_factory) -> Iterator[TurnDeployment]:
    base = tmp_path_factory.mktemp("turn-deployment")
    secret = "turn-deployment-" + "d" * 24
    with coturn(base / "coturn", secret) as turn:
        with server_with_env(
            base / "server.log", TURN_URLS=turn.urls(), TURN_SECRETS=secret
        ) as live:
            yield TurnDeployment(coturn=turn, server=live, secret=secret)
