"""Device lists changing under the client: revoked (410), added (409), restarted."""

from __future__ import annotations

import asyncio
import uuid

from siphera_client.client import Client
from siphera_client.tests.conftest import PASSPHRASE
from siphera_client.tests.helpers import drained, texts
from tests.fixtures import make_user


async def test_a_revoked_recipient_device_gets_a_410_the_client_recovers_from(org_a, make_client):
    # Given alice knows both of bob's devices, in a direct and in a group conversation
    alice, bob = make_user(org_a), make_user(org_a)
    a1 = await make_client(org_a, alice)
    b1 = await make_client(org_a, bob, "bob-laptop")
    b2 = await make_client(org_a, bob, "bob-phone")
    await drained(a1, b1, b2)
    marker = uuid.uuid4().hex
    await a1.send_direct(str(bob.pk), f"{marker} 1")
    group = await a1.create_group([str(bob.pk)])
    await a1.send_group(group, f"{marker} 2")
    for device in (b1, b2):
        assert [r.text for r in await texts(device, 2)] == [f"{marker} 1", f"{marker} 2"]
    old_group_session = a1.crypto.outbound_group(group)[0].session_id

    # When bob revokes his phone and alice, unaware, writes again
    await b1.api.revoke_device(b2.device_id)
    await a1.send_direct(str(bob.pk), f"{marker} 3")
    await a1.send_group(group, f"{marker} 4")

    # Then the first send met 410, forgot the phone and went through on the retry; the
    # group moved to a new Megolm session the revoked phone never had
    assert a1.stats.retries_410 == 1
    assert a1.stats.group_sessions_rotated == 1
    assert a1.crypto.outbound_group(group)[0].session_id != old_group_session
    assert [r.text for r in await texts(b1, 2)] == [f"{marker} 3", f"{marker} 4"]
    # and the phone's socket was closed by the revocation, with nothing more for it
    assert await asyncio.wait_for(b2.inbox.get(), 10) is None
    assert b2.socket.close_code == 4403


async def test_a_new_device_gets_a_409_the_client_fills_in_and_retries(org_a, make_client):
    # Given alice has written to bob's one device, in direct and group conversations
    alice, bob = make_user(org_a), make_user(org_a)
    a1 = await make_client(org_a, alice)
    b1 = await make_client(org_a, bob, "bob-laptop")
    await drained(a1, b1)
    marker = uuid.uuid4().hex
    await a1.send_direct(str(bob.pk), f"{marker} 1")
    group = await a1.create_group([str(bob.pk)])
    await a1.send_group(group, f"{marker} 2")
    assert [r.text for r in await texts(b1, 2)] == [f"{marker} 1", f"{marker} 2"]

    # When bob adds a device that alice's client has never heard of
    b2 = await make_client(org_a, bob, "bob-tablet")
    await drained(b2)
    await a1.send_direct(str(bob.pk), f"{marker} 3")
    await a1.send_group(group, f"{marker} 4")

    # Then the 409 named it, the client opened a session and retried; the new device reads
    # what was sent after it joined (and not before), the old one reads everything
    assert a1.stats.retries_409 == 1
    assert [r.text for r in await texts(b2, 2)] == [f"{marker} 3", f"{marker} 4"]
    assert [r.text for r in await texts(b1, 2)] == [f"{marker} 3", f"{marker} 4"]


async def test_state_survives_a_restart_and_the_same_sessions_carry_on(
    server, org_a, make_client, tmp_path
):
    # Given alice and bob have sessions, and alice's client is closed
    alice, bob = make_user(org_a), make_user(org_a)
    a1 = await make_client(org_a, alice)
    b1 = await make_client(org_a, bob)
    await drained(a1, b1)
    marker = uuid.uuid4().hex
    group = await a1.create_group([str(bob.pk)])
    await a1.send_direct(str(bob.pk), f"{marker} 1")
    await a1.send_group(group, f"{marker} 2")
    await texts(b1, 2)
    state = a1.store.path
    await a1.close()

    # When bob writes while she is away and she comes back from her state file
    await b1.send_direct(str(alice.pk), f"{marker} 3")
    await b1.send_group(group, f"{marker} 4")
    again = Client.open(state, PASSPHRASE)
    try:
        await again.connect()
        got = await texts(again, 2)
        await again.send_direct(str(bob.pk), f"{marker} 5")
        await again.send_group(group, f"{marker} 6")
    finally:
        await again.close()

    # Then she reads what came meanwhile and writes on with the sessions she had: no new
    # one-time key was claimed, the group session is the one bob already holds
    assert [r.text for r in got] == [f"{marker} 3", f"{marker} 4"]
    assert again.stats.sessions_from_one_time_key == 0
    assert [r.text for r in await texts(b1, 2)] == [f"{marker} 5", f"{marker} 6"]


async def test_a_removed_member_holds_no_key_to_what_the_group_says_next(org_a, make_client):
    # Given a group of alice, bob and carol where alice and bob have both written
    alice, bob, carol = (make_user(org_a) for _ in range(3))
    a1 = await make_client(org_a, alice)
    b1 = await make_client(org_a, bob)
    c1 = await make_client(org_a, carol)
    await drained(a1, b1, c1)
    marker = uuid.uuid4().hex
    group = await a1.create_group([str(bob.pk), str(carol.pk)])
    await a1.send_group(group, f"{marker} 1")
    await b1.send_group(group, f"{marker} 2")
    assert [r.text for r in await texts(c1, 2)] == [f"{marker} 1", f"{marker} 2"]
    await texts(a1, 1)
    await texts(b1, 1)
    sessions = {
        a1: a1.crypto.outbound_group(group)[0].session_id,
        b1: b1.crypto.outbound_group(group)[0].session_id,
    }

    # When alice removes carol, and both write again once they saw the event
    await a1.api.remove_member(group, str(carol.pk))
    for client in (a1, b1, c1):
        (event,) = await client.receive(1)
        assert event.kind == "event" and event.event["action"] == "member.removed"
    await a1.send_group(group, f"{marker} 3")
    await b1.send_group(group, f"{marker} 4")

    # Then each uses a new Megolm session, shared with the remaining devices only
    for client in (a1, b1):
        assert client.crypto.outbound_group(group)[0].session_id != sessions[client]
        assert client.stats.group_sessions_rotated == 1
    assert [r.text for r in await texts(b1, 1)] == [f"{marker} 3"]
    assert [r.text for r in await texts(a1, 1)] == [f"{marker} 4"]
    await asyncio.sleep(0.5)
    assert c1.inbox.empty()


async def test_a_sender_unaware_of_a_removal_gets_a_409_extra_and_rotates(org_a, make_client):
    # Given bob (offline, HTTP only) shared his group session with carol
    alice, bob, carol = (make_user(org_a) for _ in range(3))
    a1 = await make_client(org_a, alice)
    b1 = await make_client(org_a, bob, connect=False)
    c1 = await make_client(org_a, carol)
    await drained(a1, c1)
    marker = uuid.uuid4().hex
    group = await a1.create_group([str(bob.pk), str(carol.pk)])
    await b1.send_group(group, f"{marker} 1")
    await texts(a1, 1)
    await texts(c1, 1)

    # When alice removes carol and bob, who has not seen the event, writes again
    await a1.api.remove_member(group, str(carol.pk))
    await b1.send_group(group, f"{marker} 2")

    # Then the 409 named carol's device as extra: bob retried without it, under a new
    # session; carol's device is still known as hers (for their other conversations)
    assert b1.stats.retries_409 == 1
    assert b1.stats.group_sessions_rotated == 1
    assert c1.device_id in b1.store.data["directory"][str(carol.pk)]
    got = await a1.receive(2)
    assert [(r.kind, r.text) for r in got] == [("event", None), ("text", f"{marker} 2")]
    (event,) = await c1.receive(1)
    assert event.kind == "event"
    await asyncio.sleep(0.5)
    assert c1.inbox.empty()
