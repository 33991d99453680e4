"""Reading compliance recordings: holders of `recordings.read` only (the Compliance
Officer role and owners). Every list, search, audio fetch and transcript fetch is
audited in the same transaction as the read; anyone else, another org included, gets the
same 404 for an id (the API refuses them earlier with 403).

Transcript search decrypts transcripts on the server and matches the words in Python:
fine at this scale (the newest `SEARCH_MAX` transcripts are searched), not a full-text
index.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from django.db import transaction

from calls.models import Recording
from calls.services import recording_store, transcription
from orgs.audit_events import AuditEvent
from orgs.services import audit
from siphera.api_errors import ApiError, not_found

SEARCH_MAX = 500
PAGE = 100
QUERY_MAX = 200


def recording_payload(rec: Recording) -> dict:
    return {
        "id": str(rec.pk),
        "call_id": str(rec.call_id),
        "state": rec.state,
        "created_at": rec.created_at.isoformat(),
        "started_at": rec.started_at.isoformat() if rec.started_at else None,
        "ended_at": rec.ended_at.isoformat() if rec.ended_at else None,
        "duration_ms": rec.duration_ms,
        "size": rec.size,
        "transcript": rec.transcript_state or None,
    }


def access_recording(recording_id) -> Recording:
    try:
        return Recording.objects.get(pk=uuid.UUID(str(recording_id)))
    except (Recording.DoesNotExist, ValueError):
        raise not_found("No such recording.") from None


def check_search(*, query: str = "", actor: audit.Actor) -> list[dict]:
    """Recordings newest first; with `query`, those whose transcript holds every word of
    it (case-insensitive), each with its matching lines. Audited."""
    query = (query or "").strip()
    if len(query) > QUERY_MAX:
        raise ApiError(400, "invalid_query", f"A search is at most {QUERY_MAX} characters.")
    words = query.lower().split()
    rows = Recording.objects.order_by("-created_at")
    out = []
    if words:
        for rec in rows.exclude(transcript_encrypted="")[:SEARCH_MAX]:
            transcript = transcription.transcript_of(rec)
            text = transcript["text"].lower()
            if all(w in text for w in words):
                lines = [
                    s for s in transcript["segments"] if any(w in s["text"].lower() for w in words)
                ]
                out.append({**recording_payload(rec), "matches": lines[:20]})
            if len(out) >= PAGE:
                break
    else:
        out = [recording_payload(rec) for rec in rows[:PAGE]]
    with transaction.atomic():
        audit.record(
            AuditEvent.CALL_RECORDINGS_SEARCHED,
            actor=actor,
            target_type="recordings",
            target_id="",
            data={"query": bool(words), "count": len(out)},
        )
    return out


def _audit_access(rec: Recording, what: str, actor: audit.Actor) -> None:
    audit.record(
        AuditEvent.CALL_RECORDING_ACCESSED,
        actor=actor,
        target_type="recording",
        target_id=rec.pk,
        data={"what": what, "call_id": str(rec.call_id)},
    )


def check_fetch_audio(rec: Recording, *, actor: audit.Actor) -> Iterator[bytes]:
    """The recording's WAV, decrypted a chunk at a time. 404 until it is stored."""
    if rec.state != Recording.STORED:
        raise not_found("This recording has no audio.")
    with transaction.atomic():
        _audit_access(rec, "audio", actor)
    return recording_store.read_decrypted(rec.pk, rec.data_key_encrypted, rec.storage_name)


def check_fetch_transcript(rec: Recording, *, actor: audit.Actor) -> dict:
    """The recording's transcript. 404 until it is done."""
    transcript = transcription.transcript_of(rec)
    if transcript is None:
        raise not_found("This recording has no transcript.")
    with transaction.atomic():
        _audit_access(rec, "transcript", actor)
    return transcript
