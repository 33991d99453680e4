"""The queue's hot statements touch only the rows they are about, whatever PostgreSQL's
statistics say about the queue table.

A queue table is mostly empty, so (auto)vacuum and analyze often see it empty and record
no rows while its pages stay allocated. When a backlog then builds (devices offline), the
planner still believes the table empty, and every plan looks free: an ack that walked the
whole queue once per statement was chosen that way, and a backlog of some thousand rows
made every ack cost milliseconds (bench/relay.py fell from about 1,000 messages/s to 400).
"""

import uuid

from django.db import connection, transaction
from django.utils import timezone

from messaging.models import Message, QueuedMessage
from messaging.services import delivery
from orgs.accounts.models import Device
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, unique

from .helpers import start_conversation

BACKLOG = 3000
CALLS = 12  # past psycopg's prepare threshold and PostgreSQL's five custom plans


def _queue_rows_read() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0)"
            " FROM pg_stat_xact_user_tables"
            " WHERE relid = 'messaging_queuedmessage'::regclass"
        )
        return cursor.fetchone()[0]


def _messages(conversation_id, sender, count: int, first_seq: int) -> list[Message]:
    now = timezone.now()
    return Message.objects.bulk_create(
        Message(
            conversation_id=conversation_id,
            seq=first_seq + i,
            sender=sender,
            sender_device_id=1,
            client_id=uuid.uuid4(),
            body=b"x",
            created_at=now,
        )
        for i in range(count)
    )


def _queue_as_planned_when_empty(conversation_id, sender, offline: Device) -> None:
    """Fill the queue, empty it, let ANALYZE see it empty (no rows, its pages still
    there), then build a backlog for `offline` that the statistics know nothing of."""
    old = _messages(conversation_id, sender, BACKLOG, first_seq=1)
    QueuedMessage.objects.bulk_create(QueuedMessage(device=offline, message=m) for m in old)
    QueuedMessage.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messaging_queuedmessage")
        cursor.execute(
            "SELECT reltuples, relpages FROM pg_class"
            " WHERE oid = 'messaging_queuedmessage'::regclass"
        )
        assert cursor.fetchone()[0] == 0  # what the planner now believes
    backlog = _messages(conversation_id, sender, BACKLOG, first_seq=BACKLOG + 1)
    QueuedMessage.objects.bulk_create(QueuedMessage(device=offline, message=m) for m in backlog)


def test_drain_and_ack_read_only_their_devices_rows_beside_an_unplanned_backlog(new_session):
    org = create_org(unique("plans"))
    alice, bob, carol = new_session(org), new_session(org), new_session(org)
    cid = start_conversation(alice, bob)["id"]

    def scenario():
        offline = Device.objects.get(user=bob.user, device_id=bob.device_id)
        online = Device.objects.get(user=carol.user, device_id=carol.device_id)
        _queue_as_planned_when_empty(cid, alice.user, offline)
        mine = _messages(cid, alice.user, CALLS, first_seq=2 * BACKLOG + 1)
        QueuedMessage.objects.bulk_create(QueuedMessage(device=online, message=m) for m in mine)

        with transaction.atomic():
            before = _queue_rows_read()
            for _ in range(CALLS):
                pending = delivery.pending_for_device(online.pk, limit=1)
                assert len(pending) == 1
            drained = _queue_rows_read() - before

            before = _queue_rows_read()
            acked = sum(delivery.do_ack_many([(online.pk, [m.pk])]) for m in mine)
            acks = _queue_rows_read() - before
        return drained, acked, acks, QueuedMessage.objects.filter(device=offline).count()

    drained, acked, acks, backlog = in_tenant(org, scenario)
    assert acked == CALLS and backlog == BACKLOG  # the ack deleted its own rows only
    # One row read per call (give or take a few), never the other device's backlog.
    assert drained <= 3 * CALLS, drained
    assert acks <= 3 * CALLS, acks
