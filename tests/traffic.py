"""Clients for the fault tests: senders over REST and WebSocket that retry what was refused
with the same `client_id`, and recipients that stay connected, ack what they get and
reconnect when their socket goes, as the protocol tells clients to (docs/protocol.md).

Every client operation has a timeout: a server that stops answering fails the test as a
hang instead of stalling it. What the clients saw (refusals, closes) is recorded so a test
can check it was only ever what the protocol promises (503 + Retry-After, an error frame,
a close code to reconnect from), never a 500."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.ws import open_socket, send

# A retry waits this long, not the full Retry-After (5 s), to keep the tests short.
RETRY_PAUSE = 0.5
# No single client operation may take longer than this (a hang).
OP_TIMEOUT = 20.0
# What a refused REST send or WebSocket frame may say while a dependency is down.
RETRYABLE_CODES = {"database_unavailable", "redis_unavailable"}
# Close codes a client reconnects from: 1011 (server error, e.g. the database while
# setting up), 1012 (service restart), 1013 (try again later: Redis), 1006 (no close
# frame: the process died).
RECONNECT_CLOSES = {1006, 1011, 1012, 1013}


@dataclass
class Traffic:
    """What every client saw."""

    accepted: dict[str, str] = field(default_factory=dict)  # client_id -> message id
    answers: dict[str, set] = field(default_factory=dict)  # client_id -> ids it was given
    refusals: Counter = field(default_factory=Counter)  # ("rest", 503, code), ...
    unexpected: list = field(default_factory=list)  # anything the protocol does not promise
    received: dict[int, Counter] = field(default_factory=dict)  # device -> message id -> n
    seqs: dict[str, tuple] = field(default_factory=dict)  # message id -> (conversation, seq)

    def accept(self, client_id: str, message_id: str) -> None:
        self.answers.setdefault(client_id, set()).add(message_id)
        self.accepted.setdefault(client_id, message_id)


class Servers:
    """The web processes clients may use, as behind a load balancer: on a connection
    failure a client moves on to the next."""

    def __init__(self, *servers):
        self.servers = list(servers)
        self._next = 0

    def pick(self):
        server = self.servers[self._next % len(self.servers)]
        self._next += 1
        return server

    def drop(self, server) -> None:
        if len(self.servers) > 1 and server in self.servers:
            self.servers.remove(server)


def _body() -> str:
    return base64.b64encode(os.urandom(24)).decode()


async def rest_sender(
    servers: Servers, host: str, token: str, conversation: str, count: int, traffic: Traffic
) -> None:
    """POST `count` messages, each retried with its client_id until accepted."""
    server = servers.pick()
    async with httpx.AsyncClient(timeout=OP_TIMEOUT) as http:
        for _ in range(count):
            client_id = str(uuid.uuid4())
            while True:
                try:
                    response = await http.post(
                        f"{server.url}/api/v1/conversations/{conversation}/messages",
                        json={"client_id": client_id, "body": _body()},
                        headers={"Host": host, "Authorization": f"Bearer {token}"},
                    )
                except httpx.TimeoutException as exc:
                    traffic.unexpected.append(("rest hang", repr(exc)))
                    raise
                except httpx.TransportError as exc:
                    traffic.refusals[("rest", type(exc).__name__)] += 1
                    server = servers.pick()
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
                if response.status_code in (200, 201):
                    traffic.accept(client_id, response.json()["id"])
                    break
                code = _error_code(response)
                if response.status_code != 503 or code not in RETRYABLE_CODES:
                    traffic.unexpected.append(("rest", response.status_code, response.text[:300]))
                elif int(response.headers.get("Retry-After", "0")) <= 0:
                    traffic.unexpected.append(("rest 503 without Retry-After", code))
                traffic.refusals[("rest", response.status_code, code)] += 1
                await asyncio.sleep(RETRY_PAUSE)
            await asyncio.sleep(0.05)


def _error_code(response: httpx.Response) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return response.json()["error"]["code"]
    return ""


async def _connect(servers: Servers, session, traffic: Traffic, role: str):
    """An authenticated socket, retried (with the protocol's answers recorded) until one
    is had; returns (socket, server)."""
    from tests.fixtures import host_of

    host = host_of(session.org)
    while True:
        server = servers.pick()
        try:
            ws = await open_socket(server, host)
        except InvalidStatus as refused:
            status = refused.response.status_code
            if status != 503 or int(refused.response.headers.get("Retry-After", "0")) <= 0:
                traffic.unexpected.append((role, "handshake", status))
            traffic.refusals[(role, "handshake", status)] += 1
            await asyncio.sleep(RETRY_PAUSE)
            continue
        except (OSError, TimeoutError) as exc:
            traffic.refusals[(role, "connect", type(exc).__name__)] += 1
            if isinstance(exc, ConnectionRefusedError):
                servers.drop(server)
            await asyncio.sleep(RETRY_PAUSE)
            continue
        try:
            await send(ws, {"type": "auth", "token": session.token})
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), OP_TIMEOUT))
                if frame["type"] == "ready":
                    return ws, server
                if frame["type"] == "error":
                    _check_error(frame, traffic, role)
        except ConnectionClosed:
            _check_close(ws, traffic, role)
        except TimeoutError:
            traffic.unexpected.append((role, "auth hang"))
            raise
        await asyncio.sleep(RETRY_PAUSE)


def _check_error(frame: dict, traffic: Traffic, role: str) -> None:
    traffic.refusals[(role, "error", frame.get("code"))] += 1
    if frame.get("code") not in RETRYABLE_CODES or not frame.get("retry_after"):
        traffic.unexpected.append((role, "error frame", frame))


def _check_close(ws, traffic: Traffic, role: str) -> None:
    code = ws.close_code if ws.close_code is not None else 1006
    traffic.refusals[(role, "close", code)] += 1
    if code not in RECONNECT_CLOSES:
        traffic.unexpected.append((role, "close", code))


async def ws_sender(servers: Servers, session, conversation: str, count: int, traffic: Traffic):
    """`send` frames, each retried with its client_id (on an error frame, or on a new
    socket after a close) until answered `sent`."""
    ws = None
    for _ in range(count):
        client_id = str(uuid.uuid4())
        while True:
            if ws is None:
                ws, _ = await _connect(servers, session, traffic, "ws-send")
            frame = {"type": "send", "conversation": conversation, "ref": client_id}
            try:
                await send(ws, {**frame, "client_id": client_id, "body": _body()})
                answer = await _answer(ws, client_id)
            except ConnectionClosed:
                _check_close(ws, traffic, "ws-send")
                ws = None
                await asyncio.sleep(RETRY_PAUSE)
                continue
            if answer["type"] == "sent":
                traffic.accept(client_id, answer["id"])
                break
            _check_error(answer, traffic, "ws-send")
            await asyncio.sleep(RETRY_PAUSE)
        await asyncio.sleep(0.05)
    if ws is not None:
        await ws.close()


async def _answer(ws, ref: str) -> dict:
    """The `sent` or `error` frame answering `ref` (others are skipped)."""
    deadline = asyncio.get_running_loop().time() + OP_TIMEOUT
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"no answer to the send {ref} within {OP_TIMEOUT}s (a hang)")
        frame = json.loads(await asyncio.wait_for(ws.recv(), remaining))
        if frame["type"] in ("sent", "error") and frame.get("ref") == ref:
            return frame


async def recipient(
    servers: Servers,
    session,
    traffic: Traffic,
    stop: asyncio.Event,
    connected: asyncio.Event | None = None,
) -> None:
    """Stay connected, ack every message, reconnect whenever the socket goes, until
    `stop`; then drain the queue once more on a fresh socket."""
    received = traffic.received.setdefault(session.device_id, Counter())
    while not stop.is_set():
        ws, _ = await _connect(servers, session, traffic, "recipient")
        if connected is not None:
            connected.set()
        try:
            while not stop.is_set():
                try:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 0.5))
                except TimeoutError:
                    continue
                await _take(ws, frame, received, traffic)
        except ConnectionClosed:
            _check_close(ws, traffic, "recipient")
            await asyncio.sleep(RETRY_PAUSE)
            continue
        await ws.close()
    await drain(servers, session, traffic)


async def _take(ws, frame: dict, received: Counter, traffic: Traffic) -> None:
    if frame["type"] == "message":
        received[frame["id"]] += 1
        traffic.seqs[frame["id"]] = (frame["conversation"], frame["seq"])
        await send(ws, {"type": "ack", "ids": [frame["id"]]})
    elif frame["type"] == "error":
        _check_error(frame, traffic, "recipient")


async def drain(servers: Servers, session, traffic: Traffic) -> int:
    """Read the device's queue to `queue.empty` on a new socket, acking; returns how many
    messages it held."""
    received = traffic.received.setdefault(session.device_id, Counter())
    ws, _ = await _connect(servers, session, traffic, "drain")
    count = 0
    try:
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), OP_TIMEOUT))
            if frame["type"] == "queue.empty":
                return count
            count += frame["type"] == "message"
            await _take(ws, frame, received, traffic)
    finally:
        await ws.close()


async def run_traffic(
    servers: Servers,
    *,
    senders: list,
    conversation: str,
    recipients: list,
    count: int,
    fault,
    recipient_servers: list[Servers] | None = None,
) -> Traffic:
    """Senders (alternately REST and WebSocket) send `count` messages each while the
    recipients listen (on `recipient_servers[i]`, else `servers`); `fault(traffic)` (a
    coroutine) runs beside them once every recipient is connected. Everything is bounded
    by a deadline."""
    from tests.fixtures import host_of

    traffic = Traffic()
    stop = asyncio.Event()
    connected = [asyncio.Event() for _ in recipients]
    listening = [
        asyncio.create_task(
            recipient(
                recipient_servers[i] if recipient_servers else servers,
                session,
                traffic,
                stop,
                connected[i],
            )
        )
        for i, session in enumerate(recipients)
    ]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in connected)), 60)
    sending = []
    for i, session in enumerate(senders):
        if i % 2 == 0:
            coro = rest_sender(
                servers, host_of(session.org), session.token, conversation, count, traffic
            )
        else:
            coro = ws_sender(servers, session, conversation, count, traffic)
        sending.append(asyncio.create_task(coro))
    try:
        await asyncio.wait_for(asyncio.gather(fault(traffic), *sending), 240)
    finally:
        stop.set()
    await asyncio.wait_for(asyncio.gather(*listening), 120)
    return traffic


def check_nothing_lost_nothing_doubled(traffic: Traffic, recipients: list) -> None:
    """Every accepted message reached every recipient device (after deduplication by id,
    as at-least-once delivery allows), nothing else did, every retry of a client_id was
    given the same message, and no two messages share a seq."""
    wanted = set(traffic.accepted.values())
    for client_id, ids in traffic.answers.items():
        assert len(ids) == 1, f"client_id {client_id} was stored twice: {ids}"
    for session in recipients:
        got = set(traffic.received.get(session.device_id, Counter()))
        assert got == wanted, (
            f"device {session.device_id}: missing {len(wanted - got)}, extra {len(got - wanted)}"
        )
    seqs = [traffic.seqs[message_id] for message_id in wanted]
    assert len(set(seqs)) == len(seqs), "two messages share a seq"
    assert not traffic.unexpected, traffic.unexpected[:10]
