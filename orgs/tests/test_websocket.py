"""The client WebSocket /ws/v1: tenant from Host, first-frame auth, frames, revocation."""

import asyncio
import base64
import uuid
from collections import Counter

import pytest
import websockets

from messaging.models import Message
from messaging.tests.helpers import b64, start_conversation
from siphera.tenancy import in_tenant
from tests.fixtures import host_of, make_user, unique
from tests.ws import authed_socket, open_socket, recv, recv_type, send, wait_closed


async def test_auth_then_ready_then_ping_pong(server, org_a, new_session):
    session = new_session(org_a)
    async with await authed_socket(server, session, live=True) as ws:
        await send(ws, {"type": "ping", "ref": 7})
        assert await recv(ws) == {"type": "pong", "ref": 7}


async def test_ready_names_the_user_and_device(server, org_a, new_session):
    session = new_session(org_a)
    ws = await open_socket(server, host_of(org_a))
    await send(ws, {"type": "auth", "token": session.token})
    assert await recv(ws) == {
        "type": "ready",
        "user_id": str(session.user.pk),
        "device_id": session.device_id,
    }
    await ws.close()


async def test_no_auth_frame_within_the_timeout_closes_4401(server, org_a):
    ws = await open_socket(server, host_of(org_a))
    assert await wait_closed(ws, timeout=8) == 4401


async def test_a_bad_token_closes_4401(server, org_a):
    ws = await open_socket(server, host_of(org_a))
    await send(ws, {"type": "auth", "token": "sph_d_not-a-token"})
    assert await wait_closed(ws) == 4401


async def test_any_frame_before_auth_closes_4401(server, org_a):
    ws = await open_socket(server, host_of(org_a))
    await send(ws, {"type": "ping"})
    assert await wait_closed(ws) == 4401


async def test_a_token_of_org_a_is_refused_on_org_b_socket(server, org_a, org_b, new_session):
    session = new_session(org_a)
    make_user(org_b, session.user.username)  # same username exists in org B
    ws = await open_socket(server, host_of(org_b))
    await send(ws, {"type": "auth", "token": session.token})
    assert await wait_closed(ws) == 4401


async def test_an_unknown_org_host_is_refused_at_the_handshake(server):
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
        await open_socket(server, "nobody.test")
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "malformed_json"),
        ("[1, 2]", "invalid_frame"),
        ('{"no": "type"}', "invalid_frame"),
        ('{"type": "launch.rockets", "ref": "r1"}', "unknown_frame_type"),
        ('{"type": "auth", "token": "again"}', "already_authenticated"),
    ],
)
async def test_invalid_frames_get_an_error_frame_and_the_socket_stays_open(
    server, org_a, new_session, raw, code
):
    session = new_session(org_a)
    async with await authed_socket(server, session, live=True) as ws:
        await ws.send(raw)
        error = await recv(ws)
        assert error["type"] == "error" and error["code"] == code
        assert error["message"]
        await send(ws, {"type": "ping"})
        assert (await recv(ws))["type"] == "pong"


async def test_an_error_frame_echoes_the_ref(server, org_a, new_session):
    session = new_session(org_a)
    async with await authed_socket(server, session, live=True) as ws:
        await send(ws, {"type": "nope", "ref": "abc"})
        assert (await recv(ws))["ref"] == "abc"


async def test_frames_over_256_kib_are_refused(server, org_a, new_session):
    session = new_session(org_a)
    async with await authed_socket(server, session, live=True) as ws:
        await send(ws, {"type": "ping", "pad": "x" * (256 * 1024)})
        error = await recv(ws)
        assert error["type"] == "error" and error["code"] == "frame_too_large"
        await send(ws, {"type": "ping"})
        assert (await recv(ws))["type"] == "pong"


async def test_a_second_socket_for_the_same_device_closes_the_first_4409(
    server, org_a, new_session
):
    session = new_session(org_a)
    first = await authed_socket(server, session, live=True)
    second = await authed_socket(server, session, live=True)
    assert await wait_closed(first) == 4409
    await send(second, {"type": "ping"})
    assert (await recv(second))["type"] == "pong"
    await second.close()


async def test_revoking_a_device_closes_its_socket_within_a_second(server, org_a, new_session):
    laptop = new_session(org_a, name="laptop")
    phone = new_session(org_a, laptop.user, name="phone")
    ws = await authed_socket(server, phone, live=True)

    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await asyncio.to_thread(laptop.api.delete, f"/api/v1/devices/{phone.device_id}")
    assert response.status_code == 204
    frame = await recv(ws, timeout=1.0)
    assert frame == {"type": "device.revoked"}
    assert await wait_closed(ws, timeout=1.0) == 4403
    assert loop.time() - started < 1.0
    assert (await asyncio.to_thread(phone.api.get, "/api/v1/me")).status_code == 401


async def test_devices_frame_lists_a_users_devices_in_the_same_org_only(
    server, org_a, org_b, new_session
):
    alice = new_session(org_a)
    bob_b = new_session(org_b)
    async with await authed_socket(server, alice, live=True) as ws:
        await send(ws, {"type": "devices", "ref": 1})
        frame = await recv_type(ws, "devices")
        assert frame["user_id"] == str(alice.user.pk)
        assert [d["device_id"] for d in frame["devices"]] == [alice.device_id]
        await send(ws, {"type": "devices", "user_id": str(bob_b.user.pk), "ref": 2})
        error = await recv(ws)
        assert error == {"type": "error", "code": "not_found", "message": "No such user.", "ref": 2}


async def test_an_idle_socket_survives_more_than_ten_seconds(server, org_a, new_session):
    # PITFALLS 18: redis-py's default socket_timeout=5 killed idle sockets with 1011.
    session = new_session(org_a)
    async with await authed_socket(server, session, live=True) as ws:
        await asyncio.sleep(12)
        await send(ws, {"type": "ping"})
        assert (await recv(ws))["type"] == "pong"
        # and channel-layer delivery still works after the idle period
        other = new_session(org_a, session.user, name="other")
        await asyncio.to_thread(other.api.delete, f"/api/v1/devices/{session.device_id}")
        assert (await recv(ws))["type"] == "device.revoked"


async def test_two_orgs_busy_at_once_each_socket_sees_only_its_own_org(
    server, org_a, org_b, new_session
):
    """PITFALLS 2: consumer DB calls share executor threads; every call must run in the
    socket's own org schema (and TENANT_DB_VERIFY_SCHEMA, on in the tests, has PostgreSQL
    confirm it before each call). Both orgs have users of the same usernames, each with two
    devices, one socket per device, all busy at once: `devices` lookups over the org's
    users and messages sent into a group conversation. Every socket must get its full
    share of answers naming only its own org's rows, and none may close."""
    usernames = [unique() for _ in range(3)]
    devices_per_user, lookups, sends = 2, 80, 20

    expected_devices: dict[str, list[tuple[int, str]]] = {}  # user id -> (device id, name)

    def populate(org) -> list:
        sessions = []
        for username in usernames:
            user = make_user(org, username)
            for d in range(devices_per_user):
                # device names say which org they belong to: a mix-up shows in any answer
                name = f"{org.slug}-{username}-{d}"
                sessions.append(new_session(org, user, name=name))
                expected_devices.setdefault(str(user.pk), []).append((sessions[-1].device_id, name))
        return sessions

    orgs = {org.slug: (org, populate(org)) for org in (org_a, org_b)}
    conversations = {}
    for slug, (_, sessions) in orgs.items():
        others = {s.user.pk: s for s in sessions[1:] if s.user.pk != sessions[0].user.pk}
        conversations[slug] = start_conversation(sessions[0], *others.values(), kind="group")["id"]

    async def busy(slug: str, me, ws) -> Counter:
        sessions = orgs[slug][1]
        user_ids = sorted({str(s.user.pk) for s in sessions})
        conversation = conversations[slug]
        expected_messages = sends * (len(sessions) - 1)  # everyone's but its own
        seen: Counter = Counter()
        bodies: set[bytes] = set()
        unacked: list[str] = []

        async def write():
            for i in range(max(lookups, sends)):
                if i < lookups:
                    await send(ws, {"type": "devices", "user_id": user_ids[i % 3], "ref": f"d{i}"})
                if i < sends:
                    body = f"{slug}|{me.device_id}|{me.user.pk}|{i}".encode()
                    await send(
                        ws,
                        {
                            "type": "send",
                            "ref": f"s{i}",
                            "conversation": conversation,
                            "client_id": str(uuid.uuid4()),
                            "body": b64(body),
                        },
                    )

        writer = asyncio.create_task(write())
        try:
            while (seen["devices"], seen["sent"], seen["message"]) != (
                lookups,
                sends,
                expected_messages,
            ):
                try:
                    frame = await recv(ws, timeout=60)
                except TimeoutError:
                    raise AssertionError(f"a {slug} socket stalled after {dict(seen)}") from None
                kind = frame["type"]
                if kind == "devices":
                    user_id = user_ids[int(frame["ref"][1:]) % 3]
                    assert frame["user_id"] == user_id, frame
                    listed = sorted((d["device_id"], d["name"]) for d in frame["devices"])
                    assert listed == sorted(expected_devices[user_id]), frame
                elif kind == "sent":
                    assert frame["ref"].startswith("s"), frame
                elif kind == "message":
                    assert frame["conversation"] == conversation, frame
                    assert frame["sender"]["user_id"] in user_ids, frame
                    body = base64.b64decode(frame["body"])
                    assert body.startswith(f"{slug}|".encode()) and body not in bodies, body
                    bodies.add(body)
                    unacked.append(frame["id"])
                    if len(unacked) == 10:  # clients ack in batches
                        await send(ws, {"type": "ack", "ids": unacked})
                        unacked.clear()
                else:
                    raise AssertionError(f"unexpected frame on a {slug} socket: {frame}")
                seen[kind] += 1
            await writer
        finally:
            writer.cancel()
        # nothing else is pending for this socket, and it is still open
        await send(ws, {"type": "ack", "ids": unacked})
        await send(ws, {"type": "ping", "ref": "end"})
        assert await recv(ws, timeout=60) == {"type": "pong", "ref": "end"}
        assert ws.close_code is None
        return seen

    everyone = [(slug, s) for slug, (_, sessions) in orgs.items() for s in sessions]
    # every socket is live (past its drain) before anyone sends, so no message is skipped
    sockets = await asyncio.gather(*[authed_socket(server, s, live=True) for _, s in everyone])
    try:
        results = await asyncio.gather(
            *[busy(slug, s, ws) for (slug, s), ws in zip(everyone, sockets, strict=True)],
            return_exceptions=True,
        )
    finally:
        for ws in sockets:
            await ws.close()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, repr(failures[0])

    for slug, (org, _) in orgs.items():
        mine = [r for (s, _), r in zip(everyone, results, strict=True) if s == slug]
        assert len(mine) == len(usernames) * devices_per_user == 6
        assert sum(r["devices"] for r in mine) == 6 * lookups
        assert sum(r["sent"] for r in mine) == 6 * sends
        assert sum(r["message"] for r in mine) == 6 * 5 * sends
        # and the writes landed in this org's schema only
        stored = in_tenant(org, Message.objects.filter(conversation_id=conversations[slug]).count)
        assert stored == 6 * sends
        other = next(c for other_slug, c in conversations.items() if other_slug != slug)
        assert not in_tenant(org, Message.objects.filter(conversation_id=other).exists)


def _sessions_started() -> int:
    """Sessions PostgreSQL has counted for this database (a backend's count reaches the
    statistics by its exit at the latest)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


async def test_handshakes_do_not_each_open_a_database_connection(server, org_a, new_session):
    # The org lookup of every handshake ran on a thread that closed its connection after
    # each call, so every socket cost PostgreSQL a backend of its own (and a reconnect
    # storm as many backends). It now runs on the consumers' DB threads, whose
    # connections stay open: at most one per thread is new.
    session = new_session(org_a)
    handshakes = 60
    before = _sessions_started()
    for _ in range(handshakes):
        ws = await authed_socket(server, session)
        await ws.close()
    await asyncio.sleep(1.0)  # backends that exited have reported their session
    opened = _sessions_started() - before
    assert opened < handshakes // 2, f"{opened} new PostgreSQL sessions for {handshakes} sockets"


def _device_tokens(org, count: int, per_user: int = 50) -> list[str]:
    import os

    from messaging.services.devices import do_register_device
    from messaging.services.keys import DeviceKeys
    from orgs.services import audit

    actor = audit.Actor.system("test")
    tokens = []
    for start in range(0, count, per_user):
        user = make_user(org)
        for _ in range(min(per_user, count - start)):
            bundle = DeviceKeys(
                identity_key=os.urandom(32), signing_key=os.urandom(32), signed_prekey=None
            )
            _, token = in_tenant(
                org, do_register_device, user, name="burst", bundle=bundle, actor=actor
            )
            tokens.append(token)
    return tokens


async def test_a_burst_of_handshakes_all_reach_ready(server, org_a):
    # A reconnect storm: more sockets authenticating at once than a Redis connection pool
    # holds (redis-py's asyncio pool raised "Too many connections" at the 101st command,
    # and each handshake past it died). Commands now wait for a free connection.
    tokens = _device_tokens(org_a, 300)

    async def handshake(token):
        ws = await open_socket(server, host_of(org_a))
        await send(ws, {"type": "auth", "token": token})
        frame = await recv_type(ws, "ready", timeout=60)
        return ws, frame

    results = await asyncio.gather(*(handshake(t) for t in tokens), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    sockets = [r[0] for r in results if not isinstance(r, BaseException)]
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    assert not failures, f"{len(failures)} of {len(tokens)} handshakes failed: {failures[0]!r}"
    assert len(sockets) == len(tokens)
