"""Transcription of stored recordings (the `calls.tasks.transcribe_recording` job).

Pluggable engines, chosen by `TRANSCRIPTION_ENGINE`:
- `pocketsphinx` (default): CMU PocketSphinx with the US English model its wheel ships,
  offline; each channel (caller, callee) is cut into utterances by its voice-activity
  segmenter and decoded with the general language model. Accuracy is modest (PITFALLS 21).
- `faster-whisper`: when installed and `TRANSCRIPTION_WHISPER_MODEL` names a local model
  directory (nothing is downloaded).
- `none`: no transcripts.

The transcript (JSON: segments with start/end seconds, speaker, text; and the whole text)
is stored as a key-ring token (`Recording.transcript_encrypted`), never in plaintext.
Progress goes to the job's log line by line.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import wave
from array import array
from collections.abc import Callable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from calls.models import Recording
from calls.services import recording_store
from calls.services.recording_audio import CHANNELS, RATE, channel_of
from siphera import crypto

log = logging.getLogger("siphera.transcription")

SPEAKERS = ("caller", "callee")
Progress = Callable[[float, float], None]


class Segment(dict):
    """{"start": s, "end": s, "speaker": str, "text": str}"""


def _pocketsphinx(pcm: bytes, progress: Progress) -> list[tuple[float, float, str]]:
    from pocketsphinx import Decoder, Segmenter

    decoder = Decoder(samprate=RATE, loglevel="FATAL")
    total = len(pcm) / 2 / RATE
    out = []
    for speech in Segmenter(sample_rate=RATE).segment(io.BytesIO(pcm)):
        decoder.start_utt()
        decoder.process_raw(speech.pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        if hyp is not None and hyp.hypstr.strip():
            out.append((speech.start_time, speech.end_time, hyp.hypstr.strip()))
        progress(min(speech.end_time, total), total)
    return out


def _faster_whisper(pcm: bytes, progress: Progress) -> list[tuple[float, float, str]]:
    from faster_whisper import WhisperModel  # optional: pip install faster-whisper

    model = WhisperModel(settings.TRANSCRIPTION_WHISPER_MODEL, device="cpu", compute_type="int8")
    samples = array("h", pcm)
    audio = [s / 32768.0 for s in samples]
    import numpy  # faster-whisper depends on it

    segments, info = model.transcribe(numpy.array(audio, dtype=numpy.float32))
    out = []
    for segment in segments:
        out.append((segment.start, segment.end, segment.text.strip()))
        progress(segment.end, info.duration)
    return out


ENGINES: dict[str, Callable[[bytes, Progress], list]] = {
    "pocketsphinx": _pocketsphinx,
    "faster-whisper": _faster_whisper,
}


def transcribe_wav(path: str, progress: Progress) -> dict:
    """The transcript of a recording's WAV (16 kHz stereo, or mono: one speaker)."""
    engine = ENGINES[settings.TRANSCRIPTION_ENGINE]
    with wave.open(path, "rb") as wav:
        if wav.getframerate() != RATE or wav.getsampwidth() != 2:
            raise ValueError("recordings are 16 kHz 16-bit PCM")
        channels = wav.getnchannels()
        samples = array("h", wav.readframes(wav.getnframes()))
    segments: list[Segment] = []
    for index in range(channels):
        pcm = channel_of(samples, index) if channels == CHANNELS else samples.tobytes()
        speaker = SPEAKERS[index] if channels == CHANNELS else "speaker"

        def step(done: float, total: float, index=index) -> None:
            progress(index * total + done, channels * total)

        for start, end, text in engine(pcm, step):
            segments.append(
                Segment(start=round(start, 2), end=round(end, 2), speaker=speaker, text=text)
            )
    segments.sort(key=lambda s: (s["start"], s["speaker"]))
    return {
        "engine": settings.TRANSCRIPTION_ENGINE,
        "segments": segments,
        "text": "\n".join(f"{s['speaker']}: {s['text']}" for s in segments),
    }


def do_transcribe(recording_id, *, progress: Progress) -> str:
    """Transcribe a stored recording; stores the encrypted transcript. Returns the state it
    left (`done`, `failed`, or unchanged when there is nothing to do)."""
    if settings.TRANSCRIPTION_ENGINE == "none":
        Recording.objects.filter(pk=recording_id).update(transcript_state=Recording.T_NONE)
        return Recording.T_NONE
    rec = Recording.objects.filter(pk=recording_id, state=Recording.STORED).first()
    if rec is None or rec.transcript_state == Recording.T_DONE:
        return rec.transcript_state if rec else ""
    Recording.objects.filter(pk=rec.pk).update(
        transcript_state=Recording.T_RUNNING, transcript_engine=settings.TRANSCRIPTION_ENGINE
    )
    log.info("transcription started", extra={"recording": str(rec.pk)})
    try:
        with tempfile.NamedTemporaryFile(suffix=".wav") as wav:
            for piece in recording_store.read_decrypted(
                rec.pk, rec.data_key_encrypted, rec.storage_name
            ):
                wav.write(piece)
            wav.flush()
            transcript = transcribe_wav(wav.name, progress)
    except Exception as exc:
        log.exception("transcription failed", extra={"recording": str(rec.pk)})
        Recording.objects.filter(pk=rec.pk).update(
            transcript_state=Recording.T_FAILED, transcript_error=type(exc).__name__[:200]
        )
        return Recording.T_FAILED
    with transaction.atomic():
        Recording.objects.filter(pk=rec.pk).update(
            transcript_state=Recording.T_DONE,
            transcript_encrypted=crypto.encrypt(json.dumps(transcript)),
            transcript_error="",
            transcribed_at=timezone.now(),
        )
    log.info(
        "transcription done",
        extra={"recording": str(rec.pk), "segments": len(transcript["segments"])},
    )
    return Recording.T_DONE


def transcript_of(rec: Recording) -> dict | None:
    if not rec.transcript_encrypted:
        return None
    return json.loads(crypto.decrypt(rec.transcript_encrypted))
