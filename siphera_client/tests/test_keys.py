"""Prekeys through the reference client: the signed prekey as last resort, top-ups."""

from __future__ import annotations

import asyncio
import uuid

from siphera_client.tests.helpers import drained, texts
from tests.fixtures import make_user


async def test_a_device_without_one_time_keys_still_decrypts_through_its_signed_prekey(
    org_a, make_client
):
    # Given dave's only device published a single one-time prekey and is offline
    dave, erin, frank = (make_user(org_a) for _ in range(3))
    d1 = await make_client(org_a, dave, connect=False, one_time_keys=1, auto_top_up=False)
    e1 = await make_client(org_a, erin)
    f1 = await make_client(org_a, frank)
    marker = uuid.uuid4().hex

    # When erin's session takes it, and frank finds none left
    await e1.send_direct(str(dave.pk), f"{marker} from erin")
    assert e1.stats.sessions_from_one_time_key == 1
    assert (await d1.api.key_count())["one_time"] == 0
    await f1.send_direct(str(dave.pk), f"{marker} from frank")
    assert f1.stats.sessions_from_signed_prekey == 1
    assert f1.stats.sessions_from_one_time_key == 0

    # Then dave decrypts both once online, and frank's session keeps working both ways
    await d1.connect()
    got = await texts(d1, 2)
    assert [r.text for r in got] == [f"{marker} from erin", f"{marker} from frank"]
    await d1.send_direct(str(frank.pk), f"{marker} reply")
    assert [r.text for r in await texts(f1, 1)] == [f"{marker} reply"]
    await f1.send_direct(str(dave.pk), f"{marker} again")
    assert [r.text for r in await texts(d1, 1)] == [f"{marker} again"]


async def test_the_client_tops_up_its_one_time_keys_when_the_server_says_they_run_low(
    org_a, make_client
):
    # Given a connected device holding the full batch of one-time prekeys
    gina, hank = make_user(org_a), make_user(org_a)
    g1 = await make_client(org_a, gina)
    h1 = await make_client(org_a, hank)
    await drained(g1, h1)
    target = g1.crypto.one_time_target
    assert (await g1.api.key_count())["one_time"] == target

    # When others claim until fewer than the server's low mark (10) are left
    for _ in range(target - 9):
        await h1.api.claim_bundles(str(gina.pk))

    # Then the `keys.low` frame makes the client upload a new batch
    for _ in range(100):
        if (await g1.api.key_count())["one_time"] >= target:
            break
        await asyncio.sleep(0.2)
    assert (await g1.api.key_count())["one_time"] == target
    assert g1.stats.keys_uploaded == target - 9


async def test_keys_generated_before_an_upload_failed_are_offered_again_not_lost(
    org_a, make_client
):
    # Given a device whose one-time keys were all claimed, and an upload cut short
    ivan, judy = make_user(org_a), make_user(org_a)
    i1 = await make_client(org_a, ivan, connect=False, one_time_keys=3, auto_top_up=False)
    j1 = await make_client(org_a, judy, connect=False)
    for _ in range(3):
        await j1.api.claim_bundles(str(ivan.pk))
    pending = i1.crypto.new_one_time_prekeys(5)  # generated, never uploaded

    # When the client tops up
    uploaded = await i1.top_up_keys()

    # Then the pending keys are part of the upload (ids the server did not hold yet)
    assert uploaded["one_time"] == i1.crypto.one_time_target
    assert (await i1.api.key_count())["one_time"] == i1.crypto.one_time_target
    assert not i1.crypto.account.one_time_keys  # all marked published
    assert len(pending) == 5
