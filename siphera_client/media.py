"""The aiortc side of a call (siphera_client.calls imports this only when a call starts:
aiortc is optional). Nothing here knows Siphera's frames.

- `configuration`: an RTCConfiguration from `GET /api/v1/calls/turn`'s answer;
- `Tone`: the audio this client sends (a sine, or silence);
- `Media`: this side's tone and a count of the frames heard from the other side;
- `add_candidate`: a candidate trickled in `call.ice` (RTCIceCandidateInit) into aiortc;
- `selected_candidate_types`: the types of the candidate pair ICE chose.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
import time
from array import array

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms

__all__ = ["RTCPeerConnection", "RTCSessionDescription", "configuration", "Tone", "Media"]


def configuration(turn: dict | None, *, relay_only: bool) -> RTCConfiguration:
    """ICE servers from TURN credentials (`{"urls", "username", "credential"}`, passed
    on as they are), or none at all (direct candidates only, no public STUN server).
    `relay_only`: the ICE transport policy `relay`, media only through TURN."""
    if turn is None:
        return RTCConfiguration(iceServers=[])
    server = RTCIceServer(
        urls=turn["urls"], username=turn["username"], credential=turn["credential"]
    )
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=[server], iceTransportPolicy=policy)


class Tone(MediaStreamTrack):
    """A sine at `hz` (0: silence), 20 ms frames of 48 kHz mono s16, paced in real time."""

    kind = "audio"

    def __init__(self, hz: float = 440.0, level: int = 8000):
        super().__init__()
        self.hz, self.level = hz, level
        self.sent = 0
        self._start: float | None = None

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        pts = self.sent * FRAME_SAMPLES
        if self._start is None:
            self._start = time.monotonic()
        else:
            await asyncio.sleep(max(0.0, self._start + pts / SAMPLE_RATE - time.monotonic()))
        step = 2 * math.pi * self.hz / SAMPLE_RATE
        samples = array(
            "h", (int(self.level * math.sin(step * (pts + i))) for i in range(FRAME_SAMPLES))
        )
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        raw = samples.tobytes()
        frame.planes[0].update(raw + bytes(frame.planes[0].buffer_size - len(raw)))
        frame.pts, frame.sample_rate = pts, SAMPLE_RATE
        frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
        self.sent += 1
        return frame


def peak_of(frame: AudioFrame) -> int:
    """The loudest sample of a decoded frame (aiortc decodes Opus to packed s16)."""
    if frame.format.name != "s16":
        return 0
    channels = len(frame.layout.channels)
    samples = array("h", bytes(frame.planes[0])[: frame.samples * channels * 2])
    return max((abs(s) for s in samples), default=0)


class Media:
    """This side's tone, and the frames heard from the other side (counted, and their
    loudest sample kept; nothing is played or stored). Create it before the remote
    description is set, so it hears of the other side's track."""

    def __init__(self, pc: RTCPeerConnection, tone_hz: float):
        self.pc = pc
        self.tone = Tone(tone_hz)
        self.received = 0
        self.peak = 0
        self._readers: list[asyncio.Task] = []
        pc.on("track", self._on_track)

    def send_tone(self) -> None:
        """Add the tone (the caller before its offer, the callee after the offer, so it
        takes the offer's audio transceiver)."""
        self.pc.addTrack(self.tone)

    def _on_track(self, track) -> None:
        if track.kind == "audio":
            self._readers.append(asyncio.ensure_future(self._read(track)))

    async def _read(self, track) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.received += 1
                self.peak = max(self.peak, peak_of(frame))

    async def close(self) -> None:
        self.tone.stop()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)


async def add_candidate(pc: RTCPeerConnection, candidate) -> None:
    """Add a candidate a trickling peer sent (RTCIceCandidateInit: `candidate` as in SDP,
    with or without its `candidate:` prefix, `sdpMid`, `sdpMLineIndex`); an empty
    `candidate` means end-of-candidates."""
    text = candidate.get("candidate") if isinstance(candidate, dict) else None
    if not text:
        await pc.addIceCandidate(None)
        return
    ice = candidate_from_sdp(text.removeprefix("candidate:"))
    ice.sdpMid, ice.sdpMLineIndex = candidate.get("sdpMid"), candidate.get("sdpMLineIndex")
    if ice.sdpMid is None and ice.sdpMLineIndex is None:
        ice.sdpMLineIndex = 0
    await pc.addIceCandidate(ice)


async def wait_connected(pc: RTCPeerConnection, ended: asyncio.Future, timeout: float) -> bool:
    """Whether ICE completes within `timeout` (False once it failed or `ended` is done)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not ended.done():
        state = pc.iceConnectionState
        if state == "completed":
            return True
        if state in ("failed", "closed"):
            return False
        await asyncio.sleep(0.05)
    return False


def selected_candidate_types(pc: RTCPeerConnection) -> tuple[str | None, str | None]:
    """Types (host, srflx, relay) of the nominated pair's local and remote candidates.

    aiortc's stats carry no candidate pairs, so this reads aioice's nominated pair on the
    first transceiver's ICE transport (the one everything is bundled on); (None, None) if
    those internals change."""
    with contextlib.suppress(AttributeError, IndexError, KeyError):
        transceiver = pc.getTransceivers()[0]
        pair = transceiver.receiver.transport.transport._connection._nominated[1]
        return pair.local_candidate.type, pair.remote_candidate.type
    return None, None
