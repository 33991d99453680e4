"""The org's append-only, hash-chained audit log.

Each entry's hash covers the previous entry's hash and a canonical JSON of its own fields,
so editing, deleting or reordering any row breaks a link that `verify_chain` finds. The
database refuses UPDATE, DELETE and TRUNCATE on the table (trigger, migration 0002) and a
unique `prev_hash` makes a forked chain impossible to store.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from orgs.accounts.models import AuditEntry
from orgs.audit_events import AuditEvent

GENESIS = "0" * 64
# Any fixed 32-bit number: with hashtext(schema) it names one advisory lock per org
# chain, so writers of one org queue up without blocking other orgs.
_LOCK_NAMESPACE = 0x5E1A
# The fields the hash covers, in the order exports write them.
HASHED_FIELDS = (
    "ts",
    "event",
    "actor_id",
    "actor_label",
    "ip",
    "user_agent",
    "target_type",
    "target_id",
    "data",
)
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Actor:
    """Who did it: a user (with the request's IP and user agent) or the platform."""

    user: Any = None
    label: str = ""
    ip: str | None = None
    user_agent: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def system(cls, label: str) -> Actor:
        return cls(label=label)

    def with_user(self, user) -> Actor:
        """This actor, attributed to `user` if no user was known yet (e.g. at login)."""
        return self if self.user is not None else replace(self, user=user, label=user.username)

    @classmethod
    def from_request(cls, request, user=None) -> Actor:
        from siphera.net import client_ip

        user = user if user is not None else getattr(request, "user", None)
        user = user if getattr(user, "pk", None) else None
        return cls(
            user=user,
            label=user.username if user else "",
            ip=client_ip(request),
            user_agent=request.headers.get("User-Agent", "")[:300],
        )


def canonical_payload(fields: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash covers. `fields["ts"]` is the ISO 8601 string."""
    payload = {
        "ts": fields["ts"],
        "event": fields["event"],
        "actor_id": str(fields["actor_id"]) if fields["actor_id"] else None,
        "actor_label": fields["actor_label"],
        "ip": fields["ip"] or None,
        "user_agent": fields["user_agent"],
        "target_type": fields["target_type"],
        "target_id": fields["target_id"],
        "data": fields["data"],
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def entry_fields(entry: AuditEntry) -> dict[str, Any]:
    """An entry as the plain values that are hashed and exported."""
    return {
        "id": entry.id,
        "ts": entry.ts.astimezone(dt.UTC).isoformat(),
        "event": entry.event,
        "actor_id": str(entry.actor_id) if entry.actor_id else None,
        "actor_label": entry.actor_label,
        "ip": entry.ip or None,
        "user_agent": entry.user_agent,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "data": entry.data,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


def canonical(entry: AuditEntry) -> bytes:
    return canonical_payload(entry_fields(entry))


def link_hash(prev_hash: str, fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev_hash.encode() + canonical_payload(fields)).hexdigest()


def chain_hash(prev_hash: str, entry: AuditEntry) -> str:
    return link_hash(prev_hash, entry_fields(entry))


def _json_safe(data: dict | None) -> dict:
    # Hash exactly what the database will give back: str keys, JSON-native values.
    return json.loads(json.dumps(data or {}, default=str))


def _valid_ip(ip: str | None) -> str | None:
    try:
        return str(ipaddress.ip_address((ip or "").strip()))
    except ValueError:
        return None


class UnknownAuditEvent(ValueError):
    """`record` was given an event type that is not in the registry (orgs.audit_events):
    a programming error, refused so no entry carries a name exports and SIEM rules do
    not know."""


def registered_event(event: AuditEvent | str) -> AuditEvent:
    """`event` as a registered AuditEvent, or UnknownAuditEvent."""
    if isinstance(event, AuditEvent):
        return event
    try:
        return AuditEvent(event)
    except ValueError:
        raise UnknownAuditEvent(
            f"{event!r} is not a registered audit event (orgs/audit_events.py)"
        ) from None


def record(
    event: AuditEvent,
    *,
    actor: Actor,
    target_type: str = "",
    target_id: Any = "",
    data: dict | None = None,
) -> AuditEntry:
    """Append one entry to the current org's chain, inside the caller's transaction.
    `event` must be in the registry (orgs.audit_events): anything else raises
    UnknownAuditEvent before anything is written.

    Writers of one org are serialised by a transaction-scoped advisory lock taken before
    the chain head is read (READ COMMITTED: the read then sees every earlier writer's
    commit), so concurrent appends never fork the chain; the unique `prev_hash` would
    refuse a fork even if they did.
    """
    event = registered_event(event)
    ip = _valid_ip(actor.ip)
    with transaction.atomic():
        with connection.cursor() as cursor:
            # One writer per org chain at a time; released at commit. PostgreSQL also
            # spells the address (the form it will return it in, e.g. IPv4-mapped IPv6).
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(current_schema())), host(%s::inet)",
                [_LOCK_NAMESPACE, ip],
            )
            ip = cursor.fetchone()[1]
        last = AuditEntry.objects.order_by("-id").values_list("hash", flat=True).first()
        entry = AuditEntry(
            ts=timezone.now(),
            event=str(event),
            actor_id=actor.user.pk if actor.user else None,
            actor_label=(actor.label or (actor.user.username if actor.user else ""))[:200],
            ip=ip,
            user_agent=(actor.user_agent or "")[:300],
            target_type=target_type,
            target_id=str(target_id),
            data=_json_safe(data),
            prev_hash=last or GENESIS,
        )
        entry.hash = chain_hash(entry.prev_hash, entry)
        entry.save()
        return entry


# --- verification ----------------------------------------------------------------------

ALTERED = "altered"  # the entry's content no longer matches its hash
MISSING = "missing"  # an entry before this one is gone (its predecessor's hash is absent)
REORDERED = "reordered"  # the entry's predecessor exists, but elsewhere in the log


@dataclass(frozen=True)
class ChainReport:
    """The outcome of walking a chain: ok with a count and head, or the first broken link."""

    ok: bool
    count: int  # entries checked (up to and including the broken one)
    head: str  # hash of the last good entry (GENESIS for an empty log)
    broken_id: int | None = None
    problem: str | None = None  # ALTERED, MISSING or REORDERED
    detail: str = ""

    def describe(self) -> str:
        if self.ok:
            return f"OK: {self.count} entries, chain intact, head {self.head}"
        return f"BROKEN at entry {self.broken_id} ({self.problem}): {self.detail}"


def walk_chain(
    rows: Iterable[Mapping[str, Any]],
    *,
    locate: Callable[[str], int | None] | None = None,
    progress: ProgressFn | None = None,
    total: int = 0,
    start_hash: str = GENESIS,
    every: int = 5000,
) -> ChainReport:
    """Check rows (in id order; each as `entry_fields` gives) link into one chain.

    The first row must link to `start_hash`. At the first broken link, the entry is named
    with the kind of break: ALTERED (its content no longer matches its own hash), MISSING
    (the entry it links to is absent: deleted) or REORDERED (the entry it links to exists
    at another position; `locate(hash)` returns that entry's id, or None).
    """
    expected = start_hash
    count = 0
    prev_id = 0
    for row in rows:
        count += 1
        if link_hash(row["prev_hash"], row) != row["hash"]:
            return ChainReport(
                False,
                count,
                expected,
                row["id"],
                ALTERED,
                "its content does not match its hash (edited after it was written)",
            )
        if row["prev_hash"] != expected:
            where = locate(row["prev_hash"]) if locate else None
            if where is not None:
                detail = f"it follows entry {where} in the chain, not the entry before it"
                return ChainReport(False, count, expected, row["id"], REORDERED, detail)
            if row["prev_hash"] == GENESIS:
                detail = "it is the log's first entry, found at another position"
                return ChainReport(False, count, expected, row["id"], REORDERED, detail)
            return ChainReport(
                False, count, expected, row["id"], MISSING, _missing_detail(prev_id, row["id"])
            )
        expected, prev_id = row["hash"], row["id"]
        if progress is not None and count % every == 0:
            progress(count, total)
    if progress is not None:
        progress(count, total)
    return ChainReport(True, count, expected)


def _missing_detail(prev_id: int, entry_id: int) -> str:
    # Ids come from a sequence, so the deleted entries had ids between the two neighbours
    # (a rolled-back transaction can also leave an unused id there).
    lo, hi = prev_id + 1, entry_id - 1
    if lo == hi:
        where = f"; its id was {lo}"
    elif lo < hi:
        where = f"; its id was between {lo} and {hi}"
    else:
        where = ""
    return f"the entry it follows is missing (deleted{where})"


def verify_chain(
    *, progress: ProgressFn | None = None, chunk_size: int = 2000, expect_head: str = ""
) -> ChainReport:
    """Walk the current org's whole log, oldest first, and report the first broken link.

    Reads in one streamed query (server-side cursor), so memory stays flat on long logs.
    A chain cut short at its end still links; pass `expect_head` (a hash noted earlier,
    e.g. from a previous verification or export) to also require that it is still there.
    """
    total = AuditEntry.objects.count() if progress is not None else 0
    rows = (entry_fields(entry) for entry in AuditEntry.objects.order_by("id").iterator(chunk_size))
    report = walk_chain(rows, locate=_locate, progress=progress, total=total)
    if report.ok and expect_head and not AuditEntry.objects.filter(hash=expect_head).exists():
        return ChainReport(
            False,
            report.count,
            report.head,
            None,
            MISSING,
            f"the expected entry with hash {expect_head} is gone (the log was cut short)",
        )
    return report


def _locate(hash_: str) -> int | None:
    return AuditEntry.objects.filter(hash=hash_).values_list("id", flat=True).first()
