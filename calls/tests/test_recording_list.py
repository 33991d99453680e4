"""GET /api/v1/org/recordings a page at a time: each recording names its call's parties,
`limit` bounds the page (1-100), `next_before` leads to older ones without repeating any,
and a bad cursor or limit is a 400. The search pages the same way."""

from __future__ import annotations

from datetime import timedelta

import pytest

from calls.models import Recording
from calls.tests.recording_support import make_stored_recording, stereo_pcm, tone
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, make_user, unique

AUDIO = stereo_pcm(tone(440, 1), tone(880, 1))


def _transcript(words: str) -> dict:
    segment = {"start": 0.1, "end": 0.9, "speaker": "caller", "text": words}
    return {"engine": "pocketsphinx", "segments": [segment], "text": f"caller: {words}"}


@pytest.fixture
def five(media_root):
    """An org with five recordings between alice and bob, a minute apart, newest first;
    the odd ones mention the budget."""
    org = create_org(unique("rl"), f"{unique('h')}.test")
    alice, bob = make_user(org), make_user(org)
    made = []
    for n in range(5):
        words = "the budget is late" if n % 2 else "see you on monday"
        rec = in_tenant(
            org, make_stored_recording, alice, bob, audio=AUDIO, transcript=_transcript(words)
        )
        in_tenant(
            org,
            lambda rec=rec, n=n: Recording.objects.filter(pk=rec.pk).update(
                created_at=rec.created_at - timedelta(minutes=n)
            ),
        )
        made.append(str(rec.pk))
    return org, alice, bob, made


def _walk(api, **params) -> list[list[str]]:
    pages, before = [], None
    while True:
        query = {**params, **({"before": before} if before else {})}
        response = api.get("/api/v1/org/recordings", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([r["id"] for r in body["recordings"]])
        before = body["next_before"]
        if before is None:
            return pages


def test_recordings_come_a_page_at_a_time_with_their_parties(five, new_session):
    org, alice, bob, made = five
    officer = new_session(org, role="compliance_officer")
    first = officer.api.get("/api/v1/org/recordings", params={"limit": 2}).json()
    assert first["recordings"][0]["parties"] == [
        {"user_id": str(alice.pk), "role": "caller"},
        {"user_id": str(bob.pk), "role": "callee"},
    ]
    assert _walk(officer.api, limit=2) == [made[0:2], made[2:4], made[4:]]
    assert _walk(officer.api) == [made]
    found = _walk(officer.api, q="BUDGET", limit=1)
    assert found == [[made[1]], [made[3]], []]


def test_a_bad_limit_or_cursor_is_a_400(five, new_session):
    org, *_ = five
    officer = new_session(org, role="compliance_officer")
    for params in (
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "\u00b2"},
        {"before": "yesterday"},
        {"before": "2026-01-01T00:00:00"},  # no offset
    ):
        response = officer.api.get("/api/v1/org/recordings", params=params)
        assert response.status_code == 400, params
        assert response.json()["error"]["code"] == "invalid_query"


def test_audio_the_store_cannot_give_is_a_503_with_retry_after(five, new_session):
    from calls.services import recording_store

    org, alice, bob, made = five
    officer = new_session(org, role="compliance_officer")
    rec = in_tenant(org, Recording.objects.get, pk=made[0])
    in_tenant(org, lambda: recording_store.storage().delete(rec.storage_name))
    response = officer.api.get(f"/api/v1/org/recordings/{rec.pk}/audio")
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.json()["error"]["code"] == "storage_unavailable"
    # The others still play.
    assert officer.api.get(f"/api/v1/org/recordings/{made[1]}/audio").content[:4] == b"RIFF"
