"""Key rotation over compliance recordings (orgs.services.key_rotation; calls registers
Recording's wrapped data key, held answer and transcript): after a new key is promoted and
`rotate_keys` runs, every recording still decrypts to the same audio and its transcript to
the same text, the blob itself is not rewritten, no recording row uses the old key, and
the old key can retire.

The key ring is the test's own (orgs/tests/test_key_rotation.py's `ring` fixture): the
run's other orgs, under the run's keys, are not touched.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.fernet import InvalidToken

from calls.models import Call, CallParticipant, Recording
from calls.services import transcription
from calls.tests.recording_support import (
    make_stored_recording,
    recording_audio,
    stereo_pcm,
    tone,
)
from orgs.tests.test_key_rotation import command, new_active_key, opens_with_only, ring
from siphera import crypto, keyring
from siphera.tenancy import in_tenant
from tests.fixtures import make_user

__all__ = ["ring"]  # a fixture

COLUMNS = ("data_key_encrypted", "held_accept_encrypted", "transcript_encrypted")


def _tokens(org) -> dict[tuple[str, str], str]:
    """Every key-ring token on the org's recording rows, by (recording id, column)."""
    rows = in_tenant(org, lambda: list(Recording.objects.values("pk", *COLUMNS)))
    return {(str(row["pk"]), c): row[c] for row in rows for c in COLUMNS if row[c]}


def _ringing_call_with_a_held_answer(caller, callee) -> Recording:
    """A recorded call whose callee answered before the legs connected: the answer is held
    on the recording row (calls.services.recording.hold_accept)."""
    call = Call.objects.create(media="audio", state=Call.ACTIVE, caller=caller, caller_device_id=1)
    CallParticipant.objects.create(call=call, user=caller, role="caller", device_id=1)
    CallParticipant.objects.create(call=call, user=callee, role="callee", device_id=2)
    answer = {"type": "call.accept", "call_id": str(call.pk), "sdp": "v=0 held answer"}
    return Recording.objects.create(
        call=call, held_accept_encrypted=crypto.encrypt(json.dumps(answer))
    )


def test_rotation_rewraps_recordings_which_still_decrypt_and_the_old_key_retires(ring, media_root):
    # Given two stored recordings (audio and transcript) and a held answer, under the key
    org = ring()
    alice, bob = make_user(org), make_user(org)
    audio = [stereo_pcm(tone(440, 1), tone(880 + 110 * i, 1)) for i in range(2)]
    texts = [{"engine": "pocketsphinx", "segments": [], "text": f"call {i}"} for i in range(2)]
    stored = [
        in_tenant(org, make_stored_recording, alice, bob, audio=a, transcript=t)
        for a, t in zip(audio, texts, strict=True)
    ]
    held = in_tenant(org, _ringing_call_with_a_held_answer, alice, bob)
    answer = crypto.decrypt(held.held_accept_encrypted)
    blobs = {rec.pk: (Path(media_root) / rec.storage_name).read_bytes() for rec in stored}
    before = _tokens(org)
    assert len(before) == 5
    old = keyring.active()

    # When a new key is promoted and the job runs over the org
    new = new_active_key()
    out = command("--org", org.slug)
    assert f"re-encrypted under key {new.id}" in out

    # Then every token on a recording row is new, opens with the new key alone, not the old
    after = _tokens(org)
    assert after.keys() == before.keys()
    for name, token in after.items():
        assert token != before[name], name
        assert not crypto.needs_rotation(token), name
        assert opens_with_only(new, token) == crypto.decrypt(before[name])
        with pytest.raises(InvalidToken):
            opens_with_only(old, token)

    # ... each recording decrypts to the same audio, from the same blob bytes, and its
    # transcript to the same text; the held answer is the same answer
    for rec, pcm, text in zip(stored, audio, texts, strict=True):
        now = in_tenant(org, Recording.objects.get, pk=rec.pk)
        assert (Path(media_root) / now.storage_name).read_bytes() == blobs[rec.pk]
        assert in_tenant(org, recording_audio, now)[44:] == pcm
        assert transcription.transcript_of(now) == text
    held_now = in_tenant(org, Recording.objects.get, pk=held.pk)
    assert crypto.decrypt(held_now.held_accept_encrypted) == answer

    # ... and the old key, which no recording uses any more, retires
    assert f"key {old.id} retired" in command("--retire", old.id)
    for rec, pcm in zip(stored, audio, strict=True):
        now = in_tenant(org, Recording.objects.get, pk=rec.pk)
        assert in_tenant(org, recording_audio, now)[44:] == pcm
