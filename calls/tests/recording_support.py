"""A deployment for compliance-recording tests: coturn, a Siphera server and a Celery
worker (which starts the recorders) sharing one queue and TURN configuration, and an org
of their own whose policy records calls."""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from calls.tests.coturn import Coturn, coturn
from tests.fixtures import LiveServer, _start_worker, create_org, server_with_env, stop_process

CONNECT_SECONDS = 15
LOST_GRACE_SECONDS = 6
SILENT_SECONDS = 8  # the recorder marks itself alive every 2 s


@dataclass
class RecordingDeployment:
    coturn: Coturn
    server: LiveServer
    worker_log: Path
    org: object


@pytest.fixture(scope="module")
def recording_deployment(_database, tmp_path_factory) -> Iterator[RecordingDeployment]:
    from django.conf import settings

    base = tmp_path_factory.mktemp("recording")
    secret = "recording-deployment-" + "r" * 24
    queue = f"{settings.CELERY_TASK_DEFAULT_QUEUE}-rec-{uuid.uuid4().hex[:6]}"
    env = {
        "CALL_RECORDING_CONNECT_SECONDS": str(CONNECT_SECONDS),
        "CALL_RECORDING_LOST_GRACE_SECONDS": str(LOST_GRACE_SECONDS),
        "CALL_RECORDER_SILENT_SECONDS": str(SILENT_SECONDS),
        "CELERY_QUEUE": queue,
    }
    org = create_org(f"rec{uuid.uuid4().hex[:6]}", f"rec{uuid.uuid4().hex[:6]}.test")
    with coturn(base / "coturn", secret) as turn:
        env.update(TURN_URLS=turn.urls(), TURN_SECRETS=secret)
        worker_log = base / "worker.log"
        with (
            server_with_env(base / "server.log", **env) as live,
            _worker(worker_log, queue, env),
        ):
            yield RecordingDeployment(coturn=turn, server=live, worker_log=worker_log, org=org)


@contextlib.contextmanager
def _worker(log_path: Path, queue: str, env: dict) -> Iterator[None]:
    """A Celery worker on `queue`, the one the server sends to (CELERY_QUEUE)."""
    proc = _start_worker(log_path, queue, ("--pool", "solo"), f"rec-{queue[-6:]}", **env)
    try:
        yield
    finally:
        stop_process(proc)


def eventually_value(fn, *, within: float = 60.0, step: float = 0.3):
    deadline = time.monotonic() + within
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(step)


def tone(hz: float, seconds: float, rate: int = 16000) -> array:
    """A sine tone as mono s16 samples."""
    return array(
        "h", (int(8000 * math.sin(2 * math.pi * hz * i / rate)) for i in range(int(seconds * rate)))
    )


def stereo_pcm(left: array, right: array) -> bytes:
    """Two mono s16 channels of one length, interleaved."""
    out = array("h", bytes(4 * len(left)))
    out[0::2], out[1::2] = left, right
    return out.tobytes()


def make_stored_recording(caller, callee, *, audio: bytes, transcript: dict, ended_ago=None):
    """In the current org: an ended call between `caller` and `callee` whose recording is
    stored as the recorder stores one (calls.services.recording_store: the blob encrypted
    with a data key wrapped by the key ring) with `audio` (a 16 kHz stereo WAV's samples)
    and `transcript` (encrypted as the transcription job stores it). Made here rather than
    by do_store_recording so that no transcription job is queued (its worker may hold
    another key ring than a test's). Returns the Recording."""
    from django.utils import timezone

    from calls.models import Call, CallParticipant, Recording
    from calls.services import recording_store
    from calls.services.recording_audio import RATE, wav_header
    from siphera import crypto

    frames = len(audio) // 4
    ended = timezone.now() - (ended_ago or timedelta(0))
    answered = ended - timedelta(seconds=frames / RATE)
    call = Call.objects.create(
        media="audio",
        state=Call.ENDED,
        outcome=Call.COMPLETED,
        end_reason="hangup",
        caller=caller,
        caller_device_id=1,
        answered_at=answered,
        ended_at=ended,
    )
    Call.objects.filter(pk=call.pk).update(created_at=answered)
    CallParticipant.objects.create(call=call, user=caller, role="caller", device_id=1)
    CallParticipant.objects.create(call=call, user=callee, role="callee", device_id=1)
    rec = Recording.objects.create(call=call, started_at=answered, ended_at=ended)
    key, wrapped = recording_store.new_data_key()
    name, size = recording_store.write_encrypted(rec.pk, key, [wav_header(frames), audio])
    Recording.objects.filter(pk=rec.pk).update(
        state=Recording.STORED,
        storage_name=name,
        size=size,
        data_key_encrypted=wrapped,
        duration_ms=frames * 1000 // RATE,
        transcript_state=Recording.T_DONE,
        transcript_engine="pocketsphinx",
        transcript_encrypted=crypto.encrypt(json.dumps(transcript)),
        transcribed_at=ended,
    )
    return Recording.objects.get(pk=rec.pk)


def recording_audio(rec) -> bytes:
    """The decrypted WAV of a stored recording (from the run's media root)."""
    from calls.services import recording_store

    return b"".join(
        recording_store.read_decrypted(rec.pk, rec.data_key_encrypted, rec.storage_name)
    )
