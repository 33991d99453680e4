"""Call records: what a user sees of their own calls, what an admin sees of the org's
(metadata only: never SDP, ICE or media, which the server never keeps), and their purge
with the org's retention.

Pages run newest first by `created_at`, with `before` the `next_before` of the previous
page (ISO 8601). Admin reads are audited (`call.records_viewed`) in the same
transaction as the read.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from calls.error_codes import CallError
from calls.models import Call, CallParticipant, Recording
from messaging.services import attachments, retention
from orgs.accounts.models import User
from orgs.audit_events import AuditEvent
from orgs.services import audit
from siphera.api_errors import ApiError
from siphera.params import page_limit

MAX_PAGE = 200
DEFAULT_PAGE = 50
PURGE_BATCH = 500


@dataclass
class Page:
    calls: list[dict]
    next_before: str | None


def parse_page(
    params,
    *,
    default: int = DEFAULT_PAGE,
    hi: int = MAX_PAGE,
    code: str = CallError.INVALID_CALL,
) -> tuple[datetime | None, int]:
    """`before` and `limit` (1-`hi`, `default` when absent) from query parameters; 400
    `code` when malformed."""
    before = params.get("before")
    parsed = None
    if before:
        try:
            parsed = parse_datetime(before)
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise ApiError(400, code, "`before` is an ISO 8601 time with its offset.")
    return parsed, page_limit(params, default=default, hi=hi, code=code)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def call_payload(call: Call, parts: list[CallParticipant], *, viewer: User | None = None) -> dict:
    payload = {
        "call_id": str(call.pk),
        "kind": call.kind,
        "media": call.media,
        "state": call.state,
        "outcome": call.outcome or None,
        "end_reason": call.end_reason or None,
        "caller": (
            {"user_id": str(call.caller_id), "device_id": call.caller_device_id}
            if call.caller_id
            else None
        ),
        "conversation": str(call.conversation_id) if call.conversation_id else None,
        "participants": [
            {
                "user_id": str(p.user_id),
                "role": p.role,
                "device_id": p.device_id,
                "joined_at": _iso(p.joined_at),
                "left_at": _iso(p.left_at),
            }
            for p in sorted(parts, key=lambda p: (p.role != CallParticipant.CALLER, str(p.user_id)))
        ],
        "created_at": call.created_at.isoformat(),
        "answered_at": _iso(call.answered_at),
        "ended_at": _iso(call.ended_at),
        "duration_seconds": call.duration_seconds,
    }
    if viewer is not None and call.kind == Call.DIRECT:
        payload["direction"] = "outgoing" if call.caller_id == viewer.pk else "incoming"
    return payload


def _page(rows, limit: int, viewer: User | None) -> Page:
    calls = list(rows[: limit + 1])
    more = len(calls) > limit
    calls = calls[:limit]
    parts: dict[uuid.UUID, list[CallParticipant]] = {}
    for part in CallParticipant.objects.filter(call__in=calls):
        parts.setdefault(part.call_id, []).append(part)
    return Page(
        [call_payload(c, parts.get(c.pk, []), viewer=viewer) for c in calls],
        calls[-1].created_at.isoformat() if more else None,
    )


def list_own_calls(user: User, *, before: datetime | None, limit: int) -> Page:
    """The calls `user` took part in (placed, was rung for, or joined), newest first."""
    rows = Call.objects.filter(
        Exists(CallParticipant.objects.filter(call=OuterRef("pk"), user=user))
    ).order_by("-created_at")
    if before is not None:
        rows = rows.filter(created_at__lt=before)
    return _page(rows, limit, user)


def check_list_org_calls(
    *, before: datetime | None, limit: int, user_id: str | None, actor: audit.Actor
) -> Page:
    """Every call of the org, newest first (optionally one user's), for holders of
    `calls.view`. Audited `call.records_viewed` with the filter used."""
    rows = Call.objects.order_by("-created_at")
    if user_id:
        try:
            uuid.UUID(user_id)
        except ValueError:
            raise ApiError(400, CallError.INVALID_CALL, "`user_id` is a user id.") from None
        rows = rows.filter(
            Exists(CallParticipant.objects.filter(call=OuterRef("pk"), user_id=user_id))
        )
    if before is not None:
        rows = rows.filter(created_at__lt=before)
    with transaction.atomic():
        page = _page(rows, limit, None)
        audit.record(
            AuditEvent.CALL_RECORDS_VIEWED,
            actor=actor,
            target_type="call_records",
            target_id=user_id or "",
            data={"user_id": user_id, "before": _iso(before), "count": len(page.calls)},
        )
    return page


def do_purge_call_records(*, actor: audit.Actor, now: datetime | None = None) -> int:
    """Delete ended calls older than the org's message retention (the same period as
    messages), with their recordings and transcripts, except those of a held user or
    held conversation, in batches. Returns
    how many; a run that deleted any is audited `call.records_purged`."""
    now = now or timezone.now()
    cutoff = now - timedelta(days=retention.org_retention_days())
    held_users, held_conversations = retention.active_holds()
    rows = Call.objects.filter(state=Call.ENDED, ended_at__lt=cutoff)
    if held_conversations:
        rows = rows.exclude(conversation_id__in=held_conversations)
    if held_users:
        rows = rows.exclude(
            Q(caller_id__in=held_users)
            | Exists(CallParticipant.objects.filter(call=OuterRef("pk"), user_id__in=held_users))
        )
    deleted = 0
    while batch := list(rows.values_list("pk", flat=True)[:PURGE_BATCH]):
        with transaction.atomic():
            # A call's compliance recording (and transcript) goes with it; its blob is
            # deleted once the rows are.
            blobs = list(
                Recording.objects.filter(call_id__in=batch).values_list("storage_name", flat=True)
            )
            Call.objects.filter(pk__in=batch).delete()
        attachments.delete_blobs(blobs, kind="recording")
        deleted += len(batch)
    if deleted:
        audit.record(
            AuditEvent.CALL_RECORDS_PURGED,
            actor=actor,
            target_type="call_records",
            target_id="",
            data={"deleted": deleted, "cutoff": cutoff.isoformat()},
        )
    return deleted
