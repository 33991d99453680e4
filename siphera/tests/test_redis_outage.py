"""Redis down is not an outage (issue 15 item 12): the server keeps answering (rate limits
fall back to per-process counters), /ready says degraded, sockets hear a clear error and
reconnect, and when Redis is back everything recovers; nothing accepted is lost.

The server under test uses a Redis of its own, started here on a spare port, killed and
started again on the same port."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from messaging.tests.helpers import send_body, start_conversation
from tests.fixtures import (
    PASSWORD,
    Api,
    RedisProcess,
    host_of,
    make_user,
    server_with_env,
)
from tests.ws import authed_socket, open_socket, recv_type, send


@pytest.fixture
def redis_server(tmp_path):
    redis_process = RedisProcess(tmp_path)
    redis_process.start()
    yield redis_process
    redis_process.stop()


@pytest.fixture
def redis_backed(tmp_path, redis_server):
    url = redis_server.url
    with server_with_env(tmp_path / "server.log", REDIS_URL=url, CELERY_BROKER_URL=url) as server:
        yield server, redis_server


def ready(server) -> httpx.Response:
    return httpx.get(f"{server.url}/ready", timeout=15)


async def test_requests_answer_while_redis_is_down_and_everything_recovers(
    redis_backed, org_a, new_session
):
    server, redis_process = redis_backed
    alice, bob = new_session(org_a), new_session(org_a)
    conversation = start_conversation(alice, bob)["id"]
    api = Api(server, host_of(org_a), alice.token)
    assert api.get("/api/v1/me").status_code == 200
    ws = await authed_socket(server, bob, live=True)

    # When Redis goes away
    redis_process.stop()

    # Then the API still answers (no 500): reads, a password login, a message accepted
    for path in ("/api/v1/me", "/api/v1/conversations", "/api/v1/devices"):
        response = api.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text)
    user = make_user(org_a)
    login = Api(server, host_of(org_a)).post(
        "/api/v1/auth/login", json={"username": user.username, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text
    alice_here = dataclasses.replace(alice, api=api)
    during = send_body(alice_here, conversation)
    assert during.status_code == 201, during.text
    # And /ready says degraded (still serving), naming Redis
    probe = ready(server)
    assert probe.status_code == 200, probe.text
    assert probe.json()["status"] == "degraded"
    assert probe.json()["checks"]["redis"].startswith("error")
    # And the live socket hears a clear error and is closed with 1013 (try again later)
    error = await recv_type(ws, "error", timeout=20)
    assert error["code"] == "redis_unavailable" and error["retry_after"] > 0
    with pytest.raises(ConnectionClosed):
        await recv_type(ws, "never", timeout=10)
    assert ws.close_code == 1013
    # And the server logged the outage once, not once per request
    log = server.log_text()
    assert log.count('"msg": "redis unavailable') == 1, log[-3000:]

    # When Redis is back
    redis_process.start()
    # Then everything recovers: /ready, the API, and a new socket gets what was accepted
    deadline = asyncio.get_running_loop().time() + 20
    while ready(server).json()["status"] != "ok":
        assert asyncio.get_running_loop().time() < deadline, ready(server).text
        await asyncio.sleep(0.5)
    assert api.get("/api/v1/me").status_code == 200
    again = await authed_socket(server, bob)
    delivered = await recv_type(again, "message", timeout=15)
    assert delivered["id"] == during.json()["id"]
    await recv_type(again, "queue.empty", timeout=15)
    after = send_body(alice_here, conversation)
    assert after.status_code == 201, after.text
    live = await recv_type(again, "message", timeout=15)
    assert live["id"] == after.json()["id"]
    await again.close()
    assert (
        json.loads(next(line for line in log.splitlines() if '"redis unavailable' in line))["level"]
        == "warning"
    )


async def test_sockets_opened_while_redis_is_down_are_told_so_and_let_in_once_it_is_back(
    redis_backed, org_a, new_session
):
    from websockets.exceptions import InvalidStatus

    server, redis_process = redis_backed
    session = new_session(org_a)
    # Given Redis gone before this server noticed
    redis_process.stop()
    # When a socket connects, it is refused at the handshake if the server noticed on the
    # way (the host lookup reads Redis at most once a second: siphera.generations), or
    # let in, told why it cannot stay, and closed with 1013
    try:
        ws = await open_socket(server, host_of(org_a))
    except InvalidStatus as refused:
        assert refused.response.status_code == 503
    else:
        error = await recv_type(ws, "error", timeout=15)
        assert error["code"] == "redis_unavailable" and error["retry_after"] > 0
        with pytest.raises(ConnectionClosed):
            await recv_type(ws, "never", timeout=10)
        assert ws.close_code == 1013
    # And the next handshakes are refused with 503 + Retry-After while Redis is down
    with pytest.raises(InvalidStatus) as refused:
        await open_socket(server, host_of(org_a))
    assert refused.value.response.status_code == 503
    assert int(refused.value.response.headers["Retry-After"]) > 0
    # When Redis is back, a socket is let in again (within a second's probe)
    redis_process.start()
    deadline = asyncio.get_running_loop().time() + 20
    while True:
        try:
            ws = await authed_socket(server, session, live=True)
            break
        except InvalidStatus:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.5)
    await send(ws, {"type": "ping", "ref": "p"})
    assert (await recv_type(ws, "pong"))["ref"] == "p"
    await ws.close()
