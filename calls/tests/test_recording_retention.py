"""Recordings at the end of retention: the worker's call-record purge deletes a recording
past the org's retention with its call, its transcript and its stored blob; a legal hold on
a party keeps all three (until it is released); a recent recording and another org's stay.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

from calls import tasks
from calls.models import Call, Recording
from calls.tests.recording_support import (
    make_stored_recording,
    recording_audio,
    stereo_pcm,
    tone,
)
from messaging.services import retention
from orgs.accounts.models import AuditEntry
from orgs.services import audit
from siphera.tenancy import in_tenant, send_task
from tests.fixtures import create_org, make_user, unique

SYSTEM = audit.Actor.system("tests")
TRANSCRIPT = {"engine": "pocketsphinx", "segments": [], "text": "caller: quarterly report"}
EXPIRED = timedelta(days=400)  # the org keeps 30 days (RETENTION_DEFAULT_DAYS)


def _purges(org) -> list[dict]:
    return in_tenant(
        org,
        lambda: list(
            AuditEntry.objects.filter(event="call.records_purged")
            .order_by("id")
            .values_list("data", flat=True)
        ),
    )


def _purge_on_worker(org) -> dict:
    """One run of the call-record purge of `org`, on the worker; its audit entry's data."""
    before = len(_purges(org))
    send_task(tasks.purge_call_records, org=org)
    deadline = time.monotonic() + 90
    while len(_purges(org)) == before:
        assert time.monotonic() < deadline, "the worker ran no purge"
        time.sleep(0.25)
    return _purges(org)[-1]


def _recording(org, caller, callee, *, ended_ago=None) -> Recording:
    audio = stereo_pcm(tone(440, 1.5), tone(880, 1.5))
    return in_tenant(
        org,
        make_stored_recording,
        caller,
        callee,
        audio=audio,
        transcript=TRANSCRIPT,
        ended_ago=ended_ago,
    )


def _row(org, rec) -> Recording | None:
    return in_tenant(org, Recording.objects.filter(pk=rec.pk).first)


def test_an_expired_recording_goes_with_its_transcript_and_blob_and_a_held_one_stays(
    celery_worker, media_root
):
    # Given an org with three recorded calls: two past retention (one with Carol, who is
    # under legal hold) and a recent one; and another org's expired recording
    org, other = create_org(unique("rr")), create_org(unique("rr"))
    alice, bob, carol = (make_user(org) for _ in range(3))
    expired = _recording(org, alice, bob, ended_ago=EXPIRED)
    held = _recording(org, carol, bob, ended_ago=EXPIRED)
    recent = _recording(org, alice, bob)
    theirs = _recording(other, make_user(other), make_user(other), ended_ago=EXPIRED)
    blobs = {rec.pk: Path(media_root) / rec.storage_name for rec in (expired, held, recent)}
    assert all(path.is_file() for path in blobs.values())  # the run's media root, shared
    hold = in_tenant(
        org, retention.check_place_hold, user_id=str(carol.pk), reason="case 19", actor=SYSTEM
    )
    held_audio = in_tenant(org, recording_audio, held)

    # When the worker purges the org's call records
    report = _purge_on_worker(org)

    # Then the expired recording is gone: call, recording row (and so its transcript), blob
    assert report["deleted"] == 1
    assert _row(org, expired) is None
    assert not in_tenant(org, Call.objects.filter(pk=expired.call_id).exists)
    assert not blobs[expired.pk].exists()
    # ... the held one keeps all three, and still decrypts to the same audio
    kept = _row(org, held)
    assert kept is not None and kept.transcript_encrypted == held.transcript_encrypted
    assert blobs[held.pk].is_file() and in_tenant(org, recording_audio, kept) == held_audio
    # ... the recent one stays, and another org's purge is its own
    assert _row(org, recent) is not None and blobs[recent.pk].is_file()
    assert _row(other, theirs) is not None
    assert (Path(media_root) / theirs.storage_name).is_file()

    # When the hold is released, the next run deletes the held recording as well
    in_tenant(org, retention.check_release_hold, hold, actor=SYSTEM, reason="case closed")
    assert _purge_on_worker(org)["deleted"] == 1
    assert _row(org, held) is None and not blobs[held.pk].exists()
    assert _row(org, recent) is not None and blobs[recent.pk].is_file()
