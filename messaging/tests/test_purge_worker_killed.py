"""A Celery worker killed mid-retention-purge (issue 15, item 13): the job is redelivered to
another worker (acks late, CELERY_VISIBILITY_TIMEOUT_SECONDS) and resumes where the
committed batches left it: every message past retention goes, nothing a hold covers or
still within retention does, and the run is audited once (the killed run had written no
entry: `retention.purged` is written at the end of a run, with what that run deleted)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from messaging import tasks
from messaging.models import Message
from orgs.accounts.models import AuditEntry
from siphera.tenancy import in_tenant
from tests.fixtures import _start_worker, stop_process

from .helpers import start_conversation

OLD = 2400  # past retention, to purge in batches of BATCH
BATCH = 20
VISIBILITY = "8"  # seconds before the killed worker's job is handed on


def _bulk(org, conversation, count: int, *, age_days: float, sender) -> list[str]:
    now = timezone.now()

    def create() -> list[str]:
        base = Message.objects.filter(conversation_id=conversation).count() + 10_000_000
        rows = [
            Message(
                conversation_id=conversation,
                seq=base + i,
                kind=Message.MESSAGE,
                sender_id=sender.user.pk,
                sender_device_id=sender.device_id,
                client_id=uuid.uuid4(),
                body=b"ciphertext",
                created_at=now - timedelta(days=age_days, seconds=i),
            )
            for i in range(count)
        ]
        return [str(m.pk) for m in Message.objects.bulk_create(rows, batch_size=1000)]

    return in_tenant(org, create)


def _left(org, ids: list[str]) -> int:
    return in_tenant(org, Message.objects.filter(pk__in=ids).count)


def _purges(org) -> list[AuditEntry]:
    return in_tenant(
        org, lambda: list(AuditEntry.objects.filter(event="retention.purged").order_by("id"))
    )


def _wait(condition, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_worker_killed_mid_purge_is_replaced_and_the_purge_completes_exactly(
    tmp_path, org_a, new_session
):
    officer = new_session(org_a, role="compliance_officer")
    alice, bob = new_session(org_a), new_session(org_a)
    purged = start_conversation(alice, bob, kind="group")["id"]
    held = start_conversation(alice, bob, kind="group")["id"]
    hold = officer.api.post(
        "/api/v1/compliance/holds", json={"conversation_id": held, "reason": "matter 8"}
    )
    assert hold.status_code == 201, hold.text
    old = _bulk(org_a, purged, OLD, age_days=60, sender=alice)
    recent = _bulk(org_a, purged, 30, age_days=1, sender=alice)
    kept = _bulk(org_a, held, 200, age_days=60, sender=alice)
    before = len(_purges(org_a))
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-purge-{uuid.uuid4().hex[:6]}"
    env = {
        "CELERY_QUEUE": queue,
        "RETENTION_PURGE_BATCH": str(BATCH),
        "CELERY_VISIBILITY_TIMEOUT_SECONDS": VISIBILITY,
    }
    first_log = tmp_path / "first.log"
    first = _start_worker(first_log, queue, ("--pool", "solo"), f"first-{queue}", **env)
    second = None
    try:
        # When the purge runs and its worker is killed after a few batches
        tasks.purge_retention.apply_async(queue=queue, headers={"_schema_name": org_a.schema_name})
        _wait(
            lambda: first_log.read_text().count("retention purge batch") >= 3,
            60,
            "the purge never started",
        )
        first.kill()
        first.wait(30)
        # Then it stopped mid-way: some old messages went (committed batches), not all
        left = _left(org_a, old)
        assert 0 < left < OLD, f"not killed mid-way ({left} of {OLD} left)"
        assert len(_purges(org_a)) == before  # the killed run wrote no audit entry

        # When another worker starts
        second_log = tmp_path / "second.log"
        second = _start_worker(second_log, queue, ("--pool", "solo"), f"second-{queue}", **env)
        # Then the job comes to it once the visibility timeout passed, and completes
        _wait(lambda: len(_purges(org_a)) > before, 300, "the purge was never resumed")
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_process(proc)

    assert _left(org_a, old) == 0
    assert _left(org_a, recent) == len(recent)
    assert _left(org_a, kept) == len(kept)
    entries = _purges(org_a)[before:]
    assert len(entries) == 1, [e.data for e in entries]
    # The entry counts what the resumed run deleted: the rest of the backlog.
    assert entries[0].data["messages"] >= left
    assert "retention purge finished" in second_log.read_text()
