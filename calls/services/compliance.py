"""Calls' share of compliance exports and data-subject requests (registered in
CallsConfig.ready(); see orgs.services.compliance and orgs.services.personal_data).

- Section `calls`: one row per call record in the range (placed, rung or joined by one of
  the users): kind, media, caller user and device, conversation, participants, outcome,
  times. Metadata only: the server never keeps SDP, ICE or media.
- Legal-hold archive: `calls.jsonl`, the call records the active holds keep (those of a
  held conversation or with a held user in them), as the retention purge keeps them.
- Personal data: the user's calls.
- Erasure: call records are kept. Each is also the other participants' record; it names
  the erased user only by their (now pseudonymised) id and goes with the org's retention.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from django.db.models import Exists, OuterRef, Q, QuerySet

from calls.models import Call, CallParticipant
from calls.services.records import call_payload
from messaging.services import retention
from orgs.accounts.models import User
from orgs.services.compliance import (
    ArchiveFile,
    ExportScope,
    Section,
    register_archive_part,
    register_section,
)
from orgs.services.personal_data import ErasureReport, register_subject_part

COLUMNS = (
    "id",
    "time",
    "user_id",
    "device_id",
    "conversation_id",
    "kind",
    "media",
    "outcome",
    "end_reason",
    "participants",
    "answered_at",
    "ended_at",
    "duration_seconds",
)
_BATCH = 500


def _involving(user_ids) -> Q:
    return Q(caller_id__in=user_ids) | Exists(
        CallParticipant.objects.filter(call=OuterRef("pk"), user_id__in=user_ids)
    )


def _calls(scope: ExportScope) -> QuerySet:
    rows = Call.objects.filter(created_at__gte=scope.since, created_at__lt=scope.until)
    if scope.user_ids:
        rows = rows.filter(_involving(list(scope.user_ids)))
    return rows


def _payloads(rows: QuerySet) -> Iterator[dict]:
    """call_payload of each call, oldest first, participants fetched a batch at a time."""
    batch: list[Call] = []
    for call in rows.order_by("created_at", "pk").iterator(chunk_size=_BATCH):
        batch.append(call)
        if len(batch) == _BATCH:
            yield from _with_participants(batch)
            batch = []
    yield from _with_participants(batch)


def _with_participants(calls: list[Call]) -> Iterator[dict]:
    parts: dict = {}
    for part in CallParticipant.objects.filter(call__in=calls):
        parts.setdefault(part.call_id, []).append(part)
    for call in calls:
        yield call_payload(call, parts.get(call.pk, []))


def _rows(scope: ExportScope) -> Iterator[dict]:
    for payload in _payloads(_calls(scope)):
        caller = payload["caller"] or {}
        yield {
            "id": payload["call_id"],
            "time": payload["created_at"],
            "user_id": caller.get("user_id"),
            "device_id": caller.get("device_id"),
            "conversation_id": payload["conversation"],
            "kind": payload["kind"],
            "media": payload["media"],
            "outcome": payload["outcome"],
            "end_reason": payload["end_reason"],
            "participants": payload["participants"],
            "answered_at": payload["answered_at"],
            "ended_at": payload["ended_at"],
            "duration_seconds": payload["duration_seconds"],
        }


def _held_calls(scope: ExportScope) -> QuerySet:
    held_users, held_conversations = retention.active_holds()
    held = Q(pk__in=[])
    if held_conversations:
        held |= Q(conversation_id__in=held_conversations)
    if held_users:
        held |= _involving(held_users)
    return _calls(scope).filter(held)


def _archive(scope: ExportScope) -> Iterator[ArchiveFile]:
    def lines() -> Iterator[bytes]:
        for payload in _payloads(_held_calls(scope)):
            yield (json.dumps(payload, sort_keys=True) + "\n").encode()

    yield ArchiveFile(
        "calls.jsonl", lines(), "Held call records (metadata only: media is never stored)."
    )


def _calls_of(user: User) -> Iterator[dict]:
    yield from _payloads(Call.objects.filter(_involving([user.pk])))


def on_user_erasing(user: User, report: ErasureReport) -> None:
    """orgs.hooks.user_erasing: call records stay (see the module's docstring)."""
    count = Call.objects.filter(_involving([user.pk])).count()
    report.keep(
        "call_records",
        count,
        "Call records are also the other participants' records; they keep only the "
        "pseudonymised user id and are deleted with the org's retention.",
    )


def register() -> None:
    register_section(
        Section(
            name="calls",
            app="calls",
            description="Call records: caller, participants, media, outcome, times.",
            columns=COLUMNS,
            rows=_rows,
            count=lambda scope: _calls(scope).count(),
        )
    )
    register_archive_part(_archive)
    register_subject_part("calls", _calls_of)
    from orgs import hooks

    hooks.user_erasing.register(on_user_erasing)
