"""1:1 call signaling over /ws/v1 with real sockets, real servers and a real Celery worker
for the timers: every case ends in the right frames on every device and the right call
record, each run twice: with everyone on one web process, and with the caller's side on
one and the callee's on another (`where`)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest

from calls.models import Call, CallParticipant
from messaging.tests.helpers import start_conversation
from siphera.tenancy import in_tenant
from tests.fixtures import Api, host_of, make_user, register_device, server_with_env
from tests.fixtures import Session as _Session
from tests.ws import authed_socket, recv, recv_type, send, wait_closed

OFFER = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=offer\r\n"  # relayed untouched, never parsed
ANSWER = "v=0\r\no=- 3 4 IN IP4 127.0.0.1\r\ns=answer\r\n"


def record(org, call_id) -> tuple[Call, dict[str, CallParticipant]]:
    def read():
        call = Call.objects.get(pk=call_id)
        return call, {p.role: p for p in CallParticipant.objects.filter(call=call)}

    return in_tenant(org, read)


async def silent(ws, seconds: float = 0.5) -> list[dict]:
    """Frames that arrive within `seconds` (none expected, usually)."""
    frames = []
    try:
        while True:
            frames.append(await recv(ws, seconds))
    except TimeoutError:
        return frames


async def invite(ws, callee, *, call_id=None, media="audio", ref="inv") -> str:
    call_id = call_id or str(uuid.uuid4())
    await send(
        ws,
        {
            "type": "call.invite",
            "call_id": call_id,
            "to": {"user_id": str(callee.user.pk)},
            "media": media,
            "sdp": OFFER,
            "ref": ref,
        },
    )
    return call_id


async def answered_call(caller_ws, callee_ws, callee) -> str:
    """A call from `caller_ws` that `callee_ws` (a device of `callee`) answered."""
    call_id = await invite(caller_ws, callee)
    await recv_type(callee_ws, "call.incoming")
    await send(callee_ws, {"type": "call.accept", "call_id": call_id, "sdp": ANSWER})
    await recv_type(caller_ws, "call.accept")
    return call_id


def second_device(server, session, name="phone") -> _Session:
    api = Api(server, host_of(session.org))
    device_id, token, keys = register_device(api, session.user.username, name=name)
    return _Session(session.org, session.user, device_id, token, keys, api.as_device(token))


@pytest.fixture(scope="module")
def other_server(server, tmp_path_factory):
    """A second web process on the same database and Redis."""
    with server_with_env(tmp_path_factory.mktemp("second") / "server.log") as second:
        yield second


@pytest.fixture(params=["one process", "two processes"])
def where(request, server):
    """(the caller's server, the callee's server)."""
    if request.param == "one process":
        return server, server
    return server, request.getfixturevalue("other_server")


@contextlib.contextmanager
def servers_with_env(where_param: str, tmp_path, **env):
    """Like `where`, for servers started with special settings."""
    with server_with_env(tmp_path / "a.log", **env) as first:
        if where_param == "one process":
            yield first, first
            return
        with server_with_env(tmp_path / "b.log", **env) as second:
            yield first, second


@pytest.fixture
def people(server, org_a, new_session):
    """alice (one device) and bob (two devices: laptop and phone), members of org A."""
    alice = new_session(org_a)
    bob = new_session(org_a)
    bob_phone = second_device(server, bob)
    return alice, bob, bob_phone


async def test_every_callee_device_rings_the_first_to_accept_wins_and_ice_and_hangup_relay(
    where, org_a, people
):
    caller_server, callee_server = where
    alice, bob, bob_phone = people
    a = await authed_socket(caller_server, alice, live=True)
    b1 = await authed_socket(callee_server, bob, live=True)
    b2 = await authed_socket(caller_server, bob_phone, live=True)
    call_id = await invite(a, bob, media="video")
    invited = await recv_type(a, "call.invited")
    assert invited == {"type": "call.invited", "call_id": call_id, "ref": "inv"}
    for ws in (b1, b2):
        incoming = await recv_type(ws, "call.incoming")
        assert incoming["call_id"] == call_id
        assert incoming["sdp"] == OFFER  # untouched
        assert incoming["media"] == "video"
        assert incoming["from"] == {"user_id": str(alice.user.pk), "device_id": alice.device_id}

    await send(b1, {"type": "call.ringing", "call_id": call_id})
    ringing = await recv_type(a, "call.ringing")
    assert ringing["device_id"] == bob.device_id

    await send(b2, {"type": "call.accept", "call_id": call_id, "sdp": ANSWER})
    accepted = await recv_type(a, "call.accept")
    assert accepted["sdp"] == ANSWER
    assert accepted["from"] == {"user_id": str(bob.user.pk), "device_id": bob_phone.device_id}
    elsewhere = await recv_type(b1, "call.answered_elsewhere")
    assert elsewhere["call_id"] == call_id
    assert not [f for f in await silent(b2) if f["type"] == "call.answered_elsewhere"]

    # The losing device's late accept is refused; the call stays with the phone.
    await send(b1, {"type": "call.accept", "call_id": call_id, "sdp": ANSWER, "ref": "late"})
    late = await recv_type(b1, "error")
    assert (late["code"], late["ref"]) == ("already_answered", "late")

    candidate = {"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "x": [1]}
    await send(a, {"type": "call.ice", "call_id": call_id, "candidate": candidate})
    assert (await recv_type(b2, "call.ice"))["candidate"] == candidate
    await send(b2, {"type": "call.ice", "call_id": call_id, "candidate": {"c": "back"}})
    assert (await recv_type(a, "call.ice"))["candidate"] == {"c": "back"}
    # The device that did not answer takes no part.
    await send(b1, {"type": "call.ice", "call_id": call_id, "candidate": {}, "ref": "x"})
    assert (await recv_type(b1, "error"))["code"] == "not_found"

    await send(a, {"type": "call.hangup", "call_id": call_id})
    ended = await recv_type(b2, "call.ended")
    assert ended == {"type": "call.ended", "call_id": call_id, "reason": "hangup"}
    call, parts = record(org_a, call_id)
    assert (call.state, call.outcome, call.end_reason) == ("ended", "completed", "hangup")
    assert call.media == "video" and call.answered_at and call.ended_at
    assert parts["callee"].device_id == bob_phone.device_id
    assert parts["caller"].left_at and parts["callee"].left_at
    assert call.duration_seconds is not None
    for ws in (a, b1, b2):
        await ws.close()


async def test_a_reject_ends_the_call_for_the_caller_and_stops_every_other_device(
    where, org_a, people
):
    caller_server, callee_server = where
    alice, bob, bob_phone = people
    a = await authed_socket(caller_server, alice, live=True)
    b1 = await authed_socket(callee_server, bob, live=True)
    b2 = await authed_socket(caller_server, bob_phone, live=True)
    call_id = await invite(a, bob)
    await recv_type(b1, "call.incoming")
    await recv_type(b2, "call.incoming")
    await send(b1, {"type": "call.reject", "call_id": call_id, "reason": "in a meeting"})
    assert (await recv_type(a, "call.ended"))["reason"] == "rejected"
    assert (await recv_type(b2, "call.ended"))["reason"] == "rejected"
    assert not [f for f in await silent(b1) if f["type"] == "call.ended"]
    call, _ = record(org_a, call_id)
    assert (call.outcome, call.end_reason, call.answered_at) == ("rejected", "rejected", None)
    for ws in (a, b1, b2):
        await ws.close()


async def test_a_callee_in_an_answered_call_is_busy(where, org_a, people, new_session):
    caller_server, callee_server = where
    alice, bob, _ = people
    carol = new_session(org_a)
    a = await authed_socket(caller_server, alice, live=True)
    b = await authed_socket(callee_server, bob, live=True)
    c = await authed_socket(caller_server, carol, live=True)
    first = await answered_call(a, b, bob)

    second = await invite(c, bob, ref="busy")
    ended = await recv_type(c, "call.ended")
    assert ended == {"type": "call.ended", "call_id": second, "reason": "busy", "ref": "busy"}
    assert not [f for f in await silent(b) if f.get("call_id") == second]
    call, _ = record(org_a, second)
    assert (call.state, call.outcome) == ("ended", "busy")
    assert record(org_a, first)[0].state == "active"
    for ws in (a, b, c):
        await ws.close()


async def test_glare_settles_on_one_call(where, org_a, people):
    caller_server, callee_server = where
    alice, bob, _ = people
    a = await authed_socket(caller_server, alice, live=True)
    b = await authed_socket(callee_server, bob, live=True)
    a_call, b_call = str(uuid.uuid4()), str(uuid.uuid4())
    await asyncio.gather(invite(a, bob, call_id=a_call), invite(b, alice, call_id=b_call))
    answers = {}
    for ws, name in ((a, "alice"), (b, "bob")):
        while name not in answers:
            frame = await recv(ws)
            if frame["type"] in ("call.invited", "call.ended"):
                answers[name] = frame
    kinds = sorted(f["type"] for f in answers.values())
    assert kinds == ["call.ended", "call.invited"], answers
    loser = next(f for f in answers.values() if f["type"] == "call.ended")
    winner = next(f for f in answers.values() if f["type"] == "call.invited")
    assert loser["reason"] == "glare"
    assert loser["replaced_by"] == winner["call_id"]
    assert record(org_a, loser["call_id"])[0].outcome == "glare"
    assert record(org_a, winner["call_id"])[0].state == "ringing"
    # The loser's side is the winner's callee: it hears the winning call ring.
    loser_ws = a if loser["call_id"] == a_call else b
    assert (await recv_type(loser_ws, "call.incoming"))["call_id"] == winner["call_id"]
    await send(loser_ws, {"type": "call.accept", "call_id": winner["call_id"], "sdp": ANSWER})
    winner_ws = b if loser_ws is a else a
    assert (await recv_type(winner_ws, "call.accept"))["call_id"] == winner["call_id"]
    await a.close()
    await b.close()


@pytest.mark.parametrize("where_param", ["one process", "two processes"])
async def test_an_unanswered_call_times_out_as_missed_on_every_device(
    org_a, celery_worker, tmp_path, where_param
):
    with servers_with_env(where_param, tmp_path, CALL_RING_TIMEOUT_SECONDS="2") as (
        caller_server,
        callee_server,
    ):
        alice, bob = new_session_on(caller_server, org_a), new_session_on(callee_server, org_a)
        bob_phone = second_device(callee_server, bob)
        a = await authed_socket(caller_server, alice, live=True)
        b1 = await authed_socket(callee_server, bob, live=True)
        b2 = await authed_socket(caller_server, bob_phone, live=True)
        call_id = await invite(a, bob)
        await recv_type(b1, "call.incoming")
        for ws in (a, b1, b2):
            ended = await recv_type(ws, "call.ended", timeout=20)
            assert (ended["call_id"], ended["reason"]) == (call_id, "timeout")
        call, _ = record(org_a, call_id)
        assert (call.outcome, call.end_reason) == ("missed", "timeout")
        # A timer that comes again (a redelivered task) changes nothing.
        from calls.services.signaling import do_ring_timeout

        assert in_tenant(org_a, do_ring_timeout, call_id, call.ended_at.isoformat()) is False
        for ws in (a, b1, b2):
            await ws.close()


def new_session_on(server, org, role="member") -> _Session:
    user = make_user(org, role=role)
    api = Api(server, host_of(org))
    device_id, token, keys = register_device(api, user.username)
    return _Session(org, user, device_id, token, keys, api.as_device(token))


@pytest.mark.parametrize("where_param", ["one process", "two processes"])
async def test_a_dropped_socket_ends_its_call_after_the_grace_and_a_reconnect_keeps_it(
    org_a, celery_worker, tmp_path, where_param
):
    with servers_with_env(where_param, tmp_path, CALL_RECONNECT_GRACE_SECONDS="2") as (
        caller_server,
        callee_server,
    ):
        alice, bob = new_session_on(caller_server, org_a), new_session_on(callee_server, org_a)
        a = await authed_socket(caller_server, alice, live=True)
        b = await authed_socket(callee_server, bob, live=True)
        kept = await answered_call(a, b, bob)

        # Bob's socket drops and comes back within the grace: the call goes on.
        await b.close()
        b = await authed_socket(callee_server, bob, live=True)
        assert not [f for f in await silent(a, 4) if f["type"] == "call.ended"]
        call, parts = record(org_a, kept)
        assert call.state == "active" and parts["callee"].disconnected_at is None

        # Alice's socket drops for good: after the grace Bob hears the call failed.
        await a.close()
        ended = await recv_type(b, "call.ended", timeout=20)
        assert (ended["call_id"], ended["reason"]) == (kept, "failed")
        call, parts = record(org_a, kept)
        assert (call.state, call.outcome) == ("ended", "failed")
        await b.close()


async def test_a_revoked_device_ends_its_call(where, org_a, people):
    caller_server, callee_server = where
    alice, bob, _ = people
    a = await authed_socket(caller_server, alice, live=True)
    b = await authed_socket(callee_server, bob, live=True)
    call_id = await answered_call(a, b, bob)
    revoked = bob.api.delete(f"/api/v1/devices/{bob.device_id}")
    assert revoked.status_code == 204, revoked.text
    assert await wait_closed(b) == 4403
    assert (await recv_type(a, "call.ended"))["reason"] == "failed"
    assert record(org_a, call_id)[0].outcome == "failed"
    await a.close()


async def test_calls_are_refused_where_the_caller_may_not_call(
    server, org_a, org_b, people, new_session
):
    alice, bob, _ = people
    guest = new_session(org_a, role="guest")
    outsider = new_session(org_b)
    g = await authed_socket(server, guest, live=True)
    a = await authed_socket(server, alice, live=True)

    async def refused(ws, frame, code):
        await send(ws, {**frame, "ref": "r"})
        error = await recv_type(ws, "error")
        assert (error["code"], error["ref"]) == (code, "r"), error

    base = {"type": "call.invite", "media": "audio", "sdp": OFFER}
    # A guest sharing no conversation with bob cannot find him to call.
    await refused(
        g, {**base, "call_id": str(uuid.uuid4()), "to": {"user_id": str(bob.user.pk)}}, "not_found"
    )
    # Another org's user does not exist here.
    await refused(
        a,
        {**base, "call_id": str(uuid.uuid4()), "to": {"user_id": str(outsider.user.pk)}},
        "not_found",
    )
    await refused(
        a,
        {**base, "call_id": str(uuid.uuid4()), "to": {"user_id": str(alice.user.pk)}},
        "cannot_call_self",
    )
    await refused(
        a, {**base, "call_id": "nope", "to": {"user_id": str(bob.user.pk)}}, "invalid_call"
    )
    await refused(
        a,
        {**base, "call_id": str(uuid.uuid4()), "media": "fax", "to": {"user_id": str(bob.user.pk)}},
        "invalid_call",
    )
    await refused(
        a,
        {
            **base,
            "call_id": str(uuid.uuid4()),
            "to": {"user_id": str(bob.user.pk)},
            "sdp": "x" * 70_000,
        },
        "sdp_too_large",
    )
    await refused(a, {**base, "call_id": str(uuid.uuid4()), "to": {"someone": 1}}, "invalid_call")
    await refused(
        a,
        {**base, "call_id": str(uuid.uuid4()), "to": {"emergency": "911"}},
        "emergency_unavailable",
    )
    await refused(a, {**base, "call_id": str(uuid.uuid4()), "to": "bob"}, "invalid_call")
    await refused(
        a, {"type": "call.accept", "call_id": str(uuid.uuid4()), "sdp": ANSWER}, "not_found"
    )
    await refused(a, {"type": "call.hangup", "call_id": 12}, "invalid_call")
    huge = {"candidate": "x" * 5000}
    await refused(
        a, {"type": "call.ice", "call_id": str(uuid.uuid4()), "candidate": huge}, "invalid_call"
    )
    # A group conversation is not rung one by one.
    group = start_conversation(alice, bob, guest, kind="group")
    await refused(
        a,
        {**base, "call_id": str(uuid.uuid4()), "to": {"conversation": group["id"]}},
        "group_call_needs_room",
    )
    # Nothing was recorded for any of these, and the socket still works.
    await send(a, {"type": "ping", "ref": "p"})
    assert (await recv_type(a, "pong"))["ref"] == "p"

    # Once they share a direct conversation, the guest may call bob through it.
    direct = start_conversation(guest, bob)
    await send(g, {**base, "call_id": str(uuid.uuid4()), "to": {"conversation": direct["id"]}})
    assert (await recv_type(g, "call.invited"))["type"] == "call.invited"
    await g.close()
    await a.close()


async def test_another_orgs_user_cannot_act_on_a_call(server, org_a, org_b, people, new_session):
    alice, bob, _ = people
    outsider = new_session(org_b)
    a = await authed_socket(server, alice, live=True)
    b = await authed_socket(server, bob, live=True)
    o = await authed_socket(server, outsider, live=True)
    call_id = await invite(a, bob)
    await recv_type(b, "call.incoming")
    for frame in (
        {"type": "call.accept", "call_id": call_id, "sdp": ANSWER},
        {"type": "call.reject", "call_id": call_id},
        {"type": "call.hangup", "call_id": call_id},
        {"type": "call.ice", "call_id": call_id, "candidate": {}},
        {"type": "call.ringing", "call_id": call_id},
    ):
        await send(o, {**frame, "ref": "o"})
        assert (await recv_type(o, "error"))["code"] == "not_found"
    assert record(org_a, call_id)[0].state == "ringing"
    for ws in (a, b, o):
        await ws.close()


async def test_do_not_disturb_sends_the_call_to_missed_without_ringing(where, org_a, people):
    caller_server, callee_server = where
    alice, bob, bob_phone = people
    a = await authed_socket(caller_server, alice, live=True)
    b = await authed_socket(callee_server, bob, live=True)
    dnd = bob.api.put("/api/v1/me/presence", json={"status": "dnd"})
    assert dnd.status_code == 200, dnd.text
    call_id = await invite(a, bob, ref="d")
    ended = await recv_type(a, "call.ended")
    assert (ended["call_id"], ended["reason"], ended["ref"]) == (call_id, "dnd", "d")
    assert not [f for f in await silent(b) if f.get("call_id") == call_id]
    call, _ = record(org_a, call_id)
    assert (call.outcome, call.end_reason) == ("missed", "dnd")

    # Do-not-disturb off: the next call rings.
    assert bob.api.put("/api/v1/me/presence", json={"status": None}).status_code == 200
    again = await invite(a, bob)
    assert (await recv_type(b, "call.incoming"))["call_id"] == again
    await a.close()
    await b.close()


async def test_watchers_see_in_call_while_the_call_is_answered(where, org_a, people, new_session):
    caller_server, callee_server = where
    alice, bob, _ = people
    watcher = new_session(org_a)
    w = await authed_socket(caller_server, watcher, live=True)
    a = await authed_socket(caller_server, alice, live=True)
    b = await authed_socket(callee_server, bob, live=True)
    await send(w, {"type": "presence.subscribe", "user_ids": [str(alice.user.pk)]})
    subscribed = await recv_type(w, "presence.subscribed")
    assert subscribed["presence"][0]["state"] == "online"

    call_id = await answered_call(a, b, bob)
    states = []
    while "in_call" not in states:
        states.append((await recv_type(w, "presence", timeout=10))["state"])
    await send(a, {"type": "call.hangup", "call_id": call_id})
    while states[-1] != "online":
        states.append((await recv_type(w, "presence", timeout=10))["state"])
    assert states[-2:] == ["in_call", "online"]
    for ws in (w, a, b):
        await ws.close()
