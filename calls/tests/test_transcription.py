"""Transcription of a compliance recording, and who may read it.

A recording made from espeak-ng speech (Debian's package, scripts/ensure_espeak.sh) is
stored encrypted like the recorder stores one; the worker's transcription job
(PocketSphinx) writes a transcript holding the spoken words. A compliance officer reads
the audio and the transcript and finds it by a word; every read is audited; a member is
refused (403) and another org's compliance officer sees nothing (404).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
import wave
from array import array
from datetime import timedelta

import pytest
from django.utils import timezone

from calls.models import Call, CallParticipant, Recording
from calls.services import recording
from calls.services.recording_audio import RATE, wav_header
from calls.tests.recording_support import eventually_value
from orgs.accounts.models import AuditEntry
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, make_user

SPOKEN = "please call me tomorrow morning about the quarterly report"
WORDS = ("tomorrow", "morning")


def speech_pcm(tmp_path) -> bytes:
    """espeak-ng's voice saying SPOKEN, as 16 kHz mono s16."""
    assert shutil.which("espeak-ng"), "run scripts/ensure_espeak.sh (make test does)"
    path = tmp_path / "speech.wav"
    # A little slower than espeak's default, with short gaps between words: clear speech
    # for PocketSphinx's general model (PITFALLS 21).
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "130", "-g", "5", "-w", str(path), SPOKEN], check=True
    )
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (1, 2)
        samples = array("h", wav.readframes(wav.getnframes()))
        converted = resample(samples, wav.getframerate(), RATE).tobytes()
    return bytes(RATE * 2) + converted + bytes(RATE * 2)  # a second of silence either side


def resample(samples: array, rate: int, to: int) -> array:
    """Mono s16 `samples` at `rate` as samples at `to`, by linear interpolation (espeak-ng
    speaks at 22,050 Hz; its speech has little above 8 kHz to fold back)."""
    count = len(samples) * to // rate
    out = array("h", bytes(2 * count))
    last = len(samples) - 1
    for i in range(count):
        position = i * rate / to
        j = int(position)
        a, b = samples[j], samples[min(j + 1, last)]
        out[i] = int(a + (b - a) * (position - j))
    return out


def stereo(left: bytes) -> bytes:
    samples = array("h", left)
    out = array("h", bytes(len(left) * 2))
    out[0::2] = samples
    return out.tobytes()


@pytest.fixture
def recorded_org(media_root, tmp_path, celery_worker):
    """An org with one ended call whose recording (the caller saying SPOKEN) is stored."""
    org = create_org(f"tr{uuid.uuid4().hex[:6]}", f"tr{uuid.uuid4().hex[:6]}.test")
    alice, bob = make_user(org), make_user(org)
    pcm = speech_pcm(tmp_path)
    frames = len(pcm) // 2

    def make():
        now = timezone.now()
        call = Call.objects.create(
            media="audio",
            state=Call.ENDED,
            outcome=Call.COMPLETED,
            caller=alice,
            caller_device_id=1,
            answered_at=now - timedelta(seconds=frames / RATE),
            ended_at=now,
        )
        CallParticipant.objects.create(call=call, user=alice, role="caller", device_id=1)
        CallParticipant.objects.create(call=call, user=bob, role="callee", device_id=1)
        rec = Recording.objects.create(call=call, started_at=call.answered_at, ended_at=now)
        return recording.do_store_recording(
            rec.pk,
            duration_ms=frames * 1000 // RATE,
            pieces=[wav_header(frames), stereo(pcm)],
        )

    return org, in_tenant(org, make)


def test_a_recording_of_speech_is_transcribed_and_only_compliance_officers_read_it(
    recorded_org, new_session, server
):
    org, rec = recorded_org
    done = eventually_value(
        lambda: in_tenant(org, Recording.objects.filter(pk=rec.pk, transcript_state="done").first),
        within=120,
    )
    assert done.transcript_engine == "pocketsphinx"
    assert "tomorrow" not in done.transcript_encrypted  # encrypted at rest

    officer = new_session(org, role="compliance_officer")
    transcript = officer.api.get(f"/api/v1/org/recordings/{rec.pk}/transcript")
    assert transcript.status_code == 200, transcript.text
    text = transcript.json()["text"]
    assert all(word in text for word in WORDS), text
    assert {s["speaker"] for s in transcript.json()["segments"]} == {"caller"}
    audio = officer.api.get(f"/api/v1/org/recordings/{rec.pk}/audio")
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
    found = officer.api.get("/api/v1/org/recordings", params={"q": "tomorrow"})
    assert [r["id"] for r in found.json()["recordings"]] == [str(rec.pk)]
    assert found.json()["recordings"][0]["matches"]

    accessed = in_tenant(
        org,
        lambda: list(
            AuditEntry.objects.filter(event="call.recording_accessed").values_list(
                "data", flat=True
            )
        ),
    )
    assert sorted(d["what"] for d in accessed) == ["audio", "transcript"]

    member = new_session(org)
    admin = new_session(org, role="admin")
    for session in (member, admin):
        for path in ("transcript", "audio"):
            response = session.api.get(f"/api/v1/org/recordings/{rec.pk}/{path}")
            assert response.status_code == 403, (session.user.role, path)
        assert session.api.get("/api/v1/org/recordings").status_code == 403

    other = new_session(create_org(f"tx{uuid.uuid4().hex[:6]}"), role="compliance_officer")
    for path in ("transcript", "audio"):
        response = other.api.get(f"/api/v1/org/recordings/{rec.pk}/{path}")
        assert response.status_code == 404
    assert other.api.get("/api/v1/org/recordings").json()["recordings"] == []
