"""Sending, queueing and acknowledging messages.

Durability comes from PostgreSQL: a message accepted with 2xx has a queue row for every
addressed device, deleted only when that device acknowledges it. The channel layer only
wakes sockets up (PITFALLS 6): a wake carries no message, the socket reads its queue. (A
socket in the sending process may be handed the frame of a message it is woken for, which
the queue still holds until the ack: `_wake_with_message_on_commit`.)
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections import namedtuple
from dataclasses import dataclass
from typing import NamedTuple

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import (
    DEFAULT_DB_ALIAS,
    IntegrityError,
    OperationalError,
    connection,
    connections,
    transaction,
)
from django.utils import timezone
from psycopg.errors import DeadlockDetected

from messaging.error_codes import MessagingError
from messaging.models import Conversation, Member, Message, QueuedMessage
from messaging.services import attachments as attachment_services
from messaging.services import unread
from orgs.accounts.models import Device, User
from orgs.api.fields import b64
from orgs.services.devices import device_group
from siphera.api_errors import ApiError, not_found
from siphera.events import send_soon
from siphera.metrics import instruments as metrics

log = logging.getLogger("siphera.messaging")

MAX_ENVELOPE_BYTES = 96 * 1024
ACK_DEADLOCK_RETRIES = 3
MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class Envelope:
    user_id: str
    device_id: int
    type: int
    body: bytes


@dataclass(frozen=True)
class SendResult:
    message: Message
    created: bool
    # (user id, device id) of devices whose queue was full: a body-only message was not
    # queued for them (they find it in the history).
    queue_full: tuple = ()

    def payload(self) -> dict:
        payload = {
            "id": str(self.message.pk),
            "seq": self.message.seq,
            "ts": self.message.created_at.isoformat(),
        }
        if self.queue_full:
            payload["queue_full"] = _device_list(self.queue_full)
        return payload


def _device_list(pairs) -> list[dict]:
    return [{"user_id": u, "device_id": d} for u, d in sorted(pairs)]


def check_send_message(
    *,
    conversation_id,
    sender: User,
    sender_device_id: int,
    client_id: uuid.UUID,
    body: bytes | None,
    envelopes: list[Envelope] | None,
    thread=None,
    refers_to=None,
    mentions: list[str] | None = None,
    attachments: list | None = None,
) -> SendResult:
    """Validate and store a message, queue it for every addressed device, wake them.

    Idempotent on (conversation, sender, client_id): a retry returns the first message and
    stores nothing. When `envelopes` is given it must name exactly the current devices of
    all members except the sending device: otherwise 409 (missing/extra) or 410 (stale),
    and nothing is stored. `attachments` (ids) must be the sender's own uploads, not yet
    sent or sent to this conversation (400 `invalid_attachment`); they are bound to it.

    Queue cap (the org's `device_queue_max`): a device holding that many unacknowledged
    messages takes no more. Envelopes addressed to it refuse the send (409 `queue_full`
    naming the devices; nothing stored), and envelopes may leave such a device out; a
    message without envelopes skips its queue, and the result names it (`queue_full`).
    Nothing already queued is ever dropped for the cap.
    """
    if body is None and envelopes is None:
        raise ApiError(400, MessagingError.EMPTY_MESSAGE, "Send a body, envelopes, or both.")
    if body is not None and len(body) > MAX_BODY_BYTES:
        raise ApiError(
            413, MessagingError.ENVELOPE_TOO_LARGE, f"The body is over {MAX_BODY_BYTES} bytes."
        )
    for envelope in envelopes or ():
        if len(envelope.body) > MAX_ENVELOPE_BYTES:
            raise ApiError(
                413,
                MessagingError.ENVELOPE_TOO_LARGE,
                f"An envelope is over {MAX_ENVELOPE_BYTES // 1024} KiB.",
                extra={"device": {"user_id": envelope.user_id, "device_id": envelope.device_id}},
            )

    if envelopes is not None:
        given = [(e.user_id, e.device_id) for e in envelopes]
        if len(set(given)) != len(given):
            raise ApiError(400, "invalid_request", "Two envelopes address the same device.")
    message = Message(
        conversation_id=conversation_id,
        seq=0,  # the conversation's next seq, taken in the statement that inserts it
        sender=sender,
        sender_device_id=sender_device_id,
        client_id=client_id,
        body=body,
        thread=thread,
        refers_to=refers_to,
        mentions=[str(m) for m in mentions or ()],
        attachments=[],
        created_at=timezone.now(),
    )
    try:
        if (
            not attachments
            and not connection.in_atomic_block
            and all(_is_canonical_uuid(e.user_id) for e in envelopes or ())
        ):
            # The common case in one statement, without a lock query or a transaction
            # block: it stores the message only if every rule holds (_insert_message).
            # Anything else (a retry, a mismatch, an error to explain) takes the locked
            # path below, which finds the exact answer. (An envelope's user_id compares
            # as a string, and the statement reads it as a uuid: any other spelling
            # names no device, which the locked path answers with a 409.)
            skipped = _insert_message(message, envelopes)
            if skipped is not None:
                metrics.MESSAGES_SENT.inc()
                return SendResult(message, created=True, queue_full=skipped)
        with transaction.atomic():
            result = _send_locked(message, envelopes, attachments or [])
        if result.created:
            metrics.MESSAGES_SENT.inc()
        return result
    except IntegrityError:
        # A concurrent retry with the same client_id committed first: answer with it.
        existing = Message.objects.filter(
            conversation_id=conversation_id, sender=sender, client_id=client_id
        ).first()
        if existing is None:
            raise
        return SendResult(existing, created=False)


def _is_canonical_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


# Plain tuples on the send path: building model instances cost more than the queries.
class _Device(NamedTuple):
    user_id: uuid.UUID
    device_id: int


class _QueueRow(NamedTuple):
    device_pk: int
    envelope_type: int | None
    envelope_body: bytes | None


@dataclass(frozen=True)
class _Locked:
    """What the send needs of the conversation, read under its row lock in one query."""

    is_member: bool
    existing_id: uuid.UUID | None  # an earlier message with this client_id
    member_ids: set[str]
    devices: set[tuple[str, int]]  # (user id, device id) of every member's current devices
    pks: dict[tuple[str, int], int]  # their primary keys


def _lock_conversation(conversation_id, sender: User, client_id) -> _Locked | None:
    # The hot path of every send: the lock, the retry check, the members and their current
    # devices in one round trip. The subqueries read the statement's snapshot; a retry
    # committed while this waited for the lock is caught by the unique constraint instead.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT m.user_id, d.id, d.device_id,"
            " EXISTS (SELECT 1 FROM messaging_member s"
            "         WHERE s.conversation_id = c.id AND s.user_id = %s),"
            " (SELECT x.id FROM messaging_message x WHERE x.conversation_id = c.id"
            "  AND x.sender_id = %s AND x.client_id = %s)"
            " FROM messaging_conversation c"
            " JOIN messaging_member m ON m.conversation_id = c.id"
            " LEFT JOIN accounts_device d ON d.user_id = m.user_id AND d.revoked_at IS NULL"
            " WHERE c.id = %s FOR UPDATE OF c",
            [sender.pk, sender.pk, client_id, conversation_id],
        )
        rows = cursor.fetchall()
    if not rows:
        return None
    pks = {(str(user_id), device_id): pk for user_id, pk, device_id, _, _ in rows if pk is not None}
    return _Locked(
        is_member=rows[0][3],
        existing_id=rows[0][4],
        member_ids={str(row[0]) for row in rows},
        devices=set(pks),
        pks=pks,
    )


def _full_queues(pks: dict[tuple[str, int], int]) -> set[tuple[str, int]]:
    """Those of the (user id, device id) -> pk devices whose queue is at the org's cap."""
    from messaging.services.retention import device_queue_max

    if not pks:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT d.id FROM unnest(%s::bigint[]) AS d(id) WHERE EXISTS ("
            " SELECT 1 FROM messaging_queuedmessage q WHERE q.device_id = d.id OFFSET %s)",
            [list(pks.values()), device_queue_max() - 1],
        )
        full = {pk for (pk,) in cursor.fetchall()}
    return {device for device, pk in pks.items() if pk in full}


def _send_locked(message: Message, envelopes, attachment_ids) -> SendResult:
    # Lock order: the conversation row first. It serialises sends per conversation, so
    # `seq` order is commit order and queue ids follow it.
    sender = message.sender
    for _attempt in range(3):
        locked = _lock_conversation(message.conversation_id, sender, message.client_id)
        if locked is not None and locked.existing_id is not None:
            # A retry: the first answer again, even if the sender has left since.
            return SendResult(Message.objects.get(pk=locked.existing_id), created=False)
        if locked is None or not locked.is_member:
            raise not_found("No such conversation.")
        member_ids = locked.member_ids
        _check_references(
            message.conversation_id,
            message.thread,
            message.refers_to,
            message.mentions,
            member_ids,
        )
        targets = locked.devices - {(str(sender.pk), message.sender_device_id)}
        full = _full_queues({d: locked.pks[d] for d in targets})
        _check_coverage(targets, envelopes, member_ids, full)
        if message.body is None and not targets:
            raise ApiError(400, MessagingError.EMPTY_MESSAGE, "Nothing to store or deliver.")
        blobs = attachment_services.lock_for_message(
            message.conversation_id, attachment_ids, sender=sender
        )
        message.attachments = attachment_services.frame_entries(blobs)
        skipped = _insert_message(message, envelopes)
        if skipped is not None:
            attachment_services.do_link_to_message(message, blobs)
            return SendResult(message, created=True, queue_full=skipped)
        # A device was added or revoked since the lock query read them (devices do not
        # take the conversation lock): read them again and check again.
    raise ApiError(
        409,
        MessagingError.DEVICE_MISMATCH,
        "The members' devices kept changing; fetch them and send again.",
        extra={"missing": [], "extra": [], "stale": []},
    )


def _insert_message(message: Message, envelopes: list[Envelope] | None) -> tuple | None:
    """Store the message and queue it for its devices, in one statement (the send path's
    hot spot), if every rule of a send holds; returns None if it stored nothing, else the
    (user id, device id) of the devices it skipped for a full queue (and it set
    `message.seq`, and woke the devices on commit).

    The rules, read in the statement's snapshot: the sender is a member; no message of
    theirs has this client_id (a retry); `envelopes`, if given, name exactly the current
    devices of the members but the sending one (else every such device is queued);
    something is stored or delivered; `thread` and `refers_to` are messages of the
    conversation, and `mentions` are members; no envelope addresses a device whose queue
    is at the org's cap (a message without envelopes skips such a device's queue, and
    envelopes may leave it out). They are the rules `_send_locked` explains
    when one fails, so that this statement, run first without any lock, never accepts
    what the locked path would refuse. The conversation row's update takes the lock that
    orders sends (seq) and membership changes, and stores nothing if an event committed
    since the snapshot the rules were read in (a removed member would otherwise be queued a
    message that comes after their removal): the locked path then reads them again."""
    db = _this_threads_connection()
    fields = _insert_fields()
    values = [f.get_db_prep_save(f.pre_save(message, True), db) for f in fields]
    has_envelopes = envelopes is not None
    envelopes = envelopes or ()
    references = sorted({str(x) for x in (message.thread, message.refers_to) if x})
    params = {
        "conversation": message.conversation_id,
        "sender": message.sender_id,
        "client_id": message.client_id,
        "sender_device": message.sender_device_id,
        "env_users": [e.user_id for e in envelopes],
        "env_devices": [e.device_id for e in envelopes],
        "env_types": [e.type for e in envelopes],
        "env_bodies": [e.body for e in envelopes],
        "mentions": message.mentions,
        "references": references,
        "queue_default": settings.DEVICE_QUEUE_MAX,
        **{f"c{i}": value for i, value in enumerate(values)},
    }
    sql = _insert_sql(
        has_envelopes,
        message.body is not None,
        bool(message.mentions),
        bool(references),
        counts_mentions=bool(message.mentions) and message.refers_to is None,
    )
    with db.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    seq, device_pks, user_ids, device_ids, queued_pks, queue_ids, full, *mentioned = row
    if seq is None:
        return None
    message.seq = seq
    if mentioned:
        unread.notify_mentions_on_commit(message, mentioned[0])
    queue_id_of = dict(zip(queued_pks, queue_ids, strict=True))
    envelope_of = {(e.user_id, e.device_id): e for e in envelopes}
    _wake_with_message_on_commit(
        message,
        [
            (_Device(u, d), queue_id_of[pk], envelope_of.get((str(u), d)))
            for pk, u, d in zip(device_pks, user_ids, device_ids, strict=True)
        ],
    )
    return tuple((u, int(d)) for u, d in full)


def _this_threads_connection():
    # `connection` is a proxy that looks the thread's connection up again at every
    # attribute access; the fields' converters make a dozen such accesses per message.
    return connections[DEFAULT_DB_ALIAS]


@functools.cache
def _insert_fields() -> list:
    return [f for f in Message._meta.concrete_fields if f.attname != "seq"]


@functools.cache
def _insert_sql(
    has_envelopes: bool,
    has_body: bool,
    mentions: bool,
    references: bool,
    *,
    counts_mentions: bool,
) -> str:
    """The send statement, for a message with or without envelopes, body, mentions and
    references: a rule that cannot fail for this message is left out rather than
    written as a branch, since PostgreSQL sets up every node of a statement at each run,
    taken or not (it cost a quarter of the statement's CPU). `counts_mentions`: the
    mentioned members' counters go up and they are told (not for a message that
    `refers_to` another, an edit or a reaction: those are not unread either)."""
    quote = connection.ops.quote_name
    fields = _insert_fields()
    columns = ", ".join(quote(f.column) for f in fields)
    placeholders = ", ".join(f"%(c{i})s" for i in range(len(fields)))
    rules = [
        "EXISTS (SELECT 1 FROM messaging_member m, p"
        " WHERE m.conversation_id = p.conversation AND m.user_id = p.sender)",
        "NOT EXISTS (SELECT 1 FROM messaging_message x, p WHERE x.conversation_id ="
        " p.conversation AND x.sender_id = p.sender AND x.client_id = p.client_id)",
    ]
    if has_envelopes:
        # envelopes cover exactly the devices with room in their queue (the client's list
        # has no duplicates), and none is for a device whose queue is full
        rules.append("NOT EXISTS (SELECT 1 FROM queued WHERE queued.at_cap)")
        rules.append(
            "(SELECT count(*) FROM queued) = (SELECT count(*) FROM devices WHERE NOT at_cap)"
        )
        rules.append("(SELECT count(*) FROM queued) >= cardinality(%(env_devices)s::integer[])")
        queued = (
            " queued AS (SELECT d.id, d.user_id, d.device_id, d.at_cap, g.type, g.body"
            "   FROM devices d"
            "   JOIN unnest(%(env_users)s::uuid[], %(env_devices)s::integer[],"
            "     %(env_types)s::integer[], %(env_bodies)s::bytea[])"
            "     AS g(user_id, device_id, type, body)"
            "   ON g.user_id = d.user_id AND g.device_id = d.device_id),"
        )
    else:
        queued = " queued AS (SELECT id, user_id, device_id, NULL::integer AS type,"
        queued += " NULL::bytea AS body FROM devices WHERE NOT at_cap),"
    if not has_body:
        rules.append("EXISTS (SELECT 1 FROM queued)")  # something to store or deliver
    mentioned = ""
    if mentions:
        rules.append(
            "NOT EXISTS (SELECT unnest(%(mentions)s::uuid[]) EXCEPT SELECT m.user_id"
            " FROM messaging_member m, p WHERE m.conversation_id = p.conversation)"
        )
    if counts_mentions:
        # The mentioned members' counters, in the statement that takes the seq (under the
        # conversation's row lock: messaging.services.unread).
        mentioned = (
            ", mc AS (UPDATE messaging_member mm SET mention_count = mm.mention_count + 1"
            "  FROM p, m WHERE mm.conversation_id = p.conversation"
            "  AND mm.user_id = ANY(%(mentions)s::uuid[]) AND mm.user_id <> p.sender"
            "  AND mm.read_seq < m.seq RETURNING mm.user_id)"
        )
    if references:
        rules.append(
            "(SELECT count(*) FROM messaging_message x, p WHERE x.id = ANY(%(references)s::uuid[])"
            " AND x.conversation_id = p.conversation) = cardinality(%(references)s::uuid[])"
        )
    return (
        "WITH p AS (SELECT %(conversation)s::uuid AS conversation, %(sender)s::uuid AS sender,"
        "           %(client_id)s::uuid AS client_id, %(sender_device)s::integer AS sender_device,"
        "           (SELECT c.last_event_seq FROM messaging_conversation c"
        "            WHERE c.id = %(conversation)s::uuid) AS event_seq,"
        "           coalesce((SELECT device_queue_max FROM messaging_messagingpolicy"
        "                     WHERE id = 1), %(queue_default)s) - 1 AS queue_skip),"
        # `at_cap`: the device holds the org's cap of queued messages already, read as one
        # bounded walk of its queue index (no count of the whole queue)
        " devices AS (SELECT d.id, d.user_id, d.device_id, EXISTS (SELECT 1"
        "     FROM messaging_queuedmessage w WHERE w.device_id = d.id"
        "     OFFSET (SELECT queue_skip FROM p)) AS at_cap FROM p"
        "   JOIN messaging_member m ON m.conversation_id = p.conversation"
        "   JOIN accounts_device d ON d.user_id = m.user_id AND d.revoked_at IS NULL"
        "   WHERE NOT (d.user_id = p.sender AND d.device_id = p.sender_device)),"
        f"{queued}"
        f" ok AS (SELECT {' AND '.join(rules)} AS holds),"
        " s AS (UPDATE messaging_conversation SET last_seq = last_seq + 1"
        "       WHERE id = (SELECT conversation FROM p) AND (SELECT holds FROM ok)"
        # no event (a membership change) committed since this statement's snapshot, which
        # read the members: if one did while it waited for the row, its members are stale
        # (PostgreSQL checks this against the row as the lock found it)
        "       AND last_event_seq = (SELECT event_seq FROM p)"
        "       RETURNING last_seq),"
        f" m AS (INSERT INTO messaging_message ({columns}, seq)"
        f"       SELECT {placeholders}, s.last_seq FROM s RETURNING id, seq),"
        " q AS (INSERT INTO messaging_queuedmessage"
        "       (device_id, message_id, envelope_type, envelope_body)"
        "       SELECT u.id, m.id, u.type, u.body FROM queued u, m RETURNING id, device_id)"
        f"{mentioned}"
        " SELECT (SELECT seq FROM m), ARRAY(SELECT id FROM queued),"
        " ARRAY(SELECT user_id FROM queued), ARRAY(SELECT device_id FROM queued),"
        " ARRAY(SELECT device_id FROM q), ARRAY(SELECT id FROM q),"
        " ARRAY(SELECT ARRAY[user_id::text, device_id::text] FROM devices WHERE at_cap)"
        + (", ARRAY(SELECT user_id FROM mc)" if counts_mentions else "")
    )


def _check_references(conversation_id, thread, refers_to, mentions, member_ids) -> None:
    wanted = {str(x) for x in (thread, refers_to) if x}
    if wanted:
        found = {
            str(x)
            for x in Message.objects.filter(
                conversation_id=conversation_id, pk__in=wanted
            ).values_list("pk", flat=True)
        }
        if wanted - found:
            raise ApiError(
                400,
                MessagingError.UNKNOWN_REFERENCE,
                "`thread` and `refers_to` must be messages of this conversation.",
            )
    strangers = {str(m) for m in mentions} - member_ids
    if strangers:
        raise ApiError(
            400,
            MessagingError.INVALID_MENTION,
            "Mentions must be members.",
            extra={"not_members": sorted(strangers)},
        )


def _check_coverage(targets, envelopes, member_ids, full=frozenset()) -> None:
    """409 or 410 unless `envelopes` (if given) name exactly the `targets` devices (those
    in `full`, whose queue is at the cap, may be left out, and must be: 409
    `queue_full`)."""
    if envelopes is None:
        return
    given = {(e.user_id, e.device_id) for e in envelopes}
    missing = set(targets) - given - set(full)
    extra = given - set(targets)
    stale = _revoked(extra, member_ids)
    if missing or extra - stale:
        raise ApiError(
            409,
            MessagingError.DEVICE_MISMATCH,
            "Envelopes must cover exactly the current devices of the members.",
            extra={
                "missing": _device_list(missing),
                "extra": _device_list(extra - stale),
                "stale": _device_list(stale),
            },
        )
    if stale:
        raise ApiError(
            410,
            MessagingError.STALE_DEVICES,
            "Some envelopes address revoked devices.",
            extra={"stale": _device_list(stale)},
        )
    if given & set(full):
        from messaging.services.retention import device_queue_max

        cap = device_queue_max()
        raise ApiError(
            409,
            MessagingError.QUEUE_FULL,
            f"These devices hold {cap} undelivered messages already: send again without "
            "their envelopes, or later.",
            extra={"devices": _device_list(given & set(full)), "max_queued": cap},
        )


def _revoked(pairs, member_ids) -> set[tuple[str, int]]:
    candidates = {(u, d) for u, d in pairs if u in member_ids}
    if not candidates:
        return set()
    revoked = Device.objects.filter(
        user_id__in={u for u, _ in candidates}, revoked_at__isnull=False
    ).values_list("user_id", "device_id")
    return candidates & {(str(u), d) for u, d in revoked}


def do_append_event(
    conversation: Conversation, event: dict, *, actor: User, actor_device_id: int | None = None
) -> Message:
    """Append a membership event to the conversation and queue it for every member device
    (the caller's transaction decides the member set)."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "UPDATE messaging_conversation"
                " SET last_seq = last_seq + 1, last_event_seq = last_seq + 1"
                " WHERE id = %s RETURNING last_seq",
                [conversation.pk],
            )
            (seq,) = cursor.fetchone()
        message = Message.objects.create(
            conversation=conversation,
            seq=seq,
            kind=Message.EVENT,
            sender=actor,
            sender_device_id=actor_device_id,
            event={**event, "by": str(actor.pk)},
            created_at=timezone.now(),
        )
        member_ids = Member.objects.filter(conversation=conversation).values_list(
            "user_id", flat=True
        )
        devices = list(Device.objects.filter(user_id__in=member_ids, revoked_at__isnull=True))
        QueuedMessage.objects.bulk_create(
            [QueuedMessage(device=d, message=message) for d in devices]
        )
        wake_devices_on_commit(devices)
    return message


def wake_devices_on_commit(devices) -> None:
    """After commit, tell each device's socket (if any) to read its queue."""
    schema = connection.schema_name
    _wake_groups_on_commit([device_group(d, schema) for d in devices])


def _wake_groups_on_commit(groups: list[str], local=None) -> None:
    if groups:
        transaction.on_commit(lambda: send_soon(groups, {"type": "queue.wake"}, local=local))


def _wake_with_message_on_commit(message: Message, queued) -> None:
    """After commit, wake each of `queued`'s (device, queue id, envelope or None) sockets.

    A socket in this process is handed the `message` frame itself with its queue id, and
    may send it without reading its queue when nothing can be ahead of it (the rule is in
    messaging.consumers); it reads the queue otherwise. The queue row stays the message's
    only store until the ack, and the channel layer still carries bare wake-ups only."""
    schema = connection.schema_name
    by_group = {device_group(d, schema): (queue_id, e) for d, queue_id, e in queued}
    shared: list[dict] = []  # the frame without the envelope, built once when first needed

    def local(group: str) -> dict:
        if not shared:
            shared.append(message_frame(message, None))
        queue_id, envelope = by_group[group]
        frame = dict(shared[0])
        if envelope is not None:
            frame["envelope"] = _envelope_frame(envelope.type, envelope.body)
        return {"type": "queue.wake", "queue_id": queue_id, "message": frame}

    _wake_groups_on_commit(list(by_group), local)


# --- reading and acknowledging a device's queue ---------------------------------------------


def message_frame(message, entry) -> dict:
    """The `message` frame of a Message (or a row with its attribute names) and, for a
    device's queue, its queue entry (`envelope_type`, `envelope_body`)."""
    frame = {
        "type": "message",
        "id": str(message.id),
        "conversation": str(message.conversation_id),
        "seq": message.seq,
        "ts": message.created_at.isoformat(),
        "sender": {
            "user_id": str(message.sender_id) if message.sender_id else None,
            "device_id": message.sender_device_id,
        },
        "thread": str(message.thread) if message.thread else None,
        "refers_to": str(message.refers_to) if message.refers_to else None,
        "mentions": message.mentions,
        "attachments": message.attachments,
        "body": b64(message.body),
        "envelope": None,
    }
    if entry is not None and entry.envelope_body is not None:
        frame["envelope"] = _envelope_frame(entry.envelope_type, entry.envelope_body)
    if message.kind == Message.EVENT:
        frame["event"] = message.event
    return frame


def _envelope_frame(envelope_type: int, body) -> dict:
    return {"type": envelope_type, "body": b64(body)}


def pending_for_device(
    device_pk: int, *, exclude_ids=(), limit: int = 256
) -> list[tuple[int, dict]]:
    """The device's queued messages, oldest first, skipping queue ids in `exclude_ids`
    (already sent on this socket, not yet acked). Returns (queue id, message frame).

    Runs for every wake-up of every socket, so it is one hand-written query whose rows go
    straight into frames (the message columns and their converters come from the model)
    rather than an ORM query compiled, and model instances built, each time."""
    shape = _message_row_shape()
    db = _this_threads_connection()
    with db.cursor() as cursor:
        cursor.execute(
            f"SELECT q.id, q.envelope_type, q.envelope_body, {shape.columns}"
            " FROM messaging_queuedmessage q"
            " JOIN messaging_message m ON m.id = q.message_id"
            " WHERE q.device_id = %s AND NOT (q.id = ANY(%s::bigint[]))"
            " ORDER BY q.id LIMIT %s",
            [device_pk, list(exclude_ids), limit],
        )
        rows = cursor.fetchall()
    pending = []
    for queue_id, envelope_type, envelope_body, *values in rows:
        for i, field, field_converters in shape.converters:
            for convert in field_converters:
                values[i] = convert(values[i], field, db)
        entry = _QueueRow(device_pk, envelope_type, envelope_body)
        pending.append((queue_id, message_frame(shape.row(*values), entry)))
    return pending


@dataclass(frozen=True)
class _MessageRowShape:
    columns: str  # "m.<col>, ..." in model field order
    row: type  # a named tuple with the fields' attribute names
    converters: list  # [(index, field, [converter, ...])] for fields that have any


@functools.cache
def _message_row_shape() -> _MessageRowShape:
    fields = Message._meta.concrete_fields
    converters = [
        (i, f, f.get_db_converters(connection) + connection.ops.get_db_converters(f))
        for i, f in enumerate(fields)
    ]
    return _MessageRowShape(
        columns=", ".join("m." + connection.ops.quote_name(f.column) for f in fields),
        row=namedtuple("MessageRow", [f.attname for f in fields]),
        converters=[(i, f, c) for i, f, c in converters if c],
    )


def do_ack(device_pk: int, message_ids) -> int:
    """Delete acknowledged messages from the device's queue. Unknown ids are ignored.
    Returns how many entries went."""
    return do_ack_many([(device_pk, message_ids)])


def do_ack_many(acks) -> int:
    """Delete the acknowledged messages of several devices, `acks` being (device pk,
    message ids) pairs, in one statement (the sockets of a web process batch theirs:
    messaging.consumers). Unknown or malformed ids are ignored.

    The deletion commits without waiting for its WAL flush (synchronous_commit off for
    this one statement's transaction; PostgreSQL's WAL writer flushes it within a few
    hundred ms). A crash in that moment loses the ack, never a message: the message is
    delivered again, which delivery at least once allows (clients de-duplicate by id).
    Waiting for the flush made every ack queue behind the sends' commits.

    A deadlock with another statement deleting the same rows is retried (up to
    ACK_DEADLOCK_RETRIES times): the bench saw one between a batch of acks and a bulk
    delete of the queue."""
    devices, ids = [], []
    for device_pk, message_ids in acks:
        for raw in message_ids:
            try:
                ids.append(uuid.UUID(str(raw)))
            except ValueError:
                continue
            devices.append(device_pk)
    if not ids:
        return 0
    retries = 0
    while True:
        try:
            deleted = _delete_acked(devices, ids)
            metrics.MESSAGES_ACKED.inc(deleted)
            return deleted
        except OperationalError as exc:
            # Another statement deleting some of the same rows in another order (a
            # retention purge, a revoked device's queue): PostgreSQL aborts one of the two.
            # Deleting again is harmless (rows gone are ignored), and a failed batch would
            # fail the ack of every socket in it.
            retries += 1
            deadlock = isinstance(exc.__cause__, DeadlockDetected)
            if not deadlock or retries > ACK_DEADLOCK_RETRIES or connection.in_atomic_block:
                raise
            log.warning("ack.deadlock_retried", extra={"retry": retries})


def _delete_acked(devices: list[int], ids: list[uuid.UUID]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            # Each pair is looked up on its own (the LATERAL subquery, kept apart by OFFSET
            # 0, has only one index to use: (device, message)), and the rows found are
            # deleted by their addresses. Joined directly, a queue that the statistics
            # believe empty (as vacuum mostly finds it) got a plan that walked the whole
            # queue for every ack (messaging/tests/test_query_plans.py).
            "DELETE FROM messaging_queuedmessage"
            " USING (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit"
            " WHERE ctid = ANY(ARRAY("
            "   SELECT x.ctid FROM unnest(%s::bigint[], %s::uuid[]) AS a(device_id, message_id),"
            "   LATERAL (SELECT q.ctid FROM messaging_queuedmessage q"
            "            WHERE q.device_id = a.device_id AND q.message_id = a.message_id"
            "            OFFSET 0) x))",
            [devices, ids],
        )
        return cursor.rowcount


def history(
    conversation: Conversation, *, after_seq: int = 0, limit: int = 100, thread=None
) -> list[dict]:
    """Stored history (bodies and events, never envelopes), oldest first. With `thread`
    (a message id), only that thread: its root message, then the replies naming it; a
    root that is not a message of this conversation (or not a message id) is a 404."""
    if thread is None:
        messages = Message.objects.filter(conversation=conversation, seq__gt=after_seq)
        return [message_frame(m, None) for m in messages.order_by("seq")[:limit]]
    try:
        root = Message.objects.filter(conversation=conversation, pk=thread).first()
    except (ValidationError, ValueError):
        root = None
    if root is None:
        raise not_found("No such thread.")
    replies = Message.objects.filter(conversation=conversation, thread=root.pk, seq__gt=after_seq)
    # A reply names a root that existed when it was sent: the root's seq comes first.
    messages = ([root] if root.seq > after_seq else []) + list(replies.order_by("seq")[:limit])
    return [message_frame(m, None) for m in messages[:limit]]
