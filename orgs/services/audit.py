"""The org's append-only, hash-chained audit log.

Each entry's hash is an HMAC-SHA256, with a key derived from the server's key ring
(siphera.mac_keys, purpose CHAIN_PURPOSE), over the previous entry's hash and a canonical
JSON of its own fields, so editing, deleting or reordering any row breaks a link that
`verify_chain` finds, and someone who can write to the database but does not hold the key
ring cannot append an entry that verifies. Each entry names the key that made its link
(`key_id`), so the chain verifies across a key rotation. Entries written before the chain
was keyed carry LEGACY_KEY_ID and a plain SHA-256 link; none may follow a keyed entry.

The database refuses UPDATE, DELETE and TRUNCATE on the table (trigger, migration 0002)
and a unique `prev_hash` makes a forked chain impossible to store. A chain cut short at
its end still links: signed anchors of the head kept outside the database
(orgs.services.audit_anchor) catch that.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from orgs.accounts.models import AuditEntry
from orgs.audit_events import AuditEvent
from orgs.services import audit_anchor
from siphera import mac_keys

GENESIS = "0" * 64
# The key id of entries written before the chain was keyed: their link is plain SHA-256.
LEGACY_KEY_ID = "sha256"
CHAIN_PURPOSE = "audit chain"
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
log = logging.getLogger("siphera.audit")


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
        "key_id": entry.key_id,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }


def canonical(entry: AuditEntry) -> bytes:
    return canonical_payload(entry_fields(entry))


def link_hash(prev_hash: str, fields: Mapping[str, Any]) -> str | None:
    """The hash an entry with these fields (and `key_id`) must carry after `prev_hash`:
    HMAC-SHA256 with the chain key its `key_id` names, or plain SHA-256 for a legacy entry
    (a row without `key_id`, e.g. from an export made before keying, is legacy). None when
    no key of SECRET_KEYS has that id."""
    payload = prev_hash.encode() + canonical_payload(fields)
    key_id = fields.get("key_id") or LEGACY_KEY_ID
    if key_id == LEGACY_KEY_ID:
        return hashlib.sha256(payload).hexdigest()
    key = mac_keys.find(CHAIN_PURPOSE, key_id)
    return key.sign(payload) if key else None


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
            key_id=mac_keys.newest(CHAIN_PURPOSE).id,
        )
        entry.hash = link_hash(entry.prev_hash, entry_fields(entry))
        entry.save()
        return entry


# --- verification ----------------------------------------------------------------------

ALTERED = "altered"  # the entry's content no longer matches its hash
MISSING = "missing"  # an entry before this one is gone (its predecessor's hash is absent)
REORDERED = "reordered"  # the entry's predecessor exists, but elsewhere in the log
UNKEYED = "unkeyed"  # an unkeyed (legacy SHA-256) entry after keyed ones: forged
UNKNOWN_KEY = "unknown_key"  # made with a key id that no key of SECRET_KEYS has
TRUNCATED = "truncated"  # the latest anchored entry is gone: the log was cut short
ANCHOR_MISMATCH = "anchor_mismatch"  # the anchored entry's hash is not the anchored one


@dataclass(frozen=True)
class ChainReport:
    """The outcome of walking a chain: ok with a count and head, or the first broken link.
    `anchor_id`/`anchored_at` name the anchor the log was checked against (if any)."""

    ok: bool
    count: int  # entries checked (up to and including the broken one)
    head: str  # hash of the last good entry (GENESIS for an empty log)
    broken_id: int | None = None
    problem: str | None = None  # one of the kinds above
    detail: str = ""
    anchor_id: int | None = None
    anchored_at: str = ""
    note: str = ""  # e.g. "no anchor yet"

    def describe(self) -> str:
        if not self.ok:
            where = f"at entry {self.broken_id} " if self.broken_id is not None else ""
            text = f"BROKEN {where}({self.problem}): {self.detail}"
        else:
            text = f"OK: {self.count} entries, chain intact, head {self.head}"
        if self.ok and self.anchor_id is not None:
            text += f"; anchored entry {self.anchor_id} ({self.anchored_at}) present"
        if self.note:
            text += f"; {self.note}"
        return text


def walk_chain(
    rows: Iterable[Mapping[str, Any]],
    *,
    locate: Callable[[str], int | None] | None = None,
    progress: ProgressFn | None = None,
    total: int = 0,
    start_hash: str = GENESIS,
    keyed: bool = False,
    every: int = 5000,
) -> ChainReport:
    """Check rows (in id order; each as `entry_fields` gives) link into one chain.

    The first row must link to `start_hash` (`keyed`: the entry with that hash was keyed,
    so no unkeyed entry may follow). At the first broken link, the entry is named with the
    kind of break: UNKEYED (a legacy SHA-256 entry after a keyed one: anyone can compute
    that hash, so it is forged), UNKNOWN_KEY (its key id is not in the ring), ALTERED
    (its content no longer matches its own hash), MISSING (the entry it links to is
    absent: deleted) or REORDERED (the entry it links to exists at another position;
    `locate(hash)` returns that entry's id, or None).
    """
    expected = start_hash
    count = 0
    prev_id = 0
    # Entries made with a key that has left the ring: checked against the seal written
    # before it was retired (do_seal_key): key id -> [first entry id, digest, count].
    unsealed: dict[str, list] = {}
    for row in rows:
        count += 1
        broken = link_problem(row, keyed)
        if broken and broken[0] == UNKNOWN_KEY:
            retired = unsealed.setdefault(row["key_id"], [row["id"], hashlib.sha256(), 0])
            retired[1].update(_seal_bytes(row))
            retired[2] += 1
            broken = None
        elif not broken and row.get("event") == AuditEvent.AUDIT_KEY_SEALED:
            broken = _seal_problem(row, unsealed, full=start_hash == GENESIS)
            if broken:
                return ChainReport(False, count, expected, broken[0], *broken[1:])
        if broken:
            return ChainReport(False, count, expected, row["id"], *broken)
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
        keyed = keyed or (row.get("key_id") or LEGACY_KEY_ID) != LEGACY_KEY_ID
        if progress is not None and count % every == 0:
            progress(count, total)
    if progress is not None:
        progress(count, total)
    if unsealed:
        key_id, (first_id, _, _) = min(unsealed.items(), key=lambda item: item[1][0])
        return ChainReport(
            False,
            count,
            expected,
            first_id,
            UNKNOWN_KEY,
            f"its hash was made with key {key_id}, which no key of the ring has, and no seal "
            "entry covers it (the key was removed from the ring without `rotate_keys "
            "--retire`, or the entry is forged)",
        )
    return ChainReport(True, count, expected)


def _seal_bytes(row: Mapping[str, Any]) -> bytes:
    """What a seal's digest covers of one entry: its link, content and hash."""
    return row["prev_hash"].encode() + canonical_payload(row) + row["hash"].encode() + b"\n"


def _seal_problem(
    row: Mapping[str, Any], unsealed: dict[str, list], *, full: bool
) -> tuple[int, str, str] | None:
    """Check a (verified) seal entry against the entries of its key seen since the key's
    previous seal: (entry id, problem, detail) or None. Only a walk from the log's start
    (`full`) has seen them all; a walk of a segment takes the seal's word for them."""
    data = row["data"] or {}
    pending = unsealed.pop(str(data.get("key_id")), None)
    if pending is None or not full:
        return None  # the key is still in the ring: its entries verified one by one
    first_id, digest, entries = pending
    if digest.hexdigest() == data.get("digest") and entries == data.get("entries"):
        return None
    return (
        first_id,
        ALTERED,
        f"the entries made with retired key {data.get('key_id')} no longer match the seal "
        f"written when it was retired (entry {row['id']}): one of them was edited, added or "
        "removed",
    )


def link_problem(row: Mapping[str, Any], keyed: bool) -> tuple[str, str] | None:
    """Whether the row's own hash is wrong, and why: (problem, detail) or None."""
    key_id = row.get("key_id") or LEGACY_KEY_ID
    if key_id == LEGACY_KEY_ID and keyed:
        return UNKEYED, (
            "it has an unkeyed (plain SHA-256) hash but follows keyed entries: anyone can "
            "compute such a hash, so it was written by someone without the key ring (forged)"
        )
    expected = link_hash(row["prev_hash"], row)
    if expected is None:
        return UNKNOWN_KEY, (
            f"its hash was made with key {key_id}, which no key of SECRET_KEYS has "
            "(removed from the ring too early, or the entry is forged)"
        )
    if expected != row["hash"]:
        return ALTERED, "its content does not match its hash (edited after it was written)"
    return None


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
    """Walk the current org's whole log, oldest first, and report the first broken link;
    then check the org's latest anchor (audit_anchor): its entry must still be there with
    the anchored hash, so a log cut short at its end (or rewritten) since it was anchored
    fails too.

    Reads in one streamed query (server-side cursor), so memory stays flat on long logs.
    `expect_head` (a hash noted earlier) also requires that entry to still be there.
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
    report = report if not report.ok else _unkeyed_tail(report)
    if not report.ok:
        return report
    latest = audit_anchor.latest(connection.schema_name)
    if latest.anchor is None:
        return replace(report, note=latest.note or "no anchor yet")
    broken = _anchor_problem(latest.anchor)
    if broken:
        return replace(
            report, ok=False, broken_id=latest.anchor.entry_id, note=latest.note, **broken
        )
    return replace(
        report,
        anchor_id=latest.anchor.entry_id,
        anchored_at=latest.anchor.anchored_at,
        note=latest.note,
    )


def _unkeyed_tail(report: ChainReport) -> ChainReport:
    """`report`, or UNKEYED when the log's newest entry is unkeyed. Since migration
    accounts.0008 sealed every existing log with a keyed entry, a genuine log that is not
    empty ends with keyed entries: one that ends unkeyed had its keyed entries removed or
    rewritten in the unkeyed form (which anyone can compute)."""
    newest = AuditEntry.objects.order_by("-id").values_list("id", "key_id").first()
    if newest is None or newest[1] != LEGACY_KEY_ID:
        return report
    return replace(
        report,
        ok=False,
        broken_id=newest[0],
        problem=UNKEYED,
        detail="the log ends with an unkeyed (plain SHA-256) entry, but every log ends with "
        "keyed entries since the chain was keyed: its keyed entries were removed, or the "
        "log was rewritten without the key",
    )


def _anchor_problem(anchor: audit_anchor.Anchor) -> dict[str, str] | None:
    """Whether the anchored entry is gone or changed: {problem, detail} or None."""
    found = AuditEntry.objects.filter(id=anchor.entry_id).values_list("hash", flat=True).first()
    if found == anchor.hash:
        return None
    if found is None:
        return {
            "problem": TRUNCATED,
            "detail": f"entry {anchor.entry_id}, the chain's head when it was anchored at "
            f"{anchor.anchored_at} (hash {anchor.hash}), is gone: entries were deleted "
            "from the end of the log",
        }
    return {
        "problem": ANCHOR_MISMATCH,
        "detail": f"entry {anchor.entry_id} no longer has the hash anchored at "
        f"{anchor.anchored_at} ({anchor.hash}): the log was rewritten from there on",
    }


def _locate(hash_: str) -> int | None:
    return AuditEntry.objects.filter(hash=hash_).values_list("id", flat=True).first()


# --- retiring a key --------------------------------------------------------------------


def chain_key_usage() -> dict[str, int]:
    """Chain key id -> how many of the current org's entries it made and no seal covers
    yet (keyed entries only)."""
    rows = AuditEntry.objects.exclude(key_id=LEGACY_KEY_ID).values_list("key_id", "id")
    last_seal: dict[str, int] = {}
    for target_id, entry_id in AuditEntry.objects.filter(
        event=AuditEvent.AUDIT_KEY_SEALED
    ).values_list("target_id", "id"):
        last_seal[target_id] = max(entry_id, last_seal.get(target_id, 0))
    usage: dict[str, int] = {}
    for key_id, entry_id in rows.iterator(5000):
        if entry_id > last_seal.get(key_id, 0):
            usage[key_id] = usage.get(key_id, 0) + 1
    return usage


def do_seal_key(key_id: str, *, actor: Actor) -> AuditEntry | None:
    """Append an `audit.key_sealed` entry, signed with the active key, that covers every
    entry chain key `key_id` made since its previous seal: their count, first and last id
    and a SHA-256 digest over each one's link, content and hash. Once the key has left the
    ring, `verify_chain` checks those entries against the seal instead of their own HMACs,
    so editing, adding or removing one still shows. None when there is nothing to seal.

    The caller makes sure no process still signs with `key_id` (it is not the active key
    anywhere): an entry it made after the seal would fail verification once it is retired.
    """
    if key_id == mac_keys.newest(CHAIN_PURPOSE).id:
        raise ValueError("the active key cannot be sealed: it signs new entries")
    with transaction.atomic():
        previous = (
            AuditEntry.objects.filter(event=AuditEvent.AUDIT_KEY_SEALED, target_id=key_id)
            .order_by("-id")
            .values_list("id", flat=True)
            .first()
        )
        entries = AuditEntry.objects.filter(key_id=key_id, id__gt=previous or 0).order_by("id")
        digest, count, first_id, last_id = hashlib.sha256(), 0, None, None
        for entry in entries.iterator(2000):
            fields = entry_fields(entry)
            digest.update(_seal_bytes(fields))
            count += 1
            first_id = first_id or entry.id
            last_id = entry.id
        if not count:
            return None
        return record(
            AuditEvent.AUDIT_KEY_SEALED,
            actor=actor,
            target_type="audit_key",
            target_id=key_id,
            data={
                "key_id": key_id,
                "entries": count,
                "first_id": first_id,
                "last_id": last_id,
                "digest": digest.hexdigest(),
                "sealed_with": mac_keys.newest(CHAIN_PURPOSE).id,
            },
        )


# --- anchoring -------------------------------------------------------------------------


def do_anchor_head(*, resign: bool = False) -> ChainReport:
    """Anchor the current org's chain head outside the database (audit_anchor.write), if
    the entries written since its latest anchor link to that anchor.

    `resign`: a head already anchored with an older key is anchored again with the
    active key (before that key is retired, so the org keeps an anchor that verifies).

    Checks only what is new (flat cost however long the log): the anchored entry must still
    be there with its hash, and every later entry must link from it. If not, nothing is
    written (an anchor over a cut or forged log would hide the break), the problem is
    logged as an error and returned. A head that is already anchored is not anchored again.
    The returned report's `anchor_id` is the anchored head; `count` the entries checked.
    """
    schema = connection.schema_name
    latest = audit_anchor.latest(schema).anchor
    rows = AuditEntry.objects.order_by("id")
    start, keyed = GENESIS, False
    if latest is not None:
        broken = _anchor_problem(latest)
        if broken:
            return _refused(schema, replace(ChainReport(False, 0, GENESIS), **broken))
        key_id = AuditEntry.objects.filter(id=latest.entry_id).values_list("key_id", flat=True)
        rows = rows.filter(id__gt=latest.entry_id)
        start, keyed = latest.hash, key_id.first() != LEGACY_KEY_ID
    report = walk_chain(
        (entry_fields(e) for e in rows.iterator(2000)),
        locate=_locate,
        start_hash=start,
        keyed=keyed,
    )
    report = report if not report.ok else _unkeyed_tail(report)
    if not report.ok:
        return _refused(schema, report)
    if report.count == 0:
        if latest is None:
            return replace(report, note="empty log, nothing to anchor")
        if resign and latest.key_id != mac_keys.newest(audit_anchor.ANCHOR_PURPOSE).id:
            latest = audit_anchor.write(
                schema, entry_id=latest.entry_id, hash=latest.hash, entry_ts=latest.entry_ts
            )
        return replace(report, anchor_id=latest.entry_id, anchored_at=latest.anchored_at)
    head = AuditEntry.objects.get(hash=report.head)
    anchor = audit_anchor.write(
        schema, entry_id=head.id, hash=head.hash, entry_ts=entry_fields(head)["ts"]
    )
    return replace(report, anchor_id=anchor.entry_id, anchored_at=anchor.anchored_at)


def _refused(schema: str, report: ChainReport) -> ChainReport:
    log.error(
        "audit chain does not match its anchor: not anchored",
        extra={
            "schema": schema,
            "problem": report.problem,
            "broken_id": report.broken_id,
            "detail": report.detail,
        },
    )
    return report
