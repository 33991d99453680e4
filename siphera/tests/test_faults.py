"""Faults under traffic (issue 15, item 13): Redis restarted, PostgreSQL restarted, one of
two web processes killed, each while clients send over REST and WebSocket and recipients
listen. Afterwards every message the server accepted reached every recipient device
(deduplicated by id, as at-least-once delivery allows), each client_id was stored once,
and what clients saw while it happened was only what the protocol promises: 503 with
Retry-After, an error frame with `retry_after`, or a close to reconnect from; never a 500
and never a hang (tests/traffic.py bounds every operation).

The Redis and PostgreSQL that fail are private ones on spare ports (tests/fixtures.py:
RedisProcess, PostgresCluster), never the machine's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from messaging.models import Message
from messaging.tests.helpers import start_conversation
from siphera.tenancy import in_tenant
from tests.fixtures import PostgresCluster, RedisProcess, server_with_env
from tests.fixtures import test_database_url as shared_database_url  # not a test
from tests.traffic import (
    Servers,
    Traffic,
    check_nothing_lost_nothing_doubled,
    drain,
    run_traffic,
)

SENDERS = 4  # two over REST, two over WebSocket
RECIPIENTS = 2
PER_SENDER = 12


async def until_accepted(traffic: Traffic, count: int, within: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while len(traffic.accepted) < count:
        assert asyncio.get_running_loop().time() < deadline, "the traffic never got going"
        await asyncio.sleep(0.05)


def people(new_session, org):
    senders = [new_session(org) for _ in range(SENDERS)]
    recipients = [new_session(org) for _ in range(RECIPIENTS)]
    conversation = start_conversation(senders[0], *senders[1:], *recipients, kind="group")["id"]
    return senders, recipients, conversation


async def settle(servers: Servers, recipients) -> None:
    """Each recipient takes what is queued before the traffic (the conversation's events)."""
    for session in recipients:
        await drain(servers, session, Traffic())


def stored_ids(org, conversation) -> set[str]:
    return {
        str(pk)
        for pk in in_tenant(
            org,
            lambda: list(
                Message.objects.filter(
                    conversation_id=conversation, kind=Message.MESSAGE
                ).values_list("pk", flat=True)
            ),
        )
    }


async def test_redis_restarted_mid_traffic_loses_and_doubles_nothing(tmp_path, org_a, new_session):
    senders, recipients, conversation = people(new_session, org_a)
    redis_process = RedisProcess(tmp_path)
    redis_process.start()
    url = redis_process.url
    try:
        with server_with_env(tmp_path / "web.log", REDIS_URL=url, CELERY_BROKER_URL=url) as server:
            await settle(Servers(server), recipients)

            async def restart_redis(traffic: Traffic) -> None:
                await until_accepted(traffic, 10)
                await asyncio.to_thread(redis_process.stop)
                await asyncio.sleep(3)
                await asyncio.to_thread(redis_process.start)

            traffic = await run_traffic(
                Servers(server),
                senders=senders,
                conversation=conversation,
                recipients=recipients,
                count=PER_SENDER,
                fault=restart_redis,
            )
            log = server.log_text()
    finally:
        redis_process.stop()

    assert len(traffic.accepted) == SENDERS * PER_SENDER
    check_nothing_lost_nothing_doubled(traffic, recipients)
    assert stored_ids(org_a, conversation) == set(traffic.accepted.values())
    # The sockets were told (redis_unavailable, then 1013) and came back.
    assert traffic.refusals[("recipient", "close", 1013)] >= 1, traffic.refusals
    # No request or socket failed inside the app. (uvicorn's websockets-sansio complaint
    # after each handshake refused with a 503 is dropped: siphera.logging.OutageFilter.)
    assert "Exception in ASGI application" not in log, log[-3000:]
    assert "without completing handshake" not in log, log[-3000:]


async def test_a_web_process_killed_with_sockets_open_loses_nothing(tmp_path, org_a, new_session):
    senders, recipients, conversation = people(new_session, org_a)
    with (
        server_with_env(tmp_path / "a.log") as doomed,
        server_with_env(tmp_path / "b.log") as survivor,
    ):
        await settle(Servers(survivor), recipients)
        # Every recipient is on the process that dies (its first pick); senders share both.
        listening = [Servers(doomed, survivor) for _ in recipients]

        async def kill_one(traffic: Traffic) -> None:
            await until_accepted(traffic, 10)
            os.kill(doomed.pid, signal.SIGKILL)

        traffic = await run_traffic(
            Servers(doomed, survivor),
            senders=senders,
            conversation=conversation,
            recipients=recipients,
            count=PER_SENDER,
            fault=kill_one,
            recipient_servers=listening,
        )

    assert len(traffic.accepted) == SENDERS * PER_SENDER
    check_nothing_lost_nothing_doubled(traffic, recipients)
    assert stored_ids(org_a, conversation) == set(traffic.accepted.values())
    assert traffic.refusals[("recipient", "close", 1006)] == RECIPIENTS, traffic.refusals


# --- PostgreSQL restarted ---------------------------------------------------------------


@pytest.fixture
def private_database(org_a):
    """A PostgreSQL of its own holding a copy of the public schema and org_a's (made after
    the test's users and conversation exist: call `copy()`), on a spare port. Its directory
    is outside pytest's (mode 700 there) so that, as root, the `postgres` user reaches it."""
    directory = Path(tempfile.mkdtemp(prefix="siphera-faults-pg-"))
    directory.chmod(0o755)
    cluster = PostgresCluster(directory / "cluster")
    cluster.start()

    def copy() -> str:
        name = "faults"
        subprocess.run(
            [str(cluster.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.port)]
            + ["-U", "postgres", name],
            check=True,
            capture_output=True,
            timeout=60,
        )
        dump = subprocess.run(
            [str(cluster.bindir / "pg_dump"), "--no-owner", "-n", "public", "-n"]
            + [org_a.schema_name, "-d", shared_database_url()],
            check=True,
            capture_output=True,
            timeout=300,
        )
        restore = subprocess.run(
            [str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"]
            + ["-d", cluster.url(name)],
            # The dump creates the public schema itself.
            input=b"DROP SCHEMA public CASCADE;\n" + dump.stdout,
            capture_output=True,
            timeout=300,
        )
        assert restore.returncode == 0, restore.stderr.decode()[-2000:]
        return cluster.url(name)

    try:
        yield cluster, copy
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


async def test_postgresql_restarted_mid_traffic_loses_and_doubles_nothing(
    tmp_path, org_a, new_session, private_database
):
    cluster, copy = private_database
    senders, recipients, conversation = people(new_session, org_a)
    url = await asyncio.to_thread(copy)
    run = uuid.uuid4().hex[:8]
    with server_with_env(
        tmp_path / "web.log",
        DATABASE_URL=url,
        DATABASE_POOL_TIMEOUT_SECONDS="1",
        # Its own caches and groups: the session's servers use another database.
        CHANNEL_LAYER_PREFIX=f"faults-{run}",
        CACHE_KEY_PREFIX=f"faults-{run}",
    ) as server:
        await settle(Servers(server), recipients)

        async def restart_postgres(traffic: Traffic) -> None:
            await until_accepted(traffic, 10)
            await asyncio.to_thread(cluster.stop, "immediate")
            await asyncio.sleep(3)
            await asyncio.to_thread(cluster.start)

        traffic = await run_traffic(
            Servers(server),
            senders=senders,
            conversation=conversation,
            recipients=recipients,
            count=PER_SENDER,
            fault=restart_postgres,
        )
        log = server.log_text()

    assert len(traffic.accepted) == SENDERS * PER_SENDER
    check_nothing_lost_nothing_doubled(traffic, recipients)
    with psycopg.connect(url, connect_timeout=10) as conn:
        rows = conn.execute(
            f'SELECT id::text FROM "{org_a.schema_name}".messaging_message'
            " WHERE conversation_id = %s AND kind = 'message'",
            [conversation],
        ).fetchall()
    assert {row[0] for row in rows} == set(traffic.accepted.values())
    # Clients were refused while it was down, as the protocol says (503 / error frames).
    told = [key for key in traffic.refusals if "database_unavailable" in key or 1011 in key]
    assert told, traffic.refusals
    assert "Exception in ASGI application" not in log, log[-3000:]
