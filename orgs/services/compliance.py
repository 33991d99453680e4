"""Compliance exports (eDiscovery): message metadata, membership changes, call records and
legal-hold contents of the current org, for a time range and a set of users.

Why a registry of sections rather than one module at the calls layer: each app knows what
it keeps and which of it a legal hold covers (messaging its messages and holds, calls its
call records, later e911 its emergency calls), and the export must follow the layering
`orgs` < `messaging` < `calls`. So each app registers its sections (`register_section`)
and its files of the legal-hold archive (`register_archive_part`) from its
AppConfig.ready(), exactly as it fills orgs.hooks; this module only validates the
request, audits it and streams what the sections yield. A new app joins the export
without anyone editing this file, and no layer imports one above it.

Guarantees:
- A section yields metadata only: ids, times, sizes. Never a message body, an envelope, a
  title or any other ciphertext (the legal-hold archive is the one place ciphertext is
  exported, and says so in its manifest).
- `check_export` validates everything (range, users, sections, format) and writes the
  `compliance.exported` audit entry before the first byte is streamed, so even an
  interrupted download is on record, and bad input is a 4xx, never a half-sent file.
- Streaming reads rows with server-side cursors in the org the export was started in,
  whatever thread drains it (siphera.streaming), so memory stays flat.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from orgs.accounts.models import User
from orgs.audit_events import AuditEvent
from orgs.services import audit

# The audit export's CSV line: cells neutralised against formulas (= + - @ tab CR).
from orgs.services.audit_export import _csv_line, parse_time
from siphera.api_errors import ApiError, not_found
from siphera.tenancy import tenant_context

FORMATS = ("jsonl", "csv", "zip")
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson",
    "zip": "application/zip",
}
MAX_USERS = 1000


@dataclass(frozen=True)
class ExportScope:
    """What to export: `since` inclusive, `until` exclusive; `user_ids` empty means
    everyone of the org."""

    since: dt.datetime
    until: dt.datetime
    user_ids: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "user_ids": list(self.user_ids),
        }


@dataclass(frozen=True)
class Section:
    """One kind of record in a metadata export. `rows(scope)` yields JSON-safe dicts with
    exactly `columns` as keys, oldest first; `count(scope)` says how many it will yield."""

    name: str
    app: str
    description: str
    columns: tuple[str, ...]
    rows: Callable[[ExportScope], Iterator[dict[str, Any]]]
    count: Callable[[ExportScope], int]


@dataclass(frozen=True)
class ArchiveFile:
    """A file of the legal-hold archive: its path in the archive, its bytes in pieces,
    and what it holds (`ciphertext` true when its bytes are end-to-end encrypted content
    the server cannot read)."""

    name: str
    pieces: Iterable[bytes]
    description: str = ""
    ciphertext: bool = False


# fn(scope) -> the files of this app's held contents in the scope.
ArchivePart = Callable[[ExportScope], Iterator[ArchiveFile]]

_sections: dict[str, Section] = {}
_archive_parts: list[ArchivePart] = []


def register_section(section: Section) -> Section:
    """Add a metadata section (from an AppConfig.ready()); re-registering a name replaces
    it (autoreload)."""
    _sections[section.name] = section
    return section


def register_archive_part(part: ArchivePart) -> ArchivePart:
    if part not in _archive_parts:
        _archive_parts.append(part)
    return part


def sections() -> dict[str, Section]:
    return dict(_sections)


def archive_parts() -> list[ArchivePart]:
    return list(_archive_parts)


def columns() -> tuple[str, ...]:
    """The CSV header: `section`, then every section's columns in registration order
    (a cell a section does not have stays empty)."""
    names: dict[str, None] = {"section": None}
    for section in _sections.values():
        for column in section.columns:
            names.setdefault(column, None)
    return tuple(names)


# --- validation ------------------------------------------------------------------------


def check_scope(
    *,
    since: str | dt.datetime | None,
    until: str | dt.datetime | None,
    user_ids: Iterable[str] = (),
) -> ExportScope:
    """Validate a range and users (as a form, a query string or a command line gives
    them): both ends required, `since` before `until`, at most
    `COMPLIANCE_EXPORT_MAX_DAYS` apart; each user an id of this org (another org's id is
    as unknown as a made-up one: 404)."""
    since = since if isinstance(since, dt.datetime) else parse_time(since, "since")
    until = until if isinstance(until, dt.datetime) else parse_time(until, "until")
    if since is None or until is None:
        raise ApiError(400, "invalid_range", "Both since and until are required.")
    if since >= until:
        raise ApiError(400, "invalid_range", "since must be before until.")
    max_days = settings.COMPLIANCE_EXPORT_MAX_DAYS
    if until - since > dt.timedelta(days=max_days):
        raise ApiError(
            400,
            "range_too_large",
            f"A range spans at most {max_days} days: export a long period in parts.",
            extra={"max_days": max_days},
        )
    ids: list[str] = []
    for raw in user_ids:
        for part in str(raw).split(","):
            if part.strip():
                ids.append(part.strip())
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_USERS:
        raise ApiError(400, "too_many_users", f"At most {MAX_USERS} users per export.")
    parsed = []
    for value in ids:
        try:
            parsed.append(str(uuid.UUID(value)))
        except ValueError:
            raise ApiError(400, "invalid_user", f"{value[:40]!r} is not a user id.") from None
    if parsed:
        found = {str(pk) for pk in User.objects.filter(pk__in=parsed).values_list("pk", flat=True)}
        missing = [pk for pk in parsed if pk not in found]
        if missing:
            raise not_found(f"No such user: {missing[0]}.")
    return ExportScope(since=since, until=until, user_ids=tuple(sorted(parsed)))


def check_sections(names: Iterable[str] = ()) -> tuple[str, ...]:
    """The named sections (a comma list is split), all of them when none is named."""
    wanted = [n.strip() for raw in names for n in str(raw).split(",") if n.strip()]
    if not wanted:
        return tuple(_sections)
    unknown = [n for n in wanted if n not in _sections]
    if unknown:
        raise ApiError(
            400,
            "unknown_section",
            f"Unknown section {unknown[0][:40]!r}; known: {', '.join(_sections)}.",
        )
    return tuple(dict.fromkeys(wanted))


# --- the export ------------------------------------------------------------------------


@dataclass
class ComplianceExport:
    """A validated, audited export of the current org, ready to stream."""

    fmt: str
    scope: ExportScope
    section_names: tuple[str, ...]
    counts: dict[str, int]
    tenant: Any = field(repr=False, default=None)

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.fmt]

    @property
    def filename(self) -> str:
        day = f"{self.scope.since:%Y%m%d}-{self.scope.until:%Y%m%d}"
        kind = "legal-hold" if self.fmt == "zip" else "compliance"
        return f"{kind}-{getattr(self.tenant, 'slug', 'org')}-{day}.{self.fmt}"

    def pieces(self) -> Iterator[bytes | str]:
        """The export in pieces (lines for JSONL and CSV, byte blocks for the archive),
        read in the org it was started in, on whatever thread drains it."""
        with tenant_context(self.tenant):
            if self.fmt == "zip":
                from orgs.services.compliance_archive import archive_pieces

                yield from archive_pieces(self.scope, self.counts)
                return
            header = columns()
            if self.fmt == "csv":
                yield _csv_line(header)
            for name in self.section_names:
                for row in _sections[name].rows(self.scope):
                    if self.fmt == "jsonl":
                        yield _json({"section": name, **row}) + "\n"
                    else:
                        cells = {"section": name, **row}
                        yield _csv_line(_cell(cells.get(column)) for column in header)

    def write_to(self, out) -> int:
        """Write the whole export to a binary stream; returns the bytes written."""
        written = 0
        for piece in self.pieces():
            data = piece.encode() if isinstance(piece, str) else piece
            out.write(data)
            written += len(data)
        return written


def check_export(
    *,
    fmt: str,
    scope: ExportScope,
    section_names: Iterable[str] = (),
    actor: audit.Actor,
) -> ComplianceExport:
    """Start an export: validates the format and sections, counts what each section will
    yield and records `compliance.exported` (who, range, users, format, sections, counts)
    before anything is streamed. `zip` is the legal-hold archive: held contents with their
    ciphertext and a manifest (orgs.services.compliance_archive)."""
    fmt = (fmt or "").lower()
    if fmt not in FORMATS:
        raise ApiError(400, "invalid_format", f"Format must be one of: {', '.join(FORMATS)}.")
    names = ("legal_hold_archive",) if fmt == "zip" else check_sections(section_names)
    counts = {} if fmt == "zip" else {name: _sections[name].count(scope) for name in names}
    with transaction.atomic():
        audit.record(
            AuditEvent.COMPLIANCE_EXPORTED,
            actor=actor,
            target_type="org",
            target_id=connection.schema_name,
            data={"format": fmt, **scope.describe(), "sections": list(names), "counts": counts},
        )
    return ComplianceExport(
        fmt=fmt, scope=scope, section_names=names, counts=counts, tenant=connection.tenant
    )


# --- formats ---------------------------------------------------------------------------


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return _json(value)
    return value


def iso(value: dt.datetime | None) -> str | None:
    """A time as exports write it (ISO 8601 with its offset), or None."""
    return value.isoformat() if value else None
