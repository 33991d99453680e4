"""Two web processes on one database and Redis (issue 15, item 14): what is done through
one reaches the sockets on the other — a message, a revocation, a role change."""

from __future__ import annotations

import asyncio

from messaging.tests.helpers import send_body, start_conversation
from tests.fixtures import Api, host_of
from tests.ws import authed_socket, recv, recv_type, send, wait_closed


def through(live, session) -> Api:
    """`session`'s device, talking to the process `live`."""
    return Api(live, host_of(session.org), session.token)


async def test_a_message_sent_through_one_process_reaches_a_socket_on_the_other(
    server, second_server, org_a, new_session
):
    alice, bob = new_session(org_a), new_session(org_a)
    conversation = start_conversation(alice, bob)["id"]
    ws = await authed_socket(second_server, bob, live=True)  # bob's socket: process 2
    alice.api = through(server, alice)  # alice sends through process 1
    sent = await asyncio.to_thread(send_body, alice, conversation, b"across")
    assert sent.status_code == 201, sent.text
    message = await recv_type(ws, "message", timeout=10)
    assert message["id"] == sent.json()["id"]
    await send(ws, {"type": "ack", "ids": [message["id"]]})
    await ws.close()


async def test_a_revoke_and_a_role_change_through_one_process_reach_sockets_on_the_other(
    server, second_server, org_a, new_session
):
    owner = new_session(org_a, role="owner")
    laptop = new_session(org_a, name="laptop")
    phone = new_session(org_a, laptop.user, name="phone")
    phone_socket = await authed_socket(second_server, phone, live=True)
    laptop_socket = await authed_socket(second_server, laptop, live=True)
    # A role change through process 1: the socket on process 2 loses what a guest may not
    stranger = new_session(org_a)
    ask = {"type": "devices", "user_id": str(stranger.user.pk)}
    await send(laptop_socket, {**ask, "ref": "member"})
    assert (await recv_type(laptop_socket, "devices"))["ref"] == "member"
    demoted = await asyncio.to_thread(
        through(server, owner).put,
        f"/api/v1/users/{laptop.user.pk}/role",
        json={"role": "guest"},
    )
    assert demoted.status_code == 200, demoted.text
    await asyncio.sleep(1.5)  # the event, or at worst the once-a-second generation check
    await send(laptop_socket, {**ask, "ref": "guest"})
    assert (await recv_type(laptop_socket, "error", timeout=10))["ref"] == "guest"
    # A revoke through process 1 closes the phone's socket on process 2
    revoked = await asyncio.to_thread(
        through(server, laptop).delete, f"/api/v1/devices/{phone.device_id}"
    )
    assert revoked.status_code == 204
    assert (await recv(phone_socket, timeout=10))["type"] == "device.revoked"
    assert await wait_closed(phone_socket) == 4403
    # And process 2 refuses the phone's token over HTTP too
    assert (
        await asyncio.to_thread(through(second_server, phone).get, "/api/v1/me")
    ).status_code == 401
    await laptop_socket.close()
