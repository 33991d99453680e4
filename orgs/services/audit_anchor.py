"""Signed anchors of each org's audit chain head, kept outside the database.

An anchor says "on `anchored_at`, entry `entry_id` of org `schema` was the head of its
audit chain and had hash `hash`", signed with an HMAC-SHA256 key derived from the key ring
(siphera.mac_keys, purpose ANCHOR_PURPOSE; `key_id` names the key). Anchors are appended,
one JSON object a line, to `<AUDIT_ANCHOR_DIR>/<schema>.jsonl` (a directory the operator
keeps apart from the database and backs up) and written to the JSON log as well, so that
someone who can only write to the database cannot make the log shorter than an anchor
says it was: `audit.verify_chain` checks the latest anchor automatically.

This module only stores and reads anchors; deciding when a head may be anchored (only
when the entries since the last anchor link to it) is `audit.do_anchor_head`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from siphera import mac_keys

ANCHOR_PURPOSE = "audit anchor"
_VERSION = 1
_SCHEMA_NAME = re.compile(r"[a-z0-9_]{1,63}")
_SIGNED = ("v", "schema", "entry_id", "hash", "entry_ts", "anchored_at", "key_id")

log = logging.getLogger("siphera.audit")


@dataclass(frozen=True)
class Anchor:
    """One checkpoint of an org's chain head."""

    schema: str
    entry_id: int
    hash: str
    entry_ts: str  # the entry's own time (ISO 8601, UTC)
    anchored_at: str  # when the anchor was written (ISO 8601, UTC)
    key_id: str
    mac: str = ""

    def signed_bytes(self) -> bytes:
        body = dict(asdict(self), v=_VERSION)
        return json.dumps(
            {name: body[name] for name in _SIGNED}, sort_keys=True, separators=(",", ":")
        ).encode()

    def line(self) -> str:
        return json.dumps(dict(asdict(self), v=_VERSION), sort_keys=True) + "\n"


@dataclass(frozen=True)
class Latest:
    """The newest anchor of an org that verifies, and how many newer lines did not (a key
    no longer in SECRET_KEYS, or a line that was altered)."""

    anchor: Anchor | None
    unverified: int = 0
    error: str = ""  # the anchor file could not be read (truncation was not checked)

    @property
    def note(self) -> str:
        if self.error:
            return f"anchors could not be read ({self.error}): a log cut short is not detected"
        if not self.unverified:
            return ""
        return (
            f"{self.unverified} newer anchor line(s) did not verify (made with a key no longer "
            "in SECRET_KEYS, or altered) and were ignored"
        )


def anchor_path(schema: str) -> Path:
    """The org's anchor file."""
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"{schema!r} is not an org schema name")
    return Path(settings.AUDIT_ANCHOR_DIR) / f"{schema}.jsonl"


def write(schema: str, *, entry_id: int, hash: str, entry_ts: str) -> Anchor:
    """Sign and append one anchor to the org's file (created 0600, its directory 0700,
    synced to disk before returning), and log it as a JSON line (`audit anchor written`).
    Raises OSError when the directory cannot be written."""
    key = mac_keys.newest(ANCHOR_PURPOSE)
    anchor = Anchor(
        schema=schema,
        entry_id=entry_id,
        hash=hash,
        entry_ts=entry_ts,
        anchored_at=timezone.now().isoformat(),
        key_id=key.id,
    )
    anchor = replace(anchor, mac=key.sign(anchor.signed_bytes()))
    path = anchor_path(schema)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # One write() of one short line with O_APPEND: concurrent writers (beat's task and a
    # verify_audit run) never interleave inside a line.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, anchor.line().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    log.info("audit anchor written", extra={"anchor": asdict(anchor)})
    return anchor


def latest(schema: str) -> Latest:
    """The org's newest anchor that verifies with a key of the ring (reading the file from
    its end), or an empty Latest when the org has none, or (logged as an error) when the
    file cannot be read."""
    unverified = 0
    path = anchor_path(schema)
    try:
        for raw in _lines_backwards(path):
            anchor = _parsed(raw, schema)
            if anchor is not None:
                return Latest(anchor, unverified)
            unverified += 1
    except OSError as exc:
        log.error("audit anchors unreadable", extra={"path": str(path), "error": str(exc)})
        return Latest(None, unverified, error=f"{path}: {exc.strerror or exc}")
    return Latest(None, unverified)


def _parsed(raw: bytes, schema: str) -> Anchor | None:
    try:
        body = json.loads(raw)
        anchor = Anchor(**{name: body[name] for name in Anchor.__dataclass_fields__})
    except (ValueError, TypeError, KeyError):
        return None
    if body.get("v") != _VERSION or anchor.schema != schema:
        return None  # a line copied from another org's file does not count for this one
    if not isinstance(anchor.entry_id, int) or not isinstance(anchor.hash, str):
        return None
    key = mac_keys.find(ANCHOR_PURPOSE, str(anchor.key_id))
    return anchor if key and key.verifies(anchor.signed_bytes(), str(anchor.mac)) else None


def _lines_backwards(path: Path, block: int = 65536) -> Iterator[bytes]:
    """The file's non-empty lines, last first, reading blocks from the end (an anchor file
    grows for as long as the org exists; the newest line is what is wanted)."""
    try:
        stream = path.open("rb")
    except FileNotFoundError:
        return
    with stream:
        pos = stream.seek(0, os.SEEK_END)
        rest = b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            stream.seek(pos)
            lines = (stream.read(step) + rest).split(b"\n")
            rest = lines[0]
            for line in reversed(lines[1:]):
                if line.strip():
                    yield line
        if rest.strip():
            yield rest
