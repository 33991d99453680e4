"""Presence: online / idle / offline from every socket of a user, user-set dnd / away with
an end, in_call from calls' hook, hidden by org policy, visible only to who may see the
user, pushed across web processes, and aged out when a web process dies.

Waits are for a frame to arrive (generous timeouts), never for a fixed time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import subprocess
import sys
import uuid

import pytest

from messaging.tests.helpers import start_conversation
from orgs import hooks
from orgs.accounts.models import AuditEntry
from orgs.services import presence
from siphera.tenancy import in_tenant
from siphera.ws import FrameError
from tests.fixtures import (
    ROOT,
    LiveServer,
    _free_port,
    _wait_http,
    child_env,
    server_with_env,
)
from tests.ws import authed_socket, recv_type, send

WAIT = 20.0  # seconds a pushed change may take (a tick is at most 5 s)


async def _subscribe(ws, *user_ids, ref: str = "sub") -> dict:
    await send(
        ws, {"type": "presence.subscribe", "user_ids": [str(u) for u in user_ids], "ref": ref}
    )
    reply = await recv_type(ws, "presence.subscribed")
    assert reply["ref"] == ref
    return reply


async def _state_now(ws, user_id) -> str:
    """The user's presence as a fresh subscribe answers it."""
    reply = await _subscribe(ws, user_id, ref=f"now-{uuid.uuid4().hex[:6]}")
    [body] = reply["presence"]
    return body["state"]


async def _pushed(ws, user_id, state: str, timeout: float = WAIT) -> dict:
    """Read `presence` frames until one says `user_id` is in `state`."""
    deadline = dt.datetime.now() + dt.timedelta(seconds=timeout)
    while True:
        left = (deadline - dt.datetime.now()).total_seconds()
        frame = await recv_type(ws, "presence", timeout=max(left, 0.01))
        if frame["user_id"] == str(user_id) and frame["state"] == state:
            return frame


async def _settled(ws) -> None:
    """Every frame sent before on this socket has been handled (frames go in order)."""
    await send(ws, {"type": "ping", "ref": "settled"})
    await recv_type(ws, "pong")


# --- several devices --------------------------------------------------------------------


async def test_a_user_is_online_while_any_device_is_active_and_idle_when_all_are(
    server, org_a, new_session
):
    # Given a watcher subscribed to a user with two devices, neither connected yet
    watcher = new_session(org_a)
    laptop = new_session(org_a)
    phone = new_session(org_a, laptop.user, name="phone")
    user_id = laptop.user.pk
    async with await authed_socket(server, watcher) as w:
        reply = await _subscribe(w, user_id)
        assert reply["presence"] == [{"user_id": str(user_id), "state": "offline", "until": None}]
        assert reply["not_found"] == []

        # When the laptop connects, then the user is online
        laptop_ws = await authed_socket(server, laptop)
        await _pushed(w, user_id, "online")
        phone_ws = await authed_socket(server, phone)

        # When one device goes idle and the other stays active, then still online
        await send(laptop_ws, {"type": "presence", "state": "idle"})
        await _settled(laptop_ws)
        assert await _state_now(w, user_id) == "online"

        # When both are idle, then idle
        await send(phone_ws, {"type": "presence", "state": "idle"})
        await _pushed(w, user_id, "idle")

        # When one is active again, then online; when both close, then offline
        await send(phone_ws, {"type": "presence", "state": "active"})
        await _pushed(w, user_id, "online")
        await laptop_ws.close()
        await _settled(w)
        assert await _state_now(w, user_id) == "online"
        await phone_ws.close()
        await _pushed(w, user_id, "offline")


async def test_unsubscribing_stops_the_pushes(server, org_a, new_session):
    watcher, target = new_session(org_a), new_session(org_a)
    async with await authed_socket(server, watcher) as w:
        await _subscribe(w, target.user.pk)
        await send(w, {"type": "presence.unsubscribe", "user_ids": [str(target.user.pk)]})
        reply = await recv_type(w, "presence.unsubscribed")
        assert reply["user_ids"] == [str(target.user.pk)]
        # When the target connects and goes idle, then the watcher hears nothing of it:
        # the next presence frame it gets is of a user it subscribes to afterwards.
        other = new_session(org_a)
        async with await authed_socket(server, target) as t:
            await send(t, {"type": "presence", "state": "idle"})
            await _settled(t)
            await _subscribe(w, other.user.pk)
            async with await authed_socket(server, other):
                frame = await recv_type(w, "presence", timeout=WAIT)
        assert frame["user_id"] == str(other.user.pk)


# --- dnd / away ---------------------------------------------------------------------------


async def test_dnd_is_pushed_with_its_end_and_ends_by_itself(server, org_a, new_session):
    watcher, target = new_session(org_a), new_session(org_a)
    user_id = target.user.pk
    async with await authed_socket(server, watcher) as w:
        await _subscribe(w, user_id)
        t = await authed_socket(server, target)
        await _pushed(w, user_id, "online")
        until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3)

        # When the user sets do-not-disturb for 3 seconds
        await send(
            t, {"type": "presence.set", "status": "dnd", "until": until.isoformat(), "ref": 1}
        )
        own = await recv_type(t, "presence.status")
        assert own["ref"] == 1
        assert (own["status"], own["state"]) == ("dnd", "dnd")
        assert dt.datetime.fromisoformat(own["until"]) == until

        # Then watchers see it with its end, and calls would not ring them
        pushed = await _pushed(w, user_id, "dnd")
        assert dt.datetime.fromisoformat(pushed["until"]) == until
        assert in_tenant(org_a, presence.dnd_active, target.user) is True

        # And when the time has come, it ends without anyone doing anything
        back = await _pushed(w, user_id, "online")
        assert back["until"] is None
        assert in_tenant(org_a, presence.dnd_active, user_id) is False
        await t.close()


async def test_a_status_without_end_holds_until_cleared(server, org_a, new_session):
    watcher, target = new_session(org_a), new_session(org_a)
    user_id = target.user.pk
    async with await authed_socket(server, watcher) as w:
        await _subscribe(w, user_id)
        async with await authed_socket(server, target) as t:
            await _pushed(w, user_id, "online")
            await send(t, {"type": "presence.set", "status": "away"})
            assert (await recv_type(t, "presence.status"))["state"] == "away"
            assert (await _pushed(w, user_id, "away"))["until"] is None
            await send(t, {"type": "presence.set", "status": None})
            assert (await recv_type(t, "presence.status"))["status"] is None
            await _pushed(w, user_id, "online")


def test_own_status_over_rest(server, org_a, new_session):
    session = new_session(org_a)
    api = session.api
    assert api.get("/api/v1/me/presence").json() == {
        "status": None,
        "until": None,
        "state": "offline",
    }
    until = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
    response = api.put("/api/v1/me/presence", json={"status": "dnd", "until": until})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "dnd"
    # Offline wins over a status: nobody is there to be disturbed, but calls still see it
    assert response.json()["state"] == "offline"
    assert in_tenant(org_a, presence.dnd_active, session.user) is True
    assert api.get("/api/v1/me/presence").json()["status"] == "dnd"
    assert api.put("/api/v1/me/presence", json={"status": None}).json()["status"] is None
    assert in_tenant(org_a, presence.dnd_active, session.user) is False


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"status": "busy"},
        {"status": "dnd", "until": "tomorrow"},
        {"status": "dnd", "until": "2020-01-01T00:00:00Z"},
        {"status": "dnd", "until": "2999-01-01T00:00:00Z"},
        {"status": "dnd", "until": "2030-01-01T00:00:00"},  # no time zone
        {"status": None, "until": "2030-01-01T00:00:00Z"},
        [],
    ],
)
def test_a_bad_status_over_rest_is_a_400(server, org_a, new_session, body):
    session = new_session(org_a)
    response = session.api.put("/api/v1/me/presence", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"


# --- calls --------------------------------------------------------------------------------


async def test_a_call_shows_in_call_below_dnd_when_calls_says_so(server, org_a, new_session):
    # Given calls' hook says the user is in a call (registered here, in the test process,
    # which then computes and pushes the change exactly as calls' services will)
    watcher, target = new_session(org_a), new_session(org_a)
    user_id = target.user.pk
    calling = {user_id}

    def in_call(uid) -> bool:
        return uid in calling

    hooks.in_call.register(in_call)
    try:
        async with await authed_socket(server, watcher) as w:
            await _subscribe(w, user_id)
            t = await authed_socket(server, target)
            await _pushed(w, user_id, "online")
            # When calls tells presence the call started, then watchers see in_call (from
            # a thread: notify_changed is sync code, as calls' services are)
            await asyncio.to_thread(in_tenant, org_a, presence.notify_changed, user_id)
            await _pushed(w, user_id, "in_call")
            # When it ends, then they are online again
            calling.clear()
            await asyncio.to_thread(in_tenant, org_a, presence.notify_changed, user_id)
            await _pushed(w, user_id, "online")

            # And during a call dnd shows over it, and the call over away
            calling.add(user_id)
            for status, shown in (("dnd", "dnd"), ("away", "in_call")):
                await send(t, {"type": "presence.set", "status": status})
                await recv_type(t, "presence.status")
                found = in_tenant(org_a, presence.presence_of, [user_id])
                assert found[user_id]["state"] == shown
            await t.close()
    finally:
        hooks.in_call._receivers.remove(in_call)


# --- who may see --------------------------------------------------------------------------


async def test_a_guest_sees_only_people_they_share_a_conversation_with(server, org_a, new_session):
    guest = new_session(org_a, role="guest")
    member = new_session(org_a)
    async with await authed_socket(server, guest) as g:
        reply = await _subscribe(g, member.user.pk)
        assert reply == {
            "type": "presence.subscribed",
            "presence": [],
            "not_found": [str(member.user.pk)],
            "ref": "sub",
        }
        # When the member starts a conversation with the guest, then the guest sees them
        start_conversation(member, guest)
        reply = await _subscribe(g, member.user.pk)
        assert [p["user_id"] for p in reply["presence"]] == [str(member.user.pk)]
        assert reply["not_found"] == []


async def test_a_role_change_ends_subscriptions_to_users_no_longer_visible(
    server, org_a, new_session
):
    # Given a member watching another member
    owner = new_session(org_a, role="owner")
    watcher, target = new_session(org_a), new_session(org_a)
    async with await authed_socket(server, watcher) as w:
        await _subscribe(w, target.user.pk)
        # When the watcher is made a guest (who shares no conversation with the target)
        response = owner.api.put(f"/api/v1/users/{watcher.user.pk}/role", json={"role": "guest"})
        assert response.status_code == 200, response.text
        # Then the subscription ends, and the socket says so
        ended = await recv_type(w, "presence.unsubscribed", timeout=WAIT)
        assert ended["user_ids"] == [str(target.user.pk)]
        assert "ref" not in ended


async def test_another_orgs_user_is_answered_like_an_unknown_id(server, org_a, org_b, new_session):
    in_a = new_session(org_a)
    in_b = new_session(org_b)
    unknown = uuid.uuid4()
    async with await authed_socket(server, in_b) as b, await authed_socket(server, in_a):
        reply = await _subscribe(b, in_a.user.pk, unknown)
        assert reply["presence"] == []
        assert reply["not_found"] == [str(in_a.user.pk), str(unknown)]


async def test_hidden_presence_refuses_subscriptions_and_pushes_nothing(
    server, quiet_org, new_session
):
    owner = new_session(quiet_org, role="owner")
    watcher, target = new_session(quiet_org), new_session(quiet_org)
    user_id = target.user.pk
    async with await authed_socket(server, watcher) as w:
        await _subscribe(w, user_id)
        t = await authed_socket(server, target)
        await _pushed(w, user_id, "online")
        # When an owner hides presence
        response = owner.api.request("PATCH", "/api/v1/org/policy", json={"presence_hidden": True})
        assert response.status_code == 200, response.text
        assert response.json()["presence_hidden"] is True

        # Then subscribing is refused with a clear code, for anyone
        await send(w, {"type": "presence.subscribe", "user_ids": [str(user_id)], "ref": "h"})
        error = await recv_type(w, "error")
        assert (error["code"], error["ref"]) == ("presence_hidden", "h")
        # And users still set their own status, yet nothing about it is pushed
        await send(t, {"type": "presence.set", "status": "dnd", "ref": "s"})
        assert (await recv_type(t, "presence.status"))["state"] == "dnd"
        await send(t, {"type": "presence.set", "status": None})
        await _settled(t)

        # When presence is shown again, then the first change pushed is the next one
        response = owner.api.request("PATCH", "/api/v1/org/policy", json={"presence_hidden": False})
        assert response.json()["presence_hidden"] is False
        await send(t, {"type": "presence", "state": "idle"})
        frame = await recv_type(w, "presence", timeout=WAIT)
        assert (frame["user_id"], frame["state"]) == (str(user_id), "idle")
        await t.close()

    # And each change of the policy was audited
    changes = in_tenant(
        quiet_org,
        lambda: list(
            AuditEntry.objects.filter(event="org.policy_changed", target_id="presence_hidden")
            .order_by("id")
            .values_list("data", flat=True)
        ),
    )
    assert [(c["before"], c["after"]) for c in changes] == [(False, True), (True, False)]


def test_the_policy_page_offers_hidden_presence():
    from admin_portal.forms import PolicyForm
    from orgs.services import policy

    assert "presence_hidden" in PolicyForm.base_fields
    assert "presence_hidden" in policy.FIELDS


# --- bad frames -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "presence", "state": "asleep"}, "invalid_request"),
        ({"type": "presence", "state": ["idle"]}, "invalid_request"),
        ({"type": "presence.set"}, "invalid_request"),
        ({"type": "presence.set", "status": "busy"}, "invalid_request"),
        ({"type": "presence.set", "status": {"x": 1}}, "invalid_request"),
        ({"type": "presence.set", "status": "dnd", "until": 5}, "invalid_request"),
        (
            {"type": "presence.set", "status": "away", "until": "2001-01-01T00:00Z"},
            "invalid_request",
        ),
        ({"type": "presence.subscribe"}, "invalid_frame"),
        ({"type": "presence.subscribe", "user_ids": "all"}, "invalid_frame"),
        ({"type": "presence.subscribe", "user_ids": ["not-a-uuid"]}, "invalid_frame"),
        ({"type": "presence.subscribe", "user_ids": [7]}, "invalid_frame"),
        ({"type": "presence.subscribe", "user_ids": [None]}, "invalid_frame"),
        (
            {"type": "presence.subscribe", "user_ids": [str(uuid.uuid4()) for _ in range(101)]},
            "invalid_frame",
        ),
        ({"type": "presence.unsubscribe", "user_ids": [{}]}, "invalid_frame"),
    ],
)
async def test_bad_presence_frames_get_an_error_and_the_socket_stays_open(
    server, org_a, new_session, frame, code
):
    session = new_session(org_a)
    async with await authed_socket(server, session) as ws:
        await send(ws, {**frame, "ref": "bad"})
        error = await recv_type(ws, "error")
        assert (error["code"], error["ref"]) == (code, "bad")
        await _settled(ws)


async def test_a_socket_watches_at_most_1000_users():
    # A unit test: filling the table takes 1000 users the socket may see.
    from orgs.presence_socket import MAX_SUBSCRIPTIONS, PresenceSocket

    class Socket:
        org = device = None

    extension = PresenceSocket(Socket())
    extension._subscribed = {uuid.uuid4(): 0 for _ in range(MAX_SUBSCRIPTIONS)}
    with pytest.raises(FrameError) as refused:
        await extension.subscribe({"type": "presence.subscribe", "user_ids": [str(uuid.uuid4())]})
    assert refused.value.code == "too_many_subscriptions"


# --- across web processes -------------------------------------------------------------------


async def test_a_subscriber_on_another_web_process_sees_the_same_changes(
    server, org_a, new_session, tmp_path
):
    watcher, target = new_session(org_a), new_session(org_a)
    user_id = target.user.pk
    with server_with_env(tmp_path / "s2.log") as s2:
        async with await authed_socket(s2, watcher) as w:
            await _subscribe(w, user_id)
            t = await authed_socket(server, target)
            await _pushed(w, user_id, "online")
            await send(t, {"type": "presence", "state": "idle"})
            await _pushed(w, user_id, "idle")
            await send(t, {"type": "presence.set", "status": "away"})
            await recv_type(t, "presence.status")
            await _pushed(w, user_id, "away")
            await t.close()
            await _pushed(w, user_id, "offline")


async def test_the_sockets_of_a_crashed_web_process_age_out(org_a, new_session, tmp_path):
    # Given a user connected only to a web process that then dies without closing anything
    # (SIGKILL), watched from another process; both renew their heartbeat every second
    # and count sockets for 3 s after the last one.
    watcher, target = new_session(org_a), new_session(org_a)
    user_id = target.user.pk
    port = _free_port()
    log_path = tmp_path / "doomed.log"
    env = child_env(PRESENCE_TTL_SECONDS="3")
    with open(log_path, "wb") as log:
        doomed_proc = subprocess.Popen(
            [sys.executable, "-m", "siphera.serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", doomed_proc, log_path)
        doomed = LiveServer(port=port, log_path=log_path)
        with server_with_env(tmp_path / "watcher.log", PRESENCE_TTL_SECONDS="3") as s2:
            async with await authed_socket(s2, watcher) as w:
                await _subscribe(w, user_id)
                t = await authed_socket(doomed, target)
                await _pushed(w, user_id, "online")
                # When the process dies, then its user turns offline for watchers
                doomed_proc.kill()
                doomed_proc.wait(10)
                await _pushed(w, user_id, "offline")
                with contextlib.suppress(Exception):
                    await t.close()
    finally:
        if doomed_proc.poll() is None:
            doomed_proc.kill()
            doomed_proc.wait(10)
