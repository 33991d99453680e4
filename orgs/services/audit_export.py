"""Exporting an org's audit log (CSV or JSON Lines), streamed, and verifying an export.

One place for the operator command (`manage.py export_audit`) and the portal/API views:
`check_export` validates the request and audits it (`audit.exported`); the returned
`AuditExport.lines()` streams the entries with a server-side cursor, so memory stays flat
however long the log is. Every exported row carries the fields its hash covers, its
`prev_hash` and its `hash`, so a file can be re-verified without the database
(`verify_export`).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from django.db import connection
from django.db.models import Q, QuerySet

from orgs.accounts.models import AuditEntry
from orgs.audit_events import AuditEvent
from orgs.services import audit
from siphera.api_errors import ApiError
from siphera.tenancy import tenant_context

FORMATS = ("csv", "jsonl")
COLUMNS = ("id", *audit.HASHED_FIELDS, "key_id", "prev_hash", "hash")
# Exports made before the chain was keyed have no key_id column: all their entries are
# legacy (plain SHA-256) ones.
_UNKEYED_COLUMNS = tuple(name for name in COLUMNS if name != "key_id")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}
_KNOWN_EVENTS = frozenset(str(e) for e in AuditEvent)


@dataclass(frozen=True)
class ExportFilter:
    """Which entries to export. `since` is inclusive, `until` exclusive; `events` are exact
    names or a family such as `member.*`; the actor and target filters are exact."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    events: tuple[str, ...] = ()
    actor_id: uuid.UUID | None = None
    target_type: str = ""
    target_id: str = ""

    def queryset(self) -> QuerySet[AuditEntry]:
        rows = AuditEntry.objects.order_by("id")
        if self.since:
            rows = rows.filter(ts__gte=self.since)
        if self.until:
            rows = rows.filter(ts__lt=self.until)
        if self.events:
            match = Q()
            for name in self.events:
                if name.endswith(".*"):
                    match |= Q(event__startswith=name[:-1])
                else:
                    match |= Q(event=name)
            rows = rows.filter(match)
        if self.actor_id:
            rows = rows.filter(actor_id=self.actor_id)
        if self.target_type:
            rows = rows.filter(target_type=self.target_type)
        if self.target_id:
            rows = rows.filter(target_id=self.target_id)
        return rows

    @property
    def is_whole_chain(self) -> bool:
        """Only an export of consecutive entries keeps every link checkable."""
        return not (self.events or self.actor_id or self.target_type or self.target_id)

    def describe(self) -> dict[str, Any]:
        values = asdict(self)
        return {
            key: (value.isoformat() if isinstance(value, dt.datetime) else value)
            for key, value in values.items()
            if value not in (None, "", ())
        }


def parse_time(value: str | None, name: str) -> dt.datetime | None:
    """An ISO 8601 date or date-time (UTC when it names no zone), or a 400."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(
            400, "invalid_time", f"{name}: {value!r} is not an ISO 8601 date or time."
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def check_filter(
    *,
    since: str | dt.datetime | None = None,
    until: str | dt.datetime | None = None,
    events: Iterable[str] = (),
    actor_id: str | uuid.UUID | None = None,
    target_type: str = "",
    target_id: str = "",
) -> ExportFilter:
    """Validate filter input (strings as a form or command line gives them) or a 400."""
    since = parse_time(since, "since") if isinstance(since, str) or since is None else since
    until = parse_time(until, "until") if isinstance(until, str) or until is None else until
    if since and until and since >= until:
        raise ApiError(400, "invalid_time", "since must be before until.")
    names = tuple(dict.fromkeys(e.strip() for e in events if e and e.strip()))
    for name in names:
        family = name[:-1] if name.endswith(".*") else None
        known = (
            any(e.startswith(family) for e in _KNOWN_EVENTS) if family else name in _KNOWN_EVENTS
        )
        if not known:
            raise ApiError(
                400,
                "unknown_event",
                f"Unknown audit event {name!r}; known: {', '.join(sorted(_KNOWN_EVENTS))}.",
            )
    if actor_id:
        try:
            actor_id = uuid.UUID(str(actor_id))
        except ValueError:
            raise ApiError(400, "invalid_actor", "actor must be a user id (UUID).") from None
    return ExportFilter(
        since=since,
        until=until,
        events=names,
        actor_id=actor_id or None,
        target_type=(target_type or "").strip(),
        target_id=(target_id or "").strip(),
    )


@dataclass
class AuditExport:
    """A validated, audited export of the current org's log, ready to stream."""

    fmt: str
    filters: ExportFilter
    total: int  # entries matching when the export started (rows added later may join)
    tenant: Any = field(repr=False, default=None)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]

    def lines(
        self, *, progress: audit.ProgressFn | None = None, chunk_size: int = 2000
    ) -> Iterator[str]:
        """The export, one text line at a time (CSV starts with its header row).

        Runs in the org the export was started in, even when a streaming response
        consumes it on another thread; reports `progress(done, total)` every 5,000 rows
        and at the end.
        """
        with tenant_context(self.tenant):
            if self.fmt == "csv":
                yield _csv_line(COLUMNS)
            done = 0
            for entry in self.filters.queryset().iterator(chunk_size=chunk_size):
                yield format_entry(audit.entry_fields(entry), self.fmt)
                done += 1
                if progress is not None and done % 5000 == 0:
                    progress(done, self.total)
            if progress is not None:
                progress(done, self.total)

    def write_to(self, out: IO[str], **kwargs: Any) -> int:
        """Write the whole export to a text stream; returns the number of entries."""
        lines = 0
        for line in self.lines(**kwargs):
            out.write(line)
            lines += 1
        return lines - (1 if self.fmt == "csv" else 0)


def check_export(*, fmt: str, filters: ExportFilter, actor: audit.Actor) -> AuditExport:
    """Start an export of the current org's log: validates the format and records
    `audit.exported` (who, format, filters, how many entries matched) before any row is
    read, so even an interrupted download is on record. The export entry itself is part
    of the export when no `until` excludes it."""
    fmt = (fmt or "").lower()
    if fmt not in FORMATS:
        raise ApiError(400, "invalid_format", f"Format must be one of: {', '.join(FORMATS)}.")
    matching = filters.queryset().count()
    audit.record(
        AuditEvent.AUDIT_EXPORTED,
        actor=actor,
        target_type="audit_log",
        target_id=connection.schema_name,
        data={"format": fmt, "filters": filters.describe(), "entries": matching},
    )
    return AuditExport(
        fmt=fmt, filters=filters, total=filters.queryset().count(), tenant=connection.tenant
    )


# --- formats ----------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# A cell starting with one of these is a formula to Excel, LibreOffice and Sheets: a
# User-Agent of `=HYPERLINK(...)` stored by a failed login would run when an auditor opens
# the export. OWASP's rule: prefix such a cell with a single quote, which spreadsheets
# show as "text" and hide. Cells already starting with a quote get one too, so
# `read_export` can remove exactly one and the export still verifies byte for byte.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def _neutralised(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _restored(value: str) -> str:
    return value[1:] if value.startswith("'") else value


def _csv_line(values: Iterable[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([_neutralised(v) for v in values])
    return buffer.getvalue()


def format_entry(fields: dict[str, Any], fmt: str) -> str:
    """One exported line. CSV writes `data` as compact JSON and nulls as empty cells
    (unambiguous: `actor_id` and `ip` are never empty strings)."""
    if fmt == "jsonl":
        return _json({name: fields[name] for name in COLUMNS}) + "\n"
    row = dict(fields, data=_json(fields["data"]))
    return _csv_line("" if row[name] is None else row[name] for name in COLUMNS)


def read_export(stream: IO[str], fmt: str) -> Iterator[dict[str, Any]]:
    """Parse an export back into the field dicts `audit.walk_chain` checks."""
    if fmt == "jsonl":
        for number, line in enumerate(stream, start=1):
            if line.strip():
                yield _parsed(json.loads(line), number)
        return
    reader = csv.DictReader(stream)
    if tuple(reader.fieldnames or ()) not in (COLUMNS, _UNKEYED_COLUMNS):
        raise ApiError(400, "invalid_export", f"CSV header must be: {','.join(COLUMNS)}.")
    for number, row in enumerate(reader, start=2):
        row = {k: _restored(v) if isinstance(v, str) else v for k, v in row.items()}
        row = dict(row, data=json.loads(row["data"]))
        yield _parsed(
            {k: (None if k in ("actor_id", "ip") and v == "" else v) for k, v in row.items()},
            number,
        )


def _parsed(row: dict[str, Any], line: int) -> dict[str, Any]:
    missing = [name for name in _UNKEYED_COLUMNS if name not in row]
    if missing:
        raise ApiError(400, "invalid_export", f"Line {line} lacks {', '.join(missing)}.")
    return dict(row, id=int(row["id"]), key_id=row.get("key_id") or audit.LEGACY_KEY_ID)


def verify_export(
    stream: IO[str], fmt: str, *, links: bool = True, from_start: bool = True
) -> audit.ChainReport:
    """Verify an exported file offline.

    With `links`, every entry must match its hash and link to the one before it, and
    (`from_start`) the first must be the log's first entry; a time-cut export
    (`from_start=False`) is checked from its first entry's `prev_hash` on. Without
    `links` (an export filtered by event, actor or target), only each entry's own hash is
    checked. Reads the stream twice (a seekable file) to tell a reordering from a deletion.
    """
    if not links:
        return _verify_entries_only(read_export(stream, fmt))
    index = {row["hash"]: row["id"] for row in read_export(stream, fmt)}
    stream.seek(0)
    rows = read_export(stream, fmt)
    first = next(rows, None)
    if first is None:
        return audit.ChainReport(True, 0, audit.GENESIS)

    def all_rows():
        yield first
        yield from rows

    start = audit.GENESIS if from_start else first["prev_hash"]
    return audit.walk_chain(all_rows(), locate=index.get, start_hash=start)


def _verify_entries_only(rows: Iterable[dict[str, Any]]) -> audit.ChainReport:
    count, last, keyed = 0, audit.GENESIS, False
    for row in rows:
        count += 1
        broken = audit.link_problem(row, keyed)
        if broken:
            return audit.ChainReport(False, count, last, row["id"], *broken)
        last, keyed = row["hash"], keyed or row["key_id"] != audit.LEGACY_KEY_ID
    return audit.ChainReport(True, count, last)
