"""A deployment for compliance-recording tests: coturn, a Siphera server and a Celery
worker (which starts the recorders) sharing one queue and TURN configuration, and an org
of their own whose policy records calls."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from calls.tests.coturn import Coturn, coturn
from tests.fixtures import LiveServer, _start_worker, create_org, server_with_env, stop_process

CONNECT_SECONDS = 15


@dataclass
class RecordingDeployment:
    coturn: Coturn
    server: LiveServer
    worker_log: Path
    org: object


@pytest.fixture(scope="module")
def recording_deployment(_database, tmp_path_factory) -> Iterator[RecordingDeployment]:
    from django.conf import settings

    base = tmp_path_factory.mktemp("recording")
    secret = "recording-deployment-" + "r" * 24
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-rec-{uuid.uuid4().hex[:6]}"
    env = {"CALL_RECORDING_CONNECT_SECONDS": str(CONNECT_SECONDS), "CELERY_QUEUE": queue}
    org = create_org(f"rec{uuid.uuid4().hex[:6]}", f"rec{uuid.uuid4().hex[:6]}.test")
    with coturn(base / "coturn", secret) as turn:
        env.update(TURN_URLS=turn.urls(), TURN_SECRETS=secret)
        worker_log = base / "worker.log"
        with (
            server_with_env(base / "server.log", **env) as live,
            _worker(worker_log, queue, env),
        ):
            yield RecordingDeployment(coturn=turn, server=live, worker_log=worker_log, org=org)


@contextlib.contextmanager
def _worker(log_path: Path, queue: str, env: dict) -> Iterator[None]:
    """A Celery worker on `queue`, the one the server sends to (CELERY_QUEUE)."""
    proc = _start_worker(log_path, queue, ("--pool", "solo"), f"rec-{queue[-6:]}", **env)
    try:
        yield
    finally:
        stop_process(proc)


def eventually_value(fn, *, within: float = 60.0, step: float = 0.3):
    deadline = time.monotonic() + within
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(step)
