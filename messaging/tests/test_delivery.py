"""Sending and delivery: idempotency, device coverage (409/410), limits, durable queues,
ordered drain before live frames, acks, redelivery, the REST fallback."""

import asyncio
import uuid

from django.db import connection

from messaging.models import Message, QueuedMessage
from messaging.services import delivery
from siphera.tenancy import in_tenant
from tests.ws import authed_socket, recv, recv_type, send

from .helpers import b64, envelope, send_body, start_conversation


def _queued(org, session) -> int:
    return in_tenant(
        org,
        QueuedMessage.objects.filter(
            device__user=session.user, device__device_id=session.device_id
        ).count,
    )


def _stored(org, conversation_id) -> int:
    return in_tenant(org, Message.objects.filter(conversation_id=conversation_id).count)


def test_a_message_gets_a_seq_and_lands_in_history_and_the_recipients_queue(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    first = send_body(alice, cid, b"ciphertext-1")
    second = send_body(alice, cid, b"ciphertext-2")
    assert first.status_code == second.status_code == 201
    assert (first.json()["seq"], second.json()["seq"]) == (1, 2)
    assert set(first.json()) == {"id", "seq", "ts"}
    assert uuid.UUID(first.json()["id"]).version == 7  # time-ordered ids (siphera.ids)

    history = bob.api.get(f"/api/v1/conversations/{cid}/messages?after_seq=1").json()
    assert [m["body"] for m in history] == [b64(b"ciphertext-2")]
    queued = bob.api.get("/api/v1/messages").json()
    assert [m["seq"] for m in queued] == [1, 2]
    assert queued[0]["sender"] == {"user_id": str(alice.user.pk), "device_id": alice.device_id}
    assert _queued(org_a, alice) == 0  # the sending device gets nothing back


def test_a_retry_with_the_same_client_id_returns_the_same_answer(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    payload = {"client_id": str(uuid.uuid4()), "body": b64(b"once")}
    answers = [
        alice.api.post(f"/api/v1/conversations/{cid}/messages", json=payload) for _ in range(3)
    ]
    assert {a.status_code for a in answers} == {201}
    assert len({a.text for a in answers}) == 1
    assert _stored(org_a, cid) == 1 and _queued(org_a, bob) == 1


def test_envelopes_must_cover_exactly_the_current_devices(org_a, new_session):
    alice = new_session(org_a)
    alice_phone = new_session(org_a, alice.user, name="phone")
    bob = new_session(org_a)
    bob_tablet = new_session(org_a, bob.user, name="tablet")
    cid = start_conversation(alice, bob)["id"]
    url = f"/api/v1/conversations/{cid}/messages"

    def post(envelopes):
        return alice.api.post(url, json={"client_id": str(uuid.uuid4()), "envelopes": envelopes})

    missing = post([envelope(bob), envelope(alice_phone)])
    assert missing.status_code == 409
    assert missing.json()["missing"] == [
        {"user_id": str(bob.user.pk), "device_id": bob_tablet.device_id}
    ]
    assert missing.json()["extra"] == []

    extra = post(
        [
            envelope(bob),
            envelope(bob_tablet),
            envelope(alice_phone),
            {**envelope(bob), "device_id": 99},
        ]
    )
    assert extra.status_code == 409
    assert extra.json()["extra"] == [{"user_id": str(bob.user.pk), "device_id": 99}]
    assert extra.json()["missing"] == []

    # the sending device itself is not a target
    self_addressed = post(
        [envelope(bob), envelope(bob_tablet), envelope(alice_phone), envelope(alice)]
    )
    assert self_addressed.status_code == 409
    assert self_addressed.json()["extra"] == [
        {"user_id": str(alice.user.pk), "device_id": alice.device_id}
    ]

    bob.api.delete(f"/api/v1/devices/{bob_tablet.device_id}")
    stale = post([envelope(bob), envelope(bob_tablet), envelope(alice_phone)])
    assert stale.status_code == 410
    assert stale.json()["stale"] == [
        {"user_id": str(bob.user.pk), "device_id": bob_tablet.device_id}
    ]
    assert stale.json()["error"]["code"] == "stale_devices"

    assert _stored(org_a, cid) == 0
    assert _queued(org_a, bob) == 0 and _queued(org_a, alice_phone) == 0

    exact = post([envelope(bob, body=b"for-bob"), envelope(alice_phone, body=b"for-phone")])
    assert exact.status_code == 201
    frames = bob.api.get("/api/v1/messages").json()
    assert frames[0]["envelope"] == {"type": 1, "body": b64(b"for-bob")}
    phone_frames = alice_phone.api.get("/api/v1/messages").json()
    assert phone_frames[0]["envelope"]["body"] == b64(b"for-phone")


def test_an_envelope_over_96_kib_is_413_and_nothing_is_stored(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    big = alice.api.post(
        f"/api/v1/conversations/{cid}/messages",
        json={
            "client_id": str(uuid.uuid4()),
            "envelopes": [envelope(bob, body=b"x" * (96 * 1024 + 1))],
        },
    )
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "envelope_too_large"
    assert _stored(org_a, cid) == 0


def test_bad_message_input_gets_clear_400s(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    url = f"/api/v1/conversations/{cid}/messages"
    cases = {
        "empty_message": {"client_id": str(uuid.uuid4())},
        "invalid_request": {"client_id": "not-a-uuid", "body": b64(b"x")},
        "unknown_reference": {
            "client_id": str(uuid.uuid4()),
            "body": b64(b"x"),
            "thread": str(uuid.uuid4()),
        },
        "invalid_mention": {
            "client_id": str(uuid.uuid4()),
            "body": b64(b"x"),
            "mentions": [str(uuid.uuid4())],
        },
    }
    for code, payload in cases.items():
        response = alice.api.post(url, json=payload)
        assert response.status_code == 400, (code, response.text)
        assert response.json()["error"]["code"] == code
    assert _stored(org_a, cid) == 0
    assert send_body(alice, uuid.uuid4()).status_code == 404


ANY_ID = str(uuid.uuid4())  # nothing is stored, so every case may use it
MALFORMED_SENDS = [
    # (a send, the field its 400 names)
    ({}, "client_id"),
    ({"client_id": 7, "body": b64(b"x")}, "client_id"),
    ({"client_id": ANY_ID, "body": "not base64!"}, "body"),
    ({"client_id": ANY_ID, "body": b64(b"x"), "mentions": "everyone"}, "mentions"),
    ({"client_id": ANY_ID, "body": b64(b"x"), "mentions": ["not-a-uuid"]}, "mentions[0]"),
    (
        {"client_id": ANY_ID, "body": b64(b"x"), "attachments": [str(uuid.uuid4())] * 33},
        "attachments",
    ),
    ({"client_id": ANY_ID, "body": b64(b"x"), "thread": "t"}, "thread"),
    ({"client_id": ANY_ID, "envelopes": {"user_id": "x"}}, "envelopes"),
    ({"client_id": ANY_ID, "envelopes": ["x"]}, "envelopes[0]"),
    (
        {"client_id": ANY_ID, "envelopes": [{"user_id": "u", "device_id": 1, "type": 1}]},
        "envelopes[0].body",
    ),
    (
        {
            "client_id": ANY_ID,
            "envelopes": [{"user_id": "", "device_id": 1, "type": 1, "body": ""}],
        },
        "envelopes[0].user_id",
    ),
    (
        {
            "client_id": ANY_ID,
            "envelopes": [{"user_id": "u", "device_id": 0, "type": 1, "body": ""}],
        },
        "envelopes[0].device_id",
    ),
    (
        {
            "client_id": ANY_ID,
            "envelopes": [{"user_id": "u", "device_id": True, "type": 1, "body": ""}],
        },
        "envelopes[0].device_id",
    ),
    (
        {
            "client_id": ANY_ID,
            "envelopes": [{"user_id": "u", "device_id": 1, "type": 256, "body": ""}],
        },
        "envelopes[0].type",
    ),
]


def test_a_malformed_send_is_a_400_naming_the_field_and_stores_nothing(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    url = f"/api/v1/conversations/{cid}/messages"
    for fields, field in MALFORMED_SENDS:
        response = alice.api.post(url, json=fields)
        assert response.status_code == 400, (fields, response.text)
        error = response.json()
        assert error["error"]["code"] == "invalid_request"
        assert list(error["fields"]) == [field], (fields, error)
        assert error["error"]["message"].startswith(f"{field}: ")
    assert alice.api.post(url, json=["not", "an", "object"]).status_code == 400
    assert _stored(org_a, cid) == 0 and _queued(org_a, bob) == 0


async def test_a_malformed_send_frame_is_an_error_frame_naming_the_field(
    server, org_a, new_session
):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    async with await authed_socket(server, alice) as ws:
        await recv_type(ws, "queue.empty")
        for i, (fields, field) in enumerate(MALFORMED_SENDS):
            await send(ws, {"type": "send", "ref": f"m{i}", "conversation": cid} | fields)
            error = await recv_type(ws, "error")
            assert error["code"] == "invalid_request", (fields, error)
            assert error["message"].startswith(f"{field}: "), (fields, error)
        # the socket still works
        await send(ws, _send_frame(cid, "ok", body=b64(b"fine")))
        assert (await recv_type(ws, "sent"))["seq"] == 1
    assert _queued(org_a, bob) == 1


def test_threads_and_references_point_into_the_same_conversation(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    root = send_body(alice, cid).json()["id"]
    reply = send_body(bob, cid, thread=root, mentions=[str(alice.user.pk)])
    edit = send_body(alice, cid, refers_to=root)
    assert reply.status_code == edit.status_code == 201
    frames = {m["id"]: m for m in alice.api.get("/api/v1/messages").json()}
    assert frames[reply.json()["id"]]["thread"] == root
    assert frames[reply.json()["id"]]["mentions"] == [str(alice.user.pk)]


def test_a_send_is_refused_whole_for_a_foreign_reference_a_stranger_or_a_non_member(
    org_a, new_session
):
    # A send is first tried as one statement that stores only if every rule holds; each
    # refusal here must come back as the locked path's exact answer, with nothing stored.
    alice, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    elsewhere = send_body(alice, start_conversation(alice, carol)["id"]).json()["id"]

    foreign = send_body(alice, cid, thread=elsewhere)
    assert foreign.status_code == 400
    assert foreign.json()["error"]["code"] == "unknown_reference"
    stranger = send_body(alice, cid, mentions=[str(bob.user.pk), str(carol.user.pk)])
    assert stranger.status_code == 400
    assert stranger.json()["not_members"] == [str(carol.user.pk)]
    assert send_body(carol, cid).status_code == 404
    assert _stored(org_a, cid) == 0 and _queued(org_a, bob) == 0

    root = send_body(alice, cid).json()["id"]
    both = send_body(alice, cid, thread=root, refers_to=root, mentions=[str(bob.user.pk)] * 2)
    assert both.status_code == 201 and both.json()["seq"] == 2
    assert _stored(org_a, cid) == 2 and _queued(org_a, bob) == 2


def test_concurrent_sends_to_one_conversation_take_every_seq_once(org_a, new_session):
    from concurrent.futures import ThreadPoolExecutor

    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: send_body(alice, cid), range(40)))
    assert [a.status_code for a in answers] == [201] * 40
    assert sorted(a.json()["seq"] for a in answers) == list(range(1, 41))
    frames = bob.api.get("/api/v1/messages", params={"limit": 100}).json()
    assert [f["seq"] for f in frames] == list(range(1, 41))  # queue order is seq order


async def test_a_socket_drains_its_backlog_in_order_then_queue_empty_then_live(
    server, org_a, new_session
):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    for i in range(5):
        send_body(alice, cid, f"backlog-{i}".encode())
    async with await authed_socket(server, bob) as ws:
        frames = [await recv(ws) for _ in range(6)]
        assert [f["type"] for f in frames] == ["message"] * 5 + ["queue.empty"]
        assert [f["seq"] for f in frames[:5]] == [1, 2, 3, 4, 5]
        assert frames[0]["body"] == b64(b"backlog-0")
        await asyncio.to_thread(send_body, alice, cid, b"live")
        live = await recv_type(ws, "message")
        assert live["seq"] == 6 and live["body"] == b64(b"live")


async def test_unacked_messages_come_again_on_reconnect_and_acked_ones_do_not(
    server, org_a, new_session
):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    ids = [send_body(alice, cid).json()["id"] for _ in range(3)]
    async with await authed_socket(server, bob) as ws:
        got = [(await recv_type(ws, "message"))["id"] for _ in range(3)]
        assert got == ids
        await send(ws, {"type": "ack", "ids": ids[:2]})
        await send(ws, {"type": "ping"})
        await recv_type(ws, "pong")
    async with await authed_socket(server, bob) as ws:
        again = await recv(ws)
        assert again["id"] == ids[2]
        assert (await recv(ws))["type"] == "queue.empty"


async def test_kill_the_socket_mid_stream_then_1000_more_all_arrive_in_order_once(
    server, org_a, new_session
):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    url = f"/api/v1/conversations/{cid}/messages"
    received: dict[int, str] = {}

    ws = await authed_socket(server, bob)
    for i in range(20):
        await asyncio.to_thread(send_body, alice, cid, f"m{i}".encode())
    for _ in range(10):
        frame = await recv_type(ws, "message")
        received[frame["seq"]] = frame["id"]
        await send(ws, {"type": "ack", "ids": [frame["id"]]})
    await ws.close()  # dies with 10 unacked (maybe in flight)

    def burst():
        for i in range(20, 1020):
            payload = {"client_id": str(uuid.uuid4()), "body": b64(f"m{i}".encode())}
            response = alice.api.post(url, json=payload)
            assert response.status_code == 201
            if i % 100 == 0:  # a retried POST never duplicates
                assert alice.api.post(url, json=payload).json()["seq"] == response.json()["seq"]

    await asyncio.to_thread(burst)

    ws = await authed_socket(server, bob)
    seqs, unacked = [], []
    while True:
        frame = await recv(ws, timeout=10)
        if frame["type"] == "queue.empty":
            break
        seqs.append(frame["seq"])
        unacked.append(frame["id"])
        if len(unacked) == 32:  # clients ack in batches
            await send(ws, {"type": "ack", "ids": unacked})
            unacked = []
    await send(ws, {"type": "ack", "ids": unacked})
    await send(ws, {"type": "ping"})
    await recv_type(ws, "pong")
    await ws.close()

    assert seqs == list(range(11, 1021))  # in order, nothing missing, nothing twice
    assert _queued(org_a, bob) == 0


async def test_the_rest_fallback_reads_and_acks_the_queue(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    ids = [send_body(alice, cid).json()["id"] for _ in range(3)]
    assert [m["id"] for m in bob.api.get("/api/v1/messages?limit=2").json()] == ids[:2]
    assert bob.api.post("/api/v1/messages/ack", json={"ids": ids[:2] + ["junk"]}).status_code == 204
    assert [m["id"] for m in bob.api.get("/api/v1/messages").json()] == ids[2:]


def test_an_ack_commits_without_turning_off_durable_commits_for_what_follows(org_a, new_session):
    # Acks skip the WAL flush wait (a lost ack only means a redelivery); that must stay
    # within the ack's own transaction, never leak into the sends that follow on the
    # same connection.
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    ids = [send_body(alice, cid).json()["id"] for _ in range(2)]

    def ack_then_read_setting():
        device = bob.user.devices.get(device_id=bob.device_id)
        deleted = delivery.do_ack(device.pk, ids[:1])
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            return deleted, cursor.fetchone()[0]

    assert in_tenant(org_a, ack_then_read_setting) == (1, "on")
    assert _queued(org_a, bob) == 1
    # committed: another session sees it gone
    assert [m["id"] for m in bob.api.get("/api/v1/messages").json()] == ids[1:]


async def test_sending_over_the_socket_answers_sent_or_the_coverage_error(
    server, org_a, new_session
):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    async with await authed_socket(server, alice) as ws:
        await recv_type(ws, "queue.empty")
        await send(
            ws,
            {
                "type": "send",
                "ref": "s1",
                "conversation": cid,
                "client_id": str(uuid.uuid4()),
                "body": b64(b"over-ws"),
            },
        )
        sent = await recv_type(ws, "sent")
        assert sent["ref"] == "s1" and sent["seq"] == 1
        await send(
            ws,
            {
                "type": "send",
                "ref": "s2",
                "conversation": cid,
                "client_id": str(uuid.uuid4()),
                "envelopes": [],
            },
        )
        error = await recv_type(ws, "error")
        assert error["code"] == "device_mismatch" and error["ref"] == "s2"
        assert error["missing"] == [{"user_id": str(bob.user.pk), "device_id": bob.device_id}]
    assert bob.api.get("/api/v1/messages").json()[0]["body"] == b64(b"over-ws")


def test_revoking_a_device_deletes_its_queue_and_leaves_the_others(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    bob_tablet = new_session(org_a, bob.user, name="tablet")
    cid = start_conversation(alice, bob)["id"]
    for _ in range(3):
        send_body(alice, cid)
    assert _queued(org_a, bob) == _queued(org_a, bob_tablet) == 3

    assert bob.api.delete(f"/api/v1/devices/{bob_tablet.device_id}").status_code == 204

    assert _queued(org_a, bob_tablet) == 0  # nothing will ever fetch it
    assert _queued(org_a, bob) == 3


def _send_frame(cid, ref, **fields) -> dict:
    return {"type": "send", "ref": ref, "conversation": cid, "client_id": str(uuid.uuid4())} | (
        fields
    )


async def test_a_live_message_frame_is_the_frame_the_queue_holds(server, org_a, new_session):
    # A socket of this process may get a live message handed over by the send itself
    # instead of reading it from its queue; what it sends must be the same frame.
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    async with (
        await authed_socket(server, alice, live=True) as sender,
        await authed_socket(server, bob, live=True) as receiver,
    ):
        await send(sender, _send_frame(cid, "root", body=b64(b"root")))
        root = (await recv_type(sender, "sent"))["id"]
        live = [await recv_type(receiver, "message")]
        for i in range(3):
            await send(
                sender,
                _send_frame(
                    cid,
                    f"reply-{i}",
                    body=b64(f"reply-{i}".encode()),
                    envelopes=[envelope(bob, body=f"for-bob-{i}".encode(), type_=2)],
                    thread=root,
                    mentions=[str(bob.user.pk)],
                ),
            )
            await recv_type(sender, "sent")
            live.append(await recv_type(receiver, "message"))
    queued = bob.api.get("/api/v1/messages").json()
    assert [f["seq"] for f in live] == [1, 2, 3, 4]
    assert live == [{"type": "message", **f} if "type" not in f else f for f in queued]
    assert live[3]["envelope"] == {"type": 2, "body": b64(b"for-bob-2")}
    assert live[3]["thread"] == root and live[3]["mentions"] == [str(bob.user.pk)]


async def test_concurrent_senders_reach_a_device_in_seq_order_once_each(server, org_a, new_session):
    bob = new_session(org_a)
    senders = [new_session(org_a) for _ in range(3)]
    group = start_conversation(senders[0], bob, *senders[1:], kind="group")["id"]
    direct = start_conversation(senders[1], bob)["id"]
    per_sender = 40

    async def blast(session, cids):
        async with await authed_socket(server, session, live=True) as ws:
            for i in range(per_sender):  # no waiting for `sent` in between
                await send(ws, _send_frame(cids[i % len(cids)], i, body=b64(b"x")))
            for _ in range(per_sender):
                await recv_type(ws, "sent", timeout=30)

    async with await authed_socket(server, bob, live=True) as ws:
        blasts = asyncio.gather(
            blast(senders[0], [group]),
            blast(senders[1], [group, direct]),
            blast(senders[2], [group]),
        )
        seqs: dict[str, list[int]] = {group: [], direct: []}
        unacked = []
        while sum(map(len, seqs.values())) < 3 * per_sender:
            frame = await recv_type(ws, "message", timeout=30)
            seqs[frame["conversation"]].append(frame["seq"])
            unacked.append(frame["id"])
            if len(unacked) == 16:
                await send(ws, {"type": "ack", "ids": unacked})
                unacked = []
        await blasts
        await send(ws, {"type": "ack", "ids": unacked})
        await send(ws, {"type": "ping"})
        await recv_type(ws, "pong")
    assert seqs[group] == list(range(1, 2 * per_sender + per_sender // 2 + 1))
    assert seqs[direct] == list(range(1, per_sender // 2 + 1))
    assert _queued(org_a, bob) == 0


def test_an_envelope_user_id_that_is_no_canonical_uuid_is_an_extra_device(org_a, new_session):
    # user_id compares as the lowercase canonical string (docs/protocol.md): anything else
    # names no device, so it is a 409 with nothing stored, never a 500.
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    for user_id in ("not-a-uuid", str(bob.user.pk).upper()):
        response = alice.api.post(
            f"/api/v1/conversations/{cid}/messages",
            json={
                "client_id": str(uuid.uuid4()),
                "envelopes": [{**envelope(bob), "user_id": user_id}],
            },
        )
        assert response.status_code == 409, response.text
        assert response.json()["extra"] == [{"user_id": user_id, "device_id": bob.device_id}]
        assert response.json()["missing"] == [
            {"user_id": str(bob.user.pk), "device_id": bob.device_id}
        ]
    assert _stored(org_a, cid) == 0


async def test_acks_of_many_sockets_at_once_delete_each_devices_own_rows_only(
    server, org_a, org_b, new_session
):
    # A web process deletes the acks that arrive together in one statement per org.
    alice, carol = new_session(org_a), new_session(org_b)
    bobs, dave = [new_session(org_a) for _ in range(4)], new_session(org_b)
    recipients = [*bobs, dave]
    ids = []
    for sender, recipient in [(alice, bob) for bob in bobs] + [(carol, dave)]:
        cid = start_conversation(sender, recipient)["id"]
        ids.append([send_body(sender, cid).json()["id"] for _ in range(3)])

    sockets = [await authed_socket(server, r) for r in recipients]
    try:
        for ws, expected in zip(sockets, ids, strict=True):
            assert [(await recv_type(ws, "message"))["id"] for _ in range(3)] == expected
        # Dave (org B) acks his own ids and the first bob's: only his own go.
        acks = [None, ids[1], ids[2], ids[3], ids[4] + ids[0]]
        await asyncio.gather(
            *(send(ws, {"type": "ack", "ids": a}) for ws, a in zip(sockets, acks, strict=True) if a)
        )
        for ws in sockets:
            await send(ws, {"type": "ping"})
            await recv_type(ws, "pong")
    finally:
        for ws in sockets:
            await ws.close()
    assert _queued(org_a, bobs[0]) == 3
    assert [_queued(org_a, bob) for bob in bobs[1:]] == [0, 0, 0]
    assert _queued(org_b, dave) == 0


def _backends_waiting_for_a_lock() -> int:
    with connection.cursor() as cursor:
        # (inside a transaction, pg_stat_activity answers from its first snapshot)
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


def _send_while_a_change_commits(org, sender, cid, change):
    """Send a body from `sender` while `change` (a membership change) holds the
    conversation's lock uncommitted; commit once the send waits for it. The send read the
    members before the change committed. Returns the send's response."""
    import threading
    import time

    from django.db import transaction

    from messaging.models import Conversation

    answer = {}

    def run():
        with transaction.atomic():
            change(Conversation.objects.get(pk=cid))
            thread = threading.Thread(
                target=lambda: answer.setdefault("send", send_body(sender, cid, b"after"))
            )
            thread.start()
            deadline = time.monotonic() + 10
            while not _backends_waiting_for_a_lock():
                assert time.monotonic() < deadline, "the send never waited for the lock"
                time.sleep(0.01)
        thread.join(15)

    in_tenant(org, run)
    return answer["send"]


def test_a_send_that_waited_for_a_removal_does_not_reach_the_removed_member(org_a, new_session):
    from messaging.services.conversations import check_remove_member

    alice, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob, carol, kind="group")["id"]
    sent = _send_while_a_change_commits(
        org_a,
        alice,
        cid,
        lambda c: check_remove_member(c, carol.user.pk, acting_user=alice.user),
    )
    assert sent.status_code == 201 and sent.json()["seq"] == 2  # after the removal (seq 1)
    assert _seqs_and_events(carol) == [(1, "member.removed")]
    assert _seqs_and_events(bob) == [(1, "member.removed"), (2, None)]


def test_a_send_that_waited_for_an_addition_reaches_the_new_member(org_a, new_session):
    from messaging.services.conversations import check_add_members

    alice, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob, kind="group")["id"]
    sent = _send_while_a_change_commits(
        org_a,
        alice,
        cid,
        lambda c: check_add_members(c, [str(carol.user.pk)], acting_user=alice.user),
    )
    assert sent.status_code == 201 and sent.json()["seq"] == 2  # after the addition (seq 1)
    assert _seqs_and_events(carol) == [(1, "member.added"), (2, None)]


def _seqs_and_events(session) -> list[tuple[int, str | None]]:
    response = session.api.get("/api/v1/messages", params={"limit": 100})
    assert response.status_code == 200, response.text
    return [(m["seq"], m.get("event", {}).get("action")) for m in response.json()]


def test_an_ack_that_deadlocks_with_another_delete_is_retried(org_a, new_session):
    """A batch of acks and another statement deleting the same queue rows in the other
    order: PostgreSQL aborts the ack (it waited first), and the ack is deleted again
    rather than failing every socket of its batch."""
    import threading
    import time

    from django.db import transaction

    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    first, second = (send_body(alice, cid).json()["id"] for _ in range(2))
    device_pk = in_tenant(
        org_a,
        lambda: QueuedMessage.objects.filter(message_id=first).values_list("device_id", flat=True)[
            0
        ],
    )
    outcome = {}

    def ack_both():
        try:
            outcome["deleted"] = in_tenant(
                org_a, delivery.do_ack_many, [(device_pk, [first, second])]
            )
        except Exception as exc:  # the test's verdict, below
            outcome["error"] = exc

    def other_delete_in_the_other_order():
        queue = QueuedMessage.objects.filter(device_id=device_pk)
        with transaction.atomic():
            queue.filter(message_id=second).delete()  # holds the second row
            acker = threading.Thread(target=ack_both)
            acker.start()  # deletes the first row, then waits for the second
            deadline = time.monotonic() + 10
            while not _backends_waiting_for_a_lock():
                assert time.monotonic() < deadline, "the ack never waited"
                time.sleep(0.01)
            queue.filter(message_id=first).delete()  # waits for the ack: a deadlock
        acker.join(15)

    in_tenant(org_a, other_delete_in_the_other_order)
    assert "error" not in outcome, outcome
    assert outcome["deleted"] == 0  # the other delete, committed first, took both
    assert _queued(org_a, bob) == 0
