"""Reading the audit log page by page, and verifying it on request (portal and API).

Filters are audit_export's (`check_filter`), so a page, a download and the command line
select the same entries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from orgs.accounts.models import User
from orgs.audit_events import AuditEvent
from orgs.services import audit, audit_export
from siphera.api_errors import ApiError
from siphera.params import BIGINT_MAX, parse_int

PAGE_SIZE_MAX = 200


def resolve_actor(actor: str) -> uuid.UUID | None:
    """An actor filter as typed by a person: a user id or a username (400 for neither)."""
    actor = (actor or "").strip()
    if not actor:
        return None
    try:
        return uuid.UUID(actor)
    except ValueError:
        pass
    user_id = User.objects.filter(username=actor.lower()).values_list("pk", flat=True).first()
    if user_id is None:
        raise ApiError(400, "invalid_actor", f"No user named {actor!r} in this organisation.")
    return user_id


def check_filter_from_query(params) -> audit_export.ExportFilter:
    """Filters from query parameters: `actor` (username or id), `event` (repeatable;
    exact or `family.*`), `target_type`, `target_id`, `since`, `until` (ISO 8601)."""
    return audit_export.check_filter(
        since=params.get("since") or None,
        until=params.get("until") or None,
        events=[e for e in params.getlist("event") if e],
        actor_id=resolve_actor(params.get("actor", "")),
        target_type=params.get("target_type", ""),
        target_id=params.get("target_id", ""),
    )


@dataclass(frozen=True)
class AuditPage:
    entries: list[dict[str, Any]]  # newest first, as audit.entry_fields gives them
    next_before: int | None  # pass as `before` for the next (older) page


def list_entries(
    filters: audit_export.ExportFilter, *, before: int | None = None, limit: int = 50
) -> AuditPage:
    """One page of matching entries, newest first; keyset-paginated on the id, so a page
    stays cheap however deep in the log it is."""
    limit = max(1, min(int(limit), PAGE_SIZE_MAX))
    rows = filters.queryset().order_by("-id")
    if before is not None:
        rows = rows.filter(id__lt=before)
    entries = [audit.entry_fields(e) for e in rows[: limit + 1]]
    more = len(entries) > limit
    entries = entries[:limit]
    return AuditPage(entries=entries, next_before=entries[-1]["id"] if more else None)


def check_verify(*, actor: audit.Actor) -> audit.ChainReport:
    """Walk the whole chain and check it against its latest anchor (audit.verify_chain),
    and record who checked and what they saw (`audit.verified`), so a verification that
    found a break is on record too."""
    report = audit.verify_chain()
    audit.record(
        AuditEvent.AUDIT_VERIFIED,
        actor=actor,
        target_type="audit_log",
        target_id="chain",
        data={
            "ok": report.ok,
            "count": report.count,
            "head": report.head,
            "broken_id": report.broken_id,
            "problem": report.problem,
            "anchor_id": report.anchor_id,
        },
    )
    return report


def event_names() -> list[str]:
    return sorted(str(e) for e in AuditEvent)


def event_families() -> list[str]:
    return sorted({str(e).split(".", 1)[0] + ".*" for e in AuditEvent})


def parse_before(value) -> int | None:
    if value in (None, ""):
        return None
    return parse_int(value, name="before", lo=1, hi=BIGINT_MAX)
