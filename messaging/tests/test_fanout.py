"""Typing and receipt fan-out does not hold the socket DB threads while Redis answers
(issue 15 item 11): the thread only reads whom to tell; the channel-layer sends happen on
the event loop afterwards.

The server under test has a Redis of its own, which the test stops (SIGSTOP) in the middle:
a channel-layer send to it then waits as long as Redis does. Typing frames into a group,
more of them than the server has DB threads, must not keep another org's socket from
sending a message."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from siphera.tests.test_redis_outage import RedisProcess
from tests.fixtures import make_user, server_with_env
from tests.ws import authed_socket, recv_type, send

from .helpers import b64, start_conversation

DB_THREADS = 2
TYPERS = 3  # more typing sockets than DB threads: each would hold one


@pytest.fixture
def stalled_redis_server(tmp_path):
    redis_process = RedisProcess(tmp_path)
    redis_process.start()
    url = redis_process.url
    try:
        with server_with_env(
            tmp_path / "server.log",
            REDIS_URL=url,
            CELERY_BROKER_URL=url,
            WS_DB_THREADS=str(DB_THREADS),
        ) as server:
            yield server, redis_process
    finally:
        if redis_process.proc is not None:
            os.kill(redis_process.proc.pid, signal.SIGCONT)
        redis_process.stop()


async def settle() -> None:
    """Give the frames time to reach their fan-out: on their way, reads that Redis would
    answer (rate limits, generations, the cached org policy) wait out their 2 s client
    timeouts first, and a DB thread may wait out one of them."""
    await asyncio.sleep(8)


def _frames_of_type(frames: list[dict], kind: str) -> list[dict]:
    return [f for f in frames if f["type"] == kind]


async def _drain(ws, seconds: float) -> list[dict]:
    """Every frame that arrives within `seconds`."""
    import json

    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(ws.recv(), seconds)))
    except TimeoutError:
        return frames


async def test_a_typing_flood_into_a_stalled_redis_leaves_the_db_threads_to_another_org(
    stalled_redis_server, org_a, org_b, new_session
):
    server, redis_process = stalled_redis_server
    typers = [new_session(org_a) for _ in range(TYPERS)]
    others = [make_user(org_a) for _ in range(20)]
    group = start_conversation(typers[0], *typers[1:], *others, kind="group")["id"]
    b_sender, b_receiver = new_session(org_b), new_session(org_b)
    direct = start_conversation(b_sender, b_receiver)["id"]

    typer_sockets = [await authed_socket(server, t, live=True) for t in typers]
    b_out = await authed_socket(server, b_sender, live=True)
    b_in = await authed_socket(server, b_receiver, live=True)
    try:
        # Given Redis stops answering
        os.kill(redis_process.proc.pid, signal.SIGSTOP)

        # When every typer starts typing (each fan-out waits on Redis)
        for ws in typer_sockets:
            await send(ws, {"type": "typing", "conversation": group, "state": "start"})
        await settle()

        # Then org B's socket still gets a DB thread: its message is stored and answered
        await send(
            b_out,
            {
                "type": "send",
                "ref": "b1",
                "conversation": direct,
                "client_id": "00000000-0000-4000-8000-00000000b001",
                "body": b64(b"bravo"),
            },
        )
        sent = await recv_type(b_out, "sent", timeout=30)
        assert sent["ref"] == "b1" and sent["seq"] >= 1
        delivered = await recv_type(b_in, "message", timeout=30)
        assert delivered["body"] == b64(b"bravo")

        # And once Redis answers again, the typing frames reach the group's other members
        os.kill(redis_process.proc.pid, signal.SIGCONT)
        seen = _frames_of_type(await _drain(typer_sockets[0], 5), "typing")
        assert {f["user_id"] for f in seen} == {str(t.user.pk) for t in typers[1:]}
        assert all(f["conversation"] == group and f["state"] == "start" for f in seen)
        # Org B heard nothing of org A's typing.
        assert _frames_of_type(await _drain(b_in, 1), "typing") == []
    finally:
        os.kill(redis_process.proc.pid, signal.SIGCONT)
        for ws in (*typer_sockets, b_out, b_in):
            await ws.close()


async def test_a_receipt_fan_out_into_a_stalled_redis_leaves_the_db_threads_to_another_org(
    stalled_redis_server, org_a, org_b, new_session
):
    server, redis_process = stalled_redis_server
    readers = [new_session(org_a) for _ in range(TYPERS)]
    others = [make_user(org_a) for _ in range(20)]
    group = start_conversation(readers[0], *readers[1:], *others, kind="group")["id"]
    b_sender, b_receiver = new_session(org_b), new_session(org_b)
    direct = start_conversation(b_sender, b_receiver)["id"]

    reader_sockets = [await authed_socket(server, r, live=True) for r in readers]
    b_out = await authed_socket(server, b_sender, live=True)
    try:
        os.kill(redis_process.proc.pid, signal.SIGSTOP)
        for ws in reader_sockets:
            await send(
                ws, {"type": "receipt", "conversation": group, "kind": "read", "up_to_seq": 1}
            )
        await settle()

        await send(
            b_out,
            {
                "type": "send",
                "ref": "b2",
                "conversation": direct,
                "client_id": "00000000-0000-4000-8000-00000000b002",
                "body": b64(b"bravo"),
            },
        )
        assert (await recv_type(b_out, "sent", timeout=30))["ref"] == "b2"

        os.kill(redis_process.proc.pid, signal.SIGCONT)
        seen = _frames_of_type(await _drain(reader_sockets[0], 5), "receipt")
        assert {f["user_id"] for f in seen} == {str(r.user.pk) for r in readers[1:]}
    finally:
        os.kill(redis_process.proc.pid, signal.SIGCONT)
        for ws in (*reader_sockets, b_out):
            await ws.close()
