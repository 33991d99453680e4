"""The reference client's raw calls for group administration, threads and read state,
against the real server."""

from __future__ import annotations

import os
import uuid

import pytest

from siphera_client.api import ApiError, b64
from tests.fixtures import make_user


async def test_group_admin_threads_and_counts_through_the_client_api(org_a, make_client):
    alice_user, bob_user = make_user(org_a), make_user(org_a)
    alice = await make_client(org_a, alice_user, connect=False)
    bob = await make_client(org_a, bob_user, connect=False)
    group = await alice.api.create_conversation("group", [bob.user_id])
    cid = group["id"]

    title = os.urandom(32)  # what the app encrypted; the server keeps it opaque
    renamed = await alice.api.update_conversation(cid, title=title, topic=None)
    assert renamed["title"] == b64(title) and renamed["topic"] is None
    with pytest.raises(ApiError) as refused:
        await alice.api.remove_member(cid, alice.user_id)
    assert (refused.value.status, refused.value.code) == (409, "last_admin")
    promoted = await alice.api.set_member_role(cid, bob.user_id, "admin")
    assert {m["user_id"]: m["role"] for m in promoted["members"]}[bob.user_id] == "admin"

    root = await alice.api.send_message(
        cid, client_id=str(uuid.uuid4()), body=b"root", envelopes=None
    )
    reply = await alice.api.send_message(
        cid,
        client_id=str(uuid.uuid4()),
        body=b"reply",
        envelopes=None,
        thread=root["id"],
        mentions=[bob.user_id],
    )
    thread = await bob.api.history(cid, thread=root["id"])
    assert [m["id"] for m in thread] == [root["id"], reply["id"]]
    state = await bob.api.read_state(cid)
    assert (state["unread_count"], state["mention_count"]) == (2, 1)
    state = await bob.api.mark_read(cid, reply["seq"])
    assert (state["unread_count"], state["mention_count"]) == (0, 0)
