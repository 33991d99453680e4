"""The org's call recorder: `python -m calls.recorder <schema> <call_id>`, started by the
worker (calls.tasks.start_recorder) for a call the org's policy records.

Once up it sends itself `recorder.hello` through its channel; the first message it reads
back proves the channel layer works, and it reports itself ready in the database
(calls.services.recording.do_recorder_ready): a leg missing at its deadline is then the
client's refusal, not the recorder's fault. It exits if the call is already over. From
then on it marks itself alive every quarter of CALL_RECORDER_SILENT_SECONDS; a recorded
call whose recorder falls silent ends `recording_lost`.

It is a visible participant: each party's device connects a leg of its own to it
(`call.recording.offer` -> `call.recording.answer`), over the same TURN relay as the
call (relay-only when TURN is configured). It reads its channel-layer channel
(calls.services.recording.recorder_channel) for the legs' offers and for `recorder.start`
(the call is connected: keep audio from now on) and `recorder.stop` (the call ended:
store). Each leg's audio is resampled to 16 kHz mono and spooled to a temporary file;
on stop the two legs become one stereo WAV (left: caller, right: callee) of the call's
length, stored encrypted (calls.services.recording_store). Nothing else of the call
reaches it: the parties' own media stays end to end between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("siphera.recorder")

TICK_SECONDS = 5


@dataclass
class Leg:
    key: tuple[str, int]
    pc: object
    path: Path
    handle: object = None
    written: int = 0  # samples
    tasks: list = field(default_factory=list)
    closing: bool = False  # closed by the recorder itself (not lost)


class Recorder:
    def __init__(self, org, call_id: str):
        from calls.services import recording

        self.org, self.call_id = org, call_id
        self.channel = recording.recorder_channel(call_id, org.schema_name)
        self.legs: dict[tuple[str, int], Leg] = {}
        self.started: float | None = None  # monotonic time the call connected
        self.order: list[tuple[str, int]] = []  # caller's leg, callee's leg
        self.dir = Path(tempfile.mkdtemp(prefix="siphera-rec-"))

    async def db(self, fn, *args, **kwargs):
        from siphera.tenancy import in_tenant

        return await asyncio.to_thread(in_tenant, self.org, fn, *args, **kwargs)

    # --- legs ---------------------------------------------------------------------------

    def _peer_connection(self):
        from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection
        from aiortc.rtcconfiguration import RTCIceTransportPolicy
        from django.conf import settings

        from calls.services import turn

        if not turn.is_configured():
            return RTCPeerConnection()
        creds = turn.make_credentials(
            f"recorder.{self.call_id}",
            urls=settings.TURN_URLS,
            secret=settings.TURN_SECRETS[0],
            ttl=settings.TURN_TTL_SECONDS,
            now=time.time(),
        )
        server = RTCIceServer(urls=creds.urls, username=creds.username, credential=creds.credential)
        return RTCPeerConnection(
            RTCConfiguration(iceServers=[server], iceTransportPolicy=RTCIceTransportPolicy.RELAY)
        )

    async def offer(self, message: dict) -> None:
        from aiortc import RTCSessionDescription
        from channels.layers import get_channel_layer

        from siphera.tenancy import group_name

        key = (message["user_id"], int(message["device_id"]))
        old = self.legs.pop(key, None)
        pc = self._peer_connection()
        leg = Leg(key, pc, self.dir / f"{key[0]}-{key[1]}.pcm")
        if old is not None:
            await self._close_leg(old)
            # A new leg of the same device (after a lost one) goes on where it stopped.
            leg.handle, leg.written = old.handle, old.written
        self.legs[key] = leg

        @pc.on("track")
        def on_track(track):
            leg.tasks.append(asyncio.ensure_future(self._consume(leg, track)))

        @pc.on("connectionstatechange")
        async def on_state():
            from calls.services import recording

            if pc.connectionState == "connected":
                await self.db(recording.do_leg_connected, self.call_id, key[0], key[1])
                log.info("recorder leg connected", extra={"call_id": self.call_id})
            elif pc.connectionState in ("failed", "closed") and not leg.closing:
                # The device closed it, or its consent checks expired (RFC 7675, ~30 s).
                if self.started is not None and key in self.order:
                    await self.db(recording.do_leg_lost, self.call_id, key[0], key[1])

        await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        frame = {
            "type": "call.recording.answer",
            "call_id": self.call_id,
            "sdp": pc.localDescription.sdp,
        }
        group = group_name(self.org.schema_name, "d", uuid.UUID(key[0]), key[1])
        await get_channel_layer().group_send(group, {"type": "call.frame", "frame": frame})

    async def _consume(self, leg: Leg, track) -> None:
        import av
        from aiortc.mediastreams import MediaStreamError

        from calls.services.recording_audio import RATE

        if track.kind != "audio":
            with contextlib.suppress(MediaStreamError):
                while True:
                    await track.recv()  # video is not recorded; drain it
            return
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if self.started is None or leg.key not in self.order:
                    continue
                for out in resampler.resample(frame):
                    self._write(leg, bytes(out.planes[0])[: out.samples * 2])

    def _write(self, leg: Leg, data: bytes) -> None:
        from calls.services.recording_audio import RATE

        if leg.handle is None:
            leg.handle = open(leg.path, "wb")  # noqa: SIM115 (closed in stop)
        # The leg's audio is where it was heard: from the start of the recording, and after
        # a hole (a lost leg, connected again) of over half a second, silence fills in.
        due = int((time.monotonic() - self.started) * RATE) - len(data) // 2
        if due - leg.written > (RATE // 2 if leg.written else 0):
            leg.handle.write(bytes((due - leg.written) * 2))
            leg.written = due
        leg.handle.write(data)
        leg.written += len(data) // 2

    async def _close_leg(self, leg: Leg) -> None:
        leg.closing = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(leg.pc.close(), 10)
        for task in leg.tasks:
            task.cancel()

    # --- start / stop -------------------------------------------------------------------

    async def start(self, message: dict) -> None:
        self.order = [(str(u), int(d)) for u, d in message["legs"]]
        self.started = time.monotonic()
        for key in [k for k in self.legs if k not in self.order]:
            await self._close_leg(self.legs.pop(key))
        log.info("recording started", extra={"call_id": self.call_id})

    async def stop(self) -> None:
        from calls.models import Recording
        from calls.services import recording
        from calls.services.recording_audio import RATE, stereo_wav

        ended = time.monotonic()
        for leg in list(self.legs.values()):
            await self._close_leg(leg)
            if leg.handle is not None:
                leg.handle.close()
        if self.started is None:
            log.info("recorder stopped: nothing recorded", extra={"call_id": self.call_id})
            return
        frames = int((ended - self.started) * RATE)
        paths = [
            self.legs[k].path if k in self.legs and self.legs[k].handle else None
            for k in self.order
        ]

        def store():
            rec = Recording.objects.get(call_id=self.call_id)
            recording.do_store_recording(
                rec.pk,
                duration_ms=frames * 1000 // RATE,
                pieces=stereo_wav(paths[0], paths[1], frames),
            )

        await self.db(store)

    async def run(self) -> None:
        from channels.layers import get_channel_layer
        from django.conf import settings

        from calls.models import Call
        from calls.services import recording

        layer = get_channel_layer()
        limit = time.monotonic() + settings.CALL_RING_TIMEOUT_SECONDS
        limit += settings.CALL_RECORDING_MAX_SECONDS
        # A round trip through its own channel: what is read back (this, or an offer
        # queued before it) shows the recorder can be reached.
        await layer.send(self.channel, {"type": "recorder.hello"})
        ready = False
        receive = asyncio.ensure_future(layer.receive(self.channel))
        heartbeat = None
        try:
            while True:
                done, _ = await asyncio.wait({receive}, timeout=TICK_SECONDS)
                if not done:
                    # A lost stop message: the call's row says whether it is over.
                    state = await self.db(
                        lambda: (
                            Call.objects.filter(pk=self.call_id)
                            .values_list("state", flat=True)
                            .first()
                        )
                    )
                    if state in (None, Call.ENDED) or time.monotonic() > limit:
                        await self.stop()
                        return
                    continue
                message = receive.result()
                receive = asyncio.ensure_future(layer.receive(self.channel))
                if not ready:
                    ready = True
                    if not await self.db(recording.do_recorder_ready, self.call_id):
                        log.info(
                            "recorder exits: the call is over", extra={"call_id": self.call_id}
                        )
                        return
                    log.info("recorder ready", extra={"call_id": self.call_id})
                    heartbeat = asyncio.ensure_future(self._heartbeat())
                kind = message.get("type")
                # The kind only: an offer carries SDP, which no log line holds.
                log.debug("recorder message", extra={"call_id": self.call_id, "kind": kind})
                if kind == "recorder.offer":
                    try:
                        await self.offer(message)
                    except Exception as exc:
                        # aiortc's errors may quote the offer's SDP: the type only at
                        # warning, the traceback at debug.
                        log.warning(
                            "recorder leg refused",
                            extra={"call_id": self.call_id, "error": type(exc).__name__},
                        )
                        log.debug("recorder leg refused", exc_info=True)
                elif kind == "recorder.start":
                    await self.start(message)
                elif kind == "recorder.stop":
                    await self.stop()
                    return
        finally:
            receive.cancel()
            if heartbeat is not None:
                heartbeat.cancel()
            for path in self.dir.glob("*"):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.dir.rmdir()

    async def _heartbeat(self) -> None:
        """Mark the recorder alive every quarter of CALL_RECORDER_SILENT_SECONDS: a call
        whose recorder falls silent ends (calls.services.recording.do_recorder_watchdog)."""
        from calls.services import recording

        interval = recording.recorder_heartbeat_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                await self.db(recording.do_recorder_heartbeat, self.call_id)
            except Exception as exc:  # the database away for a moment: the next beat
                log.warning(
                    "recorder heartbeat failed",
                    extra={"call_id": self.call_id, "error": type(exc).__name__},
                )


def main(argv: list[str]) -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "siphera.settings")
    import django

    django.setup()
    from orgs.models import Org
    from siphera.tenancy import public_schema

    schema, call_id = argv
    with public_schema():
        org = Org.objects.get(schema_name=schema)
    log.info("recorder up", extra={"call_id": call_id, "schema": schema})
    try:
        asyncio.run(Recorder(org, call_id).run())
    except Exception:
        log.exception("recorder failed", extra={"call_id": call_id})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
