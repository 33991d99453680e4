"""The client WebSocket /ws/v1: tenant from Host, first-frame auth, frames, revocation."""

import asyncio
import json

import pytest
import websockets

from tests.fixtures import host_of, make_user
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
    """PITFALLS 2: consumer DB calls share an executor thread; every read must run in the
    socket's own org schema. Same username and device name in both orgs; hundreds of DB-
    backed frames each, interleaved; every answer must come from the right org."""
    a = new_session(org_a, name="same-name")
    b = new_session(org_b, make_user(org_b, a.user.username), name="same-name")
    expected = {id(a): str(a.user.pk), id(b): str(b.user.pk)}
    rounds = 300

    async def hammer(session):
        ws = await authed_socket(server, session, live=True)
        try:
            for i in range(rounds):
                await send(ws, {"type": "devices", "ref": i})
            seen = 0
            while seen < rounds:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
                assert frame["type"] == "devices", frame
                assert frame["user_id"] == expected[id(session)]
                assert [d["device_id"] for d in frame["devices"]] == [session.device_id]
                seen += 1
            return seen
        finally:
            await ws.close()

    sockets_per_org = 3
    results = await asyncio.gather(
        *[hammer(a) if i % 2 == 0 else hammer(b) for i in range(2 * sockets_per_org)],
        return_exceptions=True,
    )
    # one socket per device: the later sockets of a device close the earlier ones (4409),
    # so count answers only from sockets that stayed open, and require plenty of them.
    answered = [r for r in results if isinstance(r, int)]
    wrong_org = [r for r in results if isinstance(r, AssertionError)]
    assert not wrong_org, wrong_org[0]
    assert sum(answered) >= 2 * rounds
