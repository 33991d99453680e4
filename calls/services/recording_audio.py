"""The recordings' audio format: 16 kHz, 16-bit PCM WAV, stereo (left: the caller's leg,
right: the callee's), which is also what the transcription engines read."""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator
from pathlib import Path

RATE = 16000
CHANNELS = 2
SAMPLE_BYTES = 2
BLOCK = RATE  # samples per channel interleaved at a time (one second)


def wav_header(frames: int, *, channels: int = CHANNELS, rate: int = RATE) -> bytes:
    """The 44-byte header of a PCM WAV holding `frames` samples per channel."""
    data = frames * channels * SAMPLE_BYTES
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH",
            16,
            1,
            channels,
            rate,
            rate * channels * SAMPLE_BYTES,
            channels * SAMPLE_BYTES,
            16,
        )
        + b"data"
        + struct.pack("<I", data)
    )


def _block(handle, count: int) -> array:
    samples = array("h")
    if handle is not None:
        samples.frombytes(handle.read(count * SAMPLE_BYTES))
    if len(samples) < count:
        samples.extend([0] * (count - len(samples)))
    return samples


def stereo_wav(left: Path | None, right: Path | None, frames: int) -> Iterator[bytes]:
    """A stereo WAV of `frames` samples per channel from two raw mono s16 files (padded
    with silence, or cut, to that length), a second at a time."""
    yield wav_header(frames)
    lh = open(left, "rb") if left else None  # noqa: SIM115 (closed below)
    rh = open(right, "rb") if right else None  # noqa: SIM115
    try:
        done = 0
        while done < frames:
            count = min(BLOCK, frames - done)
            out = array("h", bytes(count * CHANNELS * SAMPLE_BYTES))
            out[0::2] = _block(lh, count)
            out[1::2] = _block(rh, count)
            yield out.tobytes()
            done += count
    finally:
        for handle in (lh, rh):
            if handle is not None:
                handle.close()


def channel_of(samples: array, index: int) -> bytes:
    """One channel of interleaved stereo samples, as raw mono s16 bytes."""
    return samples[index::CHANNELS].tobytes()
