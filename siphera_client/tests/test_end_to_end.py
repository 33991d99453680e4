"""Acceptance: two users with two devices each (and a third user) exchange 1:1 and group
messages through the reference client against the real server; every device decrypts
every message it should, and the plaintext is nowhere in the database or the server log."""

from __future__ import annotations

import base64
import uuid

from siphera_client.tests.helpers import (
    assert_nowhere,
    base64_forms,
    drained,
    pg_dump,
    texts,
)
from tests.fixtures import make_user
from tests.fixtures import test_database_url as database_url


async def test_every_device_decrypts_and_the_server_never_sees_the_plaintext(
    server, org_a, make_client
):
    # Given alice and bob with two devices each, carol with one, all online
    marker = f"siphera-marker-{uuid.uuid4().hex}"
    alice, bob, carol = (make_user(org_a) for _ in range(3))
    a1 = await make_client(org_a, alice, "alice-laptop")
    a2 = await make_client(org_a, alice, "alice-phone")
    b1 = await make_client(org_a, bob, "bob-laptop")
    b2 = await make_client(org_a, bob, "bob-phone")
    c1 = await make_client(org_a, carol, "carol-laptop")
    everyone = [a1, a2, b1, b2, c1]
    await drained(*everyone)
    expected: dict = {client: [] for client in everyone}
    counter = iter(range(1, 1000))

    async def send(sender, recipients, how, target):
        text = f"{marker} #{next(counter)} from {sender.device_id}@{sender.user_id}"
        await how(target, text)
        for client in recipients:
            expected[client].append((sender.user_id, sender.device_id, text))

    # When they talk 1:1 both ways (each message reaches the other user's devices and the
    # sender's other device, never the sending device)...
    await send(a1, [b1, b2, a2], a1.send_direct, str(bob.pk))
    await send(b2, [a1, a2, b1], b2.send_direct, str(alice.pk))
    await send(a2, [b1, b2, a1], a2.send_direct, str(bob.pk))
    await send(b1, [a1, a2, b2], b1.send_direct, str(alice.pk))
    # ... and in a group of the three users (Megolm body, keys shared over Olm)
    group = await a1.create_group([str(bob.pk), str(carol.pk)])
    await send(a1, [a2, b1, b2, c1], a1.send_group, group)
    await send(b1, [a1, a2, b2, c1], b1.send_group, group)
    await send(c1, [a1, a2, b1, b2], c1.send_group, group)
    await send(a1, [a2, b1, b2, c1], a1.send_group, group)  # session already shared
    await send(b2, [a1, a2, b1, c1], b2.send_group, group)

    # Then every device decrypted exactly the messages addressed to it, in order
    for client, wanted in expected.items():
        got = await texts(client, len(wanted))
        assert [(r.sender_user, r.sender_device, r.text) for r in got] == wanted, client.device_id

    assert a1.stats.undecryptable == b1.stats.undecryptable == c1.stats.undecryptable == 0

    # And the marker is nowhere on the server: not in a pg_dump, not in its logs
    dump = pg_dump(database_url())
    assert_nowhere(marker, dump, server.log_text().encode())
    # (the check would see it: a control with the marker planted in base64)
    planted = base64.b64encode(b"xy" + marker.encode() + b"z")
    assert any(form in planted for form in base64_forms(marker.encode()))


async def test_a_device_without_a_socket_reads_its_queue_over_rest(org_a, make_client):
    # Given bob's device is offline while alice writes 1:1 and in a group
    alice, bob = make_user(org_a), make_user(org_a)
    a1 = await make_client(org_a, alice)
    b1 = await make_client(org_a, bob, connect=False)
    marker = uuid.uuid4().hex
    await a1.send_direct(str(bob.pk), f"{marker} 1")
    group = await a1.create_group([str(bob.pk)])
    await a1.send_group(group, f"{marker} 2")

    # When it fetches its queue over HTTP (GET /api/v1/messages, POST .../ack)
    got = await b1.fetch_queued()

    # Then both decrypt and the queue is empty afterwards
    assert [(r.kind, r.text) for r in got] == [("text", f"{marker} 1"), ("text", f"{marker} 2")]
    assert await b1.api.queued_messages() == []
