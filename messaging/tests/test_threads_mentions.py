"""Threads, unread and mention counts, and the `mention` frame: all from metadata (seqs,
senders, mentions), never from the encrypted bodies."""

from __future__ import annotations

import threading
import uuid

from messaging.models import Member, Message
from siphera.tenancy import in_tenant
from tests.ws import authed_socket, recv, recv_type, send

from .helpers import b64, send_body, start_conversation


def _send(session, cid, **extra) -> dict:
    response = send_body(session, cid, **extra)
    assert response.status_code == 201, response.text
    return response.json()


def _state(session, cid) -> dict:
    response = session.api.get(f"/api/v1/conversations/{cid}/read")
    assert response.status_code == 200, response.text
    return response.json()


def _mark_read(session, cid, up_to_seq):
    return session.api.post(f"/api/v1/conversations/{cid}/read", json={"up_to_seq": up_to_seq})


def _thread(session, cid, root, **params):
    return session.api.get(
        f"/api/v1/conversations/{cid}/messages", params={"thread": root, **params}
    )


# --- threads ------------------------------------------------------------------------------


def test_a_thread_lists_its_root_then_its_replies_with_paging(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob, kind="group")["id"]
    root = _send(alice, cid)
    _send(bob, cid)  # outside the thread
    other_root = _send(bob, cid)
    replies = [_send(bob if i % 2 else alice, cid, thread=root["id"]) for i in range(4)]
    _send(alice, cid, thread=other_root["id"])

    listed = _thread(bob, cid, root["id"])
    assert listed.status_code == 200
    assert [m["id"] for m in listed.json()] == [root["id"], *[r["id"] for r in replies]]
    assert all(m["thread"] == root["id"] for m in listed.json()[1:])
    assert all(m["envelope"] is None for m in listed.json())

    first = _thread(bob, cid, root["id"], limit=2).json()
    assert [m["id"] for m in first] == [root["id"], replies[0]["id"]]
    rest = _thread(bob, cid, root["id"], after_seq=first[-1]["seq"], limit=500).json()
    assert [m["id"] for m in rest] == [r["id"] for r in replies[1:]]
    # A reply's thread of its own (no replies) lists just that message.
    assert [m["id"] for m in _thread(bob, cid, replies[0]["id"]).json()] == [replies[0]["id"]]


def test_a_thread_root_must_be_a_message_of_the_conversation(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob, kind="group")["id"]
    elsewhere = start_conversation(alice, bob)["id"]
    foreign_root = _send(alice, elsewhere)["id"]
    for root in (foreign_root, str(uuid.uuid4()), "not-a-uuid", ""):
        response = _thread(alice, cid, root)
        assert response.status_code == 404, (root, response.text)
        assert response.json()["error"]["code"] == "not_found"


def test_only_members_list_a_thread(org_a, org_b, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    outsider, foreign = new_session(org_a), new_session(org_b)
    cid = start_conversation(alice, bob, kind="group")["id"]
    root = _send(alice, cid)["id"]
    for session in (outsider, foreign):
        assert _thread(session, cid, root).status_code == 404


# --- unread counts ------------------------------------------------------------------------


def test_unread_counts_others_messages_and_reading_moves_them(org_a, new_session):
    alice, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob, kind="group")["id"]
    sent = [_send(alice, cid) for _ in range(3)]
    _send(bob, cid)  # bob's own: never unread for him
    # Neither events nor messages that refer to another (edits, reactions) count.
    alice.api.post(f"/api/v1/conversations/{cid}/members", json={"user_ids": [str(carol.user.pk)]})
    _send(alice, cid, refers_to=sent[0]["id"])

    listed = {c["id"]: c for c in bob.api.get("/api/v1/conversations").json()}[cid]
    assert (listed["unread_count"], listed["mention_count"], listed["read_seq"]) == (3, 0, 0)
    assert bob.api.get(f"/api/v1/conversations/{cid}").json()["unread_count"] == 3
    assert _state(alice, cid)["unread_count"] == 1  # bob's message
    # carol joined after all of it: nothing is unread for her.
    assert _state(carol, cid)["unread_count"] == 0

    moved = _mark_read(bob, cid, sent[1]["seq"])
    assert moved.status_code == 200
    assert moved.json() == {
        "conversation": cid,
        "last_seq": 6,
        "read_seq": sent[1]["seq"],
        "unread_count": 1,
        "mention_count": 0,
    }
    # Never back, and never past the last seq.
    assert _mark_read(bob, cid, 1).json()["read_seq"] == sent[1]["seq"]
    assert _mark_read(bob, cid, 2**63 - 1).json()["read_seq"] == 6
    _send(alice, cid)
    assert _state(bob, cid)["unread_count"] == 1  # a later message is unread again
    member = in_tenant(org_a, Member.objects.get, conversation_id=cid, user=bob.user)
    assert (member.read_seq, member.delivered_seq) == (6, 6)


def test_mark_read_refuses_bad_markers_and_strangers(org_a, org_b, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    outsider, foreign = new_session(org_a), new_session(org_b)
    cid = start_conversation(alice, bob)["id"]
    for bad in (-1, 2**63, "3x", None, 1.5):
        response = bob.api.post(f"/api/v1/conversations/{cid}/read", json={"up_to_seq": bad})
        assert response.status_code == 400, (bad, response.text)
    for session in (outsider, foreign):
        assert _mark_read(session, cid, 1).status_code == 404
        assert session.api.get(f"/api/v1/conversations/{cid}/read").status_code == 404


def test_unread_counts_stop_at_the_cap(org_a, new_session):
    from messaging.services.unread import UNREAD_COUNT_CAP

    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    for _ in range(UNREAD_COUNT_CAP + 3):
        _send(alice, cid)
    assert _state(bob, cid)["unread_count"] == UNREAD_COUNT_CAP
    assert _mark_read(bob, cid, 10).json()["unread_count"] == UNREAD_COUNT_CAP - 7


def test_an_unread_count_reads_a_bounded_window_after_the_marker(org_a, new_session):
    # Given a member who sent 30,000 messages without marking the conversation read (a
    # bot, an API client), then three from someone else: when they list it, the count
    # walks at most UNREAD_SCAN_MAX messages after their marker, not all 30,000 of theirs.
    from django.db import connection, transaction

    from messaging.services.unread import UNREAD_SCAN_MAX, read_states
    from orgs.accounts.models import User

    bot, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(bot, bob)["id"]
    own = 3 * UNREAD_SCAN_MAX

    def fill_and_count():
        with connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO messaging_message (id, conversation_id, seq, kind, sender_id,"
                " sender_device_id, client_id, body, mentions, attachments, created_at)"
                " SELECT gen_random_uuid(), %s, g, 'message', %s, 1, gen_random_uuid(),"
                " '\\x00', '[]', '[]', now() FROM generate_series(1, %s) g",
                [cid, bot.user.pk, own],
            )
            cursor.execute(
                "UPDATE messaging_conversation SET last_seq = %s WHERE id = %s", [own, cid]
            )
        with transaction.atomic():
            before = _message_rows_read()
            state = read_states(User.objects.get(pk=bot.user.pk), [cid])[cid]
            return state, _message_rows_read() - before

    state, rows = in_tenant(org_a, fill_and_count)
    assert (state.read_seq, state.last_seq, state.unread_count) == (0, own, 0)
    assert rows <= UNREAD_SCAN_MAX + 10, rows
    # Sends and counts work as before on top of it: the window follows the marker.
    for _ in range(3):
        _send(bob, cid)
    assert _mark_read(bot, cid, own).json()["unread_count"] == 3
    assert _state(bob, cid)["unread_count"] == 100  # the bot's 30,000: "100 or more"


def _message_rows_read() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_xact_user_tables WHERE relid = 'messaging_message'::regclass"
        )
        return cursor.fetchone()[0]


# --- mentions -----------------------------------------------------------------------------


def test_mention_counts_follow_sends_and_reads(org_a, new_session):
    alice, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob, carol, kind="group")["id"]
    bob_id, carol_id = str(bob.user.pk), str(carol.user.pk)
    first = _send(alice, cid, mentions=[bob_id])
    _send(alice, cid)
    second = _send(alice, cid, mentions=[bob_id, carol_id, bob_id])
    _send(bob, cid, mentions=[bob_id])  # mentioning yourself counts for nobody

    assert _state(bob, cid)["mention_count"] == 2
    assert _state(carol, cid)["mention_count"] == 1
    assert _state(alice, cid)["mention_count"] == 0

    assert _mark_read(bob, cid, first["seq"]).json()["mention_count"] == 1
    assert _mark_read(bob, cid, second["seq"] - 1).json()["mention_count"] == 1
    assert _mark_read(bob, cid, second["seq"]).json()["mention_count"] == 0
    assert _state(carol, cid)["mention_count"] == 1  # carol's own marker did not move
    listed = {c["id"]: c for c in carol.api.get("/api/v1/conversations").json()}[cid]
    assert listed["mention_count"] == 1


async def test_an_edit_or_reaction_that_mentions_counts_and_tells_no_one(
    server, org_a, new_session
):
    # Unread counts skip messages that refer to another; mentions skip them too, so a
    # badge never says "mentioned" where nothing is unread.
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob, kind="group")["id"]
    bob_id = str(bob.user.pk)
    root = _send(alice, cid)
    assert _mark_read(bob, cid, root["seq"]).json()["mention_count"] == 0
    async with await authed_socket(server, bob, live=True) as ws:
        edit = _send(alice, cid, refers_to=root["id"], mentions=[bob_id])
        reaction = _send(alice, cid, refers_to=root["id"], mentions=[bob_id])
        # bob gets both messages, with their mentions for display, and no mention frame
        await send(ws, {"type": "ping", "ref": "p"})
        frames = []
        while (frame := await recv(ws, timeout=15))["type"] != "pong":
            frames.append(frame)
        assert [f["type"] for f in frames] == ["message", "message"]
        assert [f["mentions"] for f in frames] == [[bob_id], [bob_id]]
    state = _state(bob, cid)
    assert (state["unread_count"], state["mention_count"]) == (0, 0)
    # A real mention after them counts; reading past the edit alone lowers nothing
    mention = _send(alice, cid, mentions=[bob_id])
    assert _state(bob, cid)["mention_count"] == 1
    assert _mark_read(bob, cid, reaction["seq"]).json()["mention_count"] == 1
    assert edit["seq"] < reaction["seq"] < mention["seq"]
    assert _mark_read(bob, cid, mention["seq"]).json()["mention_count"] == 0


def test_a_user_mentioned_a_thousand_times_is_one_mention_stored_once(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob, kind="group")["id"]
    bob_id = str(bob.user.pk)
    sent = _send(alice, cid, mentions=[bob_id.upper(), *[bob_id] * 998, str(alice.user.pk)])
    assert _state(bob, cid)["mention_count"] == 1
    stored = in_tenant(org_a, Message.objects.get, pk=sent["id"]).mentions
    assert stored == [bob_id, str(alice.user.pk)]
    history = bob.api.get(f"/api/v1/conversations/{cid}/messages").json()
    assert history[-1]["mentions"] == [bob_id, str(alice.user.pk)]


def test_mentioning_a_non_member_is_refused_and_stores_nothing(org_a, org_b, new_session):
    alice, bob, stranger = new_session(org_a), new_session(org_a), new_session(org_a)
    foreign = new_session(org_b)
    cid = start_conversation(alice, bob)["id"]
    for user_id in (str(stranger.user.pk), str(foreign.user.pk)):
        refused = send_body(alice, cid, mentions=[user_id])
        assert refused.status_code == 400
        assert refused.json()["error"]["code"] == "invalid_mention"
    assert in_tenant(org_a, Message.objects.filter(conversation_id=cid).count) == 0
    assert stranger.api.get(f"/api/v1/conversations/{cid}/read").status_code == 404
    assert _state(bob, cid)["mention_count"] == 0


def test_concurrent_mentions_and_reads_keep_the_count_exact(org_a, new_session):
    # Given sends mentioning bob while bob keeps marking read, when everything settled,
    # then bob's count is exactly the mentions after his marker (none lost, none twice).
    alice, bob = new_session(org_a), new_session(org_a)
    carol = new_session(org_a)
    cid = start_conversation(alice, bob, carol, kind="group")["id"]
    bob_id = str(bob.user.pk)
    stop = threading.Event()

    def sender(session):
        for _ in range(15):
            _send(session, cid, mentions=[bob_id])

    def reader():
        while not stop.is_set():
            last = bob.api.get(f"/api/v1/conversations/{cid}").json()["last_seq"]
            _mark_read(bob, cid, max(last - 2, 0))

    threads = [threading.Thread(target=sender, args=(s,)) for s in (alice, carol)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    watcher.join()

    state = _state(bob, cid)
    expected = in_tenant(
        org_a,
        lambda: Message.objects.filter(
            conversation_id=cid, seq__gt=state["read_seq"], mentions__contains=[bob_id]
        ).count(),
    )
    assert state["mention_count"] == expected
    assert _mark_read(bob, cid, state["last_seq"]).json()["mention_count"] == 0


async def test_a_mention_frame_reaches_the_mentioned_users_sockets_only(server, org_a, new_session):
    alice, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    bob_phone = new_session(org_a, bob.user, name="phone")
    cid = start_conversation(alice, bob, carol, kind="group")["id"]
    root = _send(alice, cid)
    async with (
        await authed_socket(server, bob, live=True) as bob_ws,
        await authed_socket(server, bob_phone, live=True) as phone_ws,
        await authed_socket(server, carol, live=True) as carol_ws,
        await authed_socket(server, alice, live=True) as alice_ws,
    ):
        reply = _send(alice, cid, thread=root["id"], mentions=[str(bob.user.pk)])
        for ws in (bob_ws, phone_ws):
            frame = await recv_type(ws, "mention", timeout=15)
            assert frame == {
                "type": "mention",
                "conversation": cid,
                "message": reply["id"],
                "seq": reply["seq"],
                "ts": reply["ts"],
                "sender": {"user_id": str(alice.user.pk), "device_id": alice.device_id},
                "thread": root["id"],
            }
        # carol got the message but no mention; alice (the sender) neither.
        for ws in (carol_ws, alice_ws):
            await send(ws, {"type": "ping", "ref": "p"})
            frames = []
            while (frame := await recv(ws, timeout=15))["type"] != "pong":
                frames.append(frame["type"])
            assert "mention" not in frames


async def test_a_read_receipt_frame_moves_the_counts(server, org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob, kind="group")["id"]
    sent = [_send(alice, cid, mentions=[str(bob.user.pk)]) for _ in range(3)]
    async with await authed_socket(server, bob, live=True) as ws:
        await send(
            ws,
            {"type": "receipt", "conversation": cid, "kind": "read", "up_to_seq": sent[1]["seq"]},
        )
        await send(ws, {"type": "ping", "ref": "r"})
        await recv_type(ws, "pong", timeout=15)
    assert (lambda s: (s["unread_count"], s["mention_count"]))(_state(bob, cid)) == (1, 1)


async def test_a_mention_sent_over_the_socket_notifies_too(server, org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    async with (
        await authed_socket(server, alice, live=True) as alice_ws,
        await authed_socket(server, bob, live=True) as bob_ws,
    ):
        await send(
            alice_ws,
            {
                "type": "send",
                "ref": "s1",
                "conversation": cid,
                "client_id": str(uuid.uuid4()),
                "body": b64(b"ciphertext"),
                "mentions": [str(bob.user.pk)],
            },
        )
        sent = await recv_type(alice_ws, "sent", timeout=15)
        mention = await recv_type(bob_ws, "mention", timeout=15)
        assert mention["message"] == sent["id"] and "body" not in mention
    assert _state(bob, cid)["mention_count"] == 1
