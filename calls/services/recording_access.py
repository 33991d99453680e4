"""Reading compliance recordings: holders of `recordings.read` only (the Compliance
Officer role and owners). Every list, search, audio fetch and transcript fetch is
audited in the same transaction as the read; anyone else, another org included, gets the
same 404 for an id (the API refuses them earlier with 403).

Transcript search decrypts transcripts on the server and matches the words in Python:
fine at this scale (the newest `SEARCH_MAX` transcripts are searched), not a full-text
index.
"""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction

from calls.error_codes import CallError
from calls.models import CallParticipant, Recording
from calls.services import recording_store, records, transcription
from orgs.audit_events import AuditEvent
from orgs.services import audit
from siphera.api_errors import ApiError, not_found

log = logging.getLogger("siphera.recordings")

SEARCH_MAX = 500
STORAGE_RETRY_AFTER_SECONDS = 30
PAGE = 100
QUERY_MAX = 200


@dataclass
class Page:
    recordings: list[dict]
    # Where the next (older) page starts: the `before` to ask with, None at the end.
    next_before: str | None


def recording_payload(rec: Recording, parties: list[CallParticipant] = ()) -> dict:
    """What a reader sees of a recording (never its storage name or keys); `parties` are
    the call's caller and callee, caller first."""
    return {
        "id": str(rec.pk),
        "call_id": str(rec.call_id),
        "parties": [
            {"user_id": str(p.user_id), "role": p.role}
            for p in sorted(parties, key=lambda p: (p.role != CallParticipant.CALLER, p.pk))
        ],
        "state": rec.state,
        "created_at": rec.created_at.isoformat(),
        "started_at": rec.started_at.isoformat() if rec.started_at else None,
        "ended_at": rec.ended_at.isoformat() if rec.ended_at else None,
        "duration_ms": rec.duration_ms,
        "size": rec.size,
        "transcript": rec.transcript_state or None,
    }


def parties_of(recordings) -> dict[uuid.UUID, list[CallParticipant]]:
    """The participants of each recording's call (call id -> rows), in one query."""
    out: dict[uuid.UUID, list[CallParticipant]] = {}
    calls = [rec.call_id for rec in recordings]
    for part in CallParticipant.objects.filter(call_id__in=calls):
        out.setdefault(part.call_id, []).append(part)
    return out


def access_recording(recording_id) -> Recording:
    try:
        return Recording.objects.get(pk=uuid.UUID(str(recording_id)))
    except (Recording.DoesNotExist, ValueError):
        raise not_found("No such recording.") from None


def parse_page(params) -> tuple[datetime | None, int]:
    """`before` and `limit` (1-PAGE, default PAGE) of a recordings page; 400
    `invalid_query` when malformed."""
    return records.parse_page(params, default=PAGE, hi=PAGE, code="invalid_query")


def check_search(
    *,
    query: str = "",
    actor: audit.Actor,
    before: datetime | None = None,
    limit: int = PAGE,
) -> Page:
    """Recordings newest first, created before `before`, at most `limit`; with `query`,
    those whose transcript holds every word of it (case-insensitive), each with its
    matching lines. A search reads at most SEARCH_MAX transcripts per page: when it
    stops there, `next_before` says where to go on. Audited."""
    query = (query or "").strip()
    if len(query) > QUERY_MAX:
        raise ApiError(400, "invalid_query", f"A search is at most {QUERY_MAX} characters.")
    limit = max(1, min(limit, PAGE))
    words = query.lower().split()
    rows = Recording.objects.order_by("-created_at")
    if before is not None:
        rows = rows.filter(created_at__lt=before)
    found: list[tuple[Recording, list]] = []
    next_before = None
    if words:
        scanned = list(rows.exclude(transcript_encrypted="")[:SEARCH_MAX])
        for index, rec in enumerate(scanned):
            transcript = transcription.transcript_of(rec)
            text = transcript["text"].lower()
            if all(w in text for w in words):
                lines = [
                    s for s in transcript["segments"] if any(w in s["text"].lower() for w in words)
                ]
                found.append((rec, lines[:20]))
            if len(found) >= limit:
                more = index + 1 < len(scanned) or len(scanned) == SEARCH_MAX
                next_before = rec.created_at.isoformat() if more else None
                break
        else:
            if len(scanned) == SEARCH_MAX:
                next_before = scanned[-1].created_at.isoformat()
    else:
        page = list(rows[: limit + 1])
        if len(page) > limit:
            page = page[:limit]
            next_before = page[-1].created_at.isoformat()
        found = [(rec, None) for rec in page]
    parties = parties_of([rec for rec, _ in found])
    out = []
    for rec, lines in found:
        payload = recording_payload(rec, parties.get(rec.call_id, []))
        if lines is not None:
            payload["matches"] = lines
        out.append(payload)
    with transaction.atomic():
        audit.record(
            AuditEvent.CALL_RECORDINGS_SEARCHED,
            actor=actor,
            target_type="recordings",
            target_id="",
            data={"query": bool(words), "count": len(out)},
        )
    return Page(out, next_before)


def _audit_access(rec: Recording, what: str, actor: audit.Actor) -> None:
    audit.record(
        AuditEvent.CALL_RECORDING_ACCESSED,
        actor=actor,
        target_type="recording",
        target_id=rec.pk,
        data={"what": what, "call_id": str(rec.call_id)},
    )


def check_fetch_audio(rec: Recording, *, actor: audit.Actor) -> Iterator[bytes]:
    """The recording's WAV, decrypted a chunk at a time. 404 until it is stored.

    The blob is opened and its first chunk decrypted before anything is audited or
    answered, so a fault is a clear answer instead of a download cut off after its
    headers: 503 `storage_unavailable` (Retry-After) when the blob store cannot give the
    blob (a missing file, a disk or bucket failure), 503 `recording_unreadable` when it
    does not decrypt as this recording's (its data key's key-ring key is gone, or the
    blob was replaced or truncated). Either is logged; neither is audited as an access."""
    if rec.state != Recording.STORED:
        raise not_found("This recording has no audio.")
    pieces = recording_store.read_decrypted(rec.pk, rec.data_key_encrypted, rec.storage_name)
    try:
        first = next(pieces)
    except recording_store.CorruptRecording as exc:
        log.error("recording does not decrypt", extra={"recording": str(rec.pk), "why": str(exc)})
        raise ApiError(
            503,
            CallError.RECORDING_UNREADABLE,
            "The recording's audio does not decrypt; the operator has the details in the "
            "server log.",
        ) from None
    except Exception:
        log.exception("recording storage failed", extra={"recording": str(rec.pk)})
        raise ApiError(
            503,
            CallError.STORAGE_UNAVAILABLE,
            "The recording's audio cannot be read from storage now. Try again later.",
            headers={"Retry-After": str(STORAGE_RETRY_AFTER_SECONDS)},
        ) from None
    with transaction.atomic():
        _audit_access(rec, "audio", actor)
    return itertools.chain([first], pieces)


def check_fetch_transcript(rec: Recording, *, actor: audit.Actor) -> dict:
    """The recording's transcript. 404 until it is done."""
    transcript = transcription.transcript_of(rec)
    if transcript is None:
        raise not_found("This recording has no transcript.")
    with transaction.atomic():
        _audit_access(rec, "transcript", actor)
    return transcript
