"""1:1 voice calls with aiortc, over Siphera's signaling (docs/protocol.md, "Calls").

aiortc is optional: messaging works without it. Its side of a call lives in
siphera_client.media, imported when a Phone is made; without aiortc that raises
`CallsUnavailable` saying what to install.

What a call is here:
- TURN credentials from `GET /api/v1/calls/turn`, passed to aiortc as an `RTCIceServer`
  (with `relay_only`, the ICE transport policy is `relay`: media only through TURN). A
  server without TURN (503 `turn_not_configured`) leaves direct candidates only.
- The caller's offer SDP goes in `call.invite`, the callee's answer in `call.accept`.
  aiortc gathers every candidate before it writes an SDP, so both SDPs carry their
  candidates and end-of-candidates, and this client sends no `call.ice`; the candidates
  a trickling peer (a browser) sends in `call.ice` frames (`RTCIceCandidateInit`:
  `candidate`, `sdpMid`, `sdpMLineIndex`; an empty `candidate` ends them) are added as
  they come.
- Media: one audio track each way. This client sends a sine tone (or silence) and counts
  the frames it receives and their loudest sample; nothing is played or recorded.
- At the end (after `seconds`, or when the other side's `call.ended` comes) the side that
  ends it sends `call.hangup`.

A `Phone` reads `call.*` frames from a queue: a connected `Client` files them in
`client.call_frames` (`Phone.of_client`), or `Phone.open` opens a socket of its own that
reads only those (the command line: queued messages stay queued for `listen`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from siphera_client.api import Api, ApiError, Socket, SocketClosed
from siphera_client.client import is_call_frame

CONNECT_TIMEOUT = 30.0  # seconds from the answer until ICE must have connected
_AIORTC_PACKAGES = {"aiortc", "aioice", "av", "pylibsrtp", "pyee", "cryptography", "OpenSSL"}


class CallsUnavailable(Exception):
    """aiortc is not installed."""


class CallFailed(Exception):
    """The server refused a call frame (`code` is its error code), or nothing came."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


def require_aiortc():
    """siphera_client.media (aiortc's side of a call), or CallsUnavailable saying what to
    install."""
    try:
        from siphera_client import media
    except ImportError as exc:
        if (exc.name or "").split(".")[0] not in _AIORTC_PACKAGES:
            raise
        raise CallsUnavailable(
            f"calls need aiortc, which is not installed ({exc}): "
            "pip install aiortc==1.16.0 (as in the repository's requirements-dev.txt)"
        ) from None
    return media


@dataclass
class CallReport:
    """What happened in one call, as this side saw it."""

    call_id: str
    role: str  # caller | callee
    peer: dict = field(default_factory=dict)  # {"user_id", "device_id"?}
    # completed (connected, then hung up), or why it did not connect: busy, glare, dnd,
    # rejected, timeout, no_answer, ice_failed, failed, or the server's error code
    outcome: str = ""
    ended_by: str | None = None  # "me" | "peer" | "server"
    end_reason: str | None = None  # `call.ended`'s reason, when one came
    relay_only: bool = False
    connected: bool = False
    local_candidate: str | None = None  # type of the selected pair's local candidate
    remote_candidate: str | None = None
    seconds: float = 0.0  # connected time
    frames_sent: int = 0
    frames_received: int = 0
    peak: int = 0  # loudest received sample (s16): 0 means silence

    def as_dict(self) -> dict:
        return asdict(self)


class Phone:
    """Places and answers 1:1 calls for one device. `frames` yields the device's call
    frames (see `is_call_frame`); `socket` sends this side's frames."""

    def __init__(self, api: Api, socket: Socket, frames: asyncio.Queue, *, pump=None):
        self.rtc = require_aiortc()
        self.api, self.socket, self.frames = api, socket, frames
        self._pump = pump
        self._owns_socket = pump is not None

    @classmethod
    def of_client(cls, client) -> Phone:
        """The phone of a connected `Client` (it files call frames in `call_frames`)."""
        if client.socket is None:
            raise RuntimeError("connect() the client first")
        return cls(client.api, client.socket, client.call_frames)

    @classmethod
    async def open(cls, api: Api) -> Phone:
        """A phone with a socket of its own that reads only call frames: messages
        pushed to it are left unacknowledged, so they stay queued for the device."""
        require_aiortc()
        socket = await Socket.open(api.server, api.host, api.token)
        frames: asyncio.Queue = asyncio.Queue()

        async def pump():
            try:
                while True:
                    frame = await socket.next_frame()
                    if is_call_frame(frame):
                        frames.put_nowait(frame)
            except SocketClosed:
                frames.put_nowait({"type": "socket.closed", "code": socket.close_code})

        return cls(api, socket, frames, pump=asyncio.create_task(pump()))

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(BaseException):
                await self._pump
        if self._owns_socket:
            await self.socket.close()

    async def __aenter__(self) -> Phone:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- frames ---------------------------------------------------------------------------
    async def _send(self, frame: dict) -> None:
        # The ref files an error answering this frame with its call's frames.
        what = frame["type"].removeprefix("call.")
        await self.socket.send({**frame, "ref": f"call:{what}:{frame['call_id']}"})

    async def _next(self, call_id: str | None, timeout: float | None) -> dict | None:
        """The next frame of `call_id` (any call's `call.incoming` when None), or None
        after `timeout` seconds (None: no limit). Another call ringing meanwhile is
        declined as busy."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            try:
                frame = await asyncio.wait_for(self.frames.get(), remaining)
            except TimeoutError:
                return None
            kind = frame.get("type")
            if kind == "socket.closed":
                return frame
            if kind == "error":  # answers a frame of ours: for this call?
                if call_id is not None and str(frame.get("ref", "")).endswith(f":{call_id}"):
                    return frame
                continue
            if call_id is None:
                if kind == "call.incoming":
                    return frame
                continue
            if frame.get("call_id") == call_id:
                return frame
            if kind == "call.incoming":
                await self._send(
                    {"type": "call.reject", "call_id": frame["call_id"], "reason": "busy"}
                )

    # --- set-up ---------------------------------------------------------------------------
    async def peer_connection(self, relay_only: bool):
        """A peer connection with this user's TURN credentials, fetched now (they are
        short-lived). Without TURN on the server, direct candidates only; `relay_only`
        then fails, since nothing could connect."""
        try:
            turn = await self.api.turn_credentials()
        except ApiError as exc:
            if exc.code != "turn_not_configured":
                raise
            if relay_only:
                raise CallFailed(exc.code, "relay-only needs TURN, and the server has none.")
            turn = None
        return self.rtc.RTCPeerConnection(self.rtc.configuration(turn, relay_only=relay_only))

    # --- placing a call -------------------------------------------------------------------
    async def call(
        self,
        user_id: str,
        *,
        seconds: float = 5.0,
        relay_only: bool = False,
        tone_hz: float = 440.0,
        ring_timeout: float = 60.0,
        on_event: Callable[[dict], None] | None = None,
    ) -> CallReport:
        """Call `user_id`, talk for `seconds` once connected, hang up; the report says
        how it went. Raises CallFailed when the server refuses the invite."""
        report = CallReport(str(uuid.uuid4()), "caller", {"user_id": user_id})
        report.relay_only = relay_only
        emit = on_event or (lambda event: None)
        pc = await self.peer_connection(relay_only)
        media = self.rtc.Media(pc, tone_hz)
        media.send_tone()
        try:
            await pc.setLocalDescription(await pc.createOffer())
            invite = {
                "type": "call.invite",
                "call_id": report.call_id,
                "to": {"user_id": user_id},
                "media": "audio",
                "sdp": pc.localDescription.sdp,
            }
            reply = await self.socket.request(invite)
            if reply["type"] == "error":
                raise CallFailed(reply.get("code", ""), reply.get("message", ""))
            if reply["type"] == "call.ended":  # busy, glare, do-not-disturb: never rang
                report.outcome = report.end_reason = reply.get("reason")
                report.ended_by = "server"
                return report
            emit({"calling": {"user_id": user_id, "call_id": report.call_id}})
            early_ice: list[dict] = []
            deadline = time.monotonic() + ring_timeout
            while True:
                frame = await self._next(report.call_id, deadline - time.monotonic())
                if frame is None:
                    await self._send({"type": "call.hangup", "call_id": report.call_id})
                    report.outcome, report.ended_by = "no_answer", "me"
                    return report
                kind = frame["type"]
                if kind == "call.ringing":
                    emit({"ringing": {"device_id": frame.get("device_id")}})
                elif kind == "call.ice":
                    early_ice.append(frame["candidate"])
                elif kind == "call.accept":
                    report.peer = frame.get("from", report.peer)
                    answer = self.rtc.RTCSessionDescription(frame["sdp"], "answer")
                    await pc.setRemoteDescription(answer)
                    for candidate in early_ice:
                        await self.rtc.add_candidate(pc, candidate)
                    break
                else:
                    return _ended(report, frame)
            await self._talk(pc, media, report, seconds, emit)
            return report
        finally:
            report.frames_sent = media.tone.sent
            await media.close()
            await pc.close()

    # --- answering ------------------------------------------------------------------------
    async def answer(
        self,
        *,
        seconds: float = 5.0,
        relay_only: bool = False,
        tone_hz: float = 660.0,
        wait: float = 60.0,
        on_event: Callable[[dict], None] | None = None,
    ) -> CallReport:
        """Wait up to `wait` seconds for a call, answer it, talk for `seconds` once
        connected (or until the caller hangs up). Raises CallFailed("no_incoming_call")
        when none came, or with the server's code when it refuses the answer."""
        emit = on_event or (lambda event: None)
        incoming = await self._next(None, wait)
        if incoming is None:
            raise CallFailed("no_incoming_call", f"No call came in {wait:g} seconds.")
        if incoming["type"] == "socket.closed":
            raise SocketClosed(incoming.get("code"))
        report = CallReport(incoming["call_id"], "callee", incoming.get("from", {}))
        report.relay_only = relay_only
        emit({"incoming": {"call_id": report.call_id, "from": report.peer}})
        await self._send({"type": "call.ringing", "call_id": report.call_id})
        pc = await self.peer_connection(relay_only)
        media = self.rtc.Media(pc, tone_hz)  # listening before the offer announces a track
        try:
            offer = self.rtc.RTCSessionDescription(incoming["sdp"], "offer")
            await pc.setRemoteDescription(offer)
            media.send_tone()  # on the offer's audio transceiver
            await pc.setLocalDescription(await pc.createAnswer())
            answer = pc.localDescription.sdp
            await self._send({"type": "call.accept", "call_id": report.call_id, "sdp": answer})
            await self._talk(pc, media, report, seconds, emit)
            return report
        finally:
            report.frames_sent = media.tone.sent
            await media.close()
            await pc.close()

    # --- in the call ----------------------------------------------------------------------
    async def _talk(self, pc, media, report: CallReport, seconds: float, emit) -> None:
        """Connect, exchange audio for `seconds`, and hang up (unless the other side or
        the server ended the call first)."""
        ended: asyncio.Future = asyncio.get_running_loop().create_future()

        async def watch():
            while True:
                frame = await self._next(report.call_id, None)
                if frame["type"] == "call.ice":
                    await self.rtc.add_candidate(pc, frame["candidate"])
                elif frame["type"] in ("call.ended", "call.answered_elsewhere", "error"):
                    ended.set_result(frame)
                    return
                elif frame["type"] == "socket.closed":
                    ended.set_result(frame)
                    return

        watcher = asyncio.create_task(watch())
        try:
            if not await self.rtc.wait_connected(pc, ended, CONNECT_TIMEOUT):
                if ended.done():
                    _ended(report, ended.result())
                else:
                    report.outcome, report.ended_by = "ice_failed", "me"
                    await self._send({"type": "call.hangup", "call_id": report.call_id})
                return
            report.connected = True
            types = self.rtc.selected_candidate_types(pc)
            report.local_candidate, report.remote_candidate = types
            emit(
                {
                    "connected": {
                        "call_id": report.call_id,
                        "local_candidate": report.local_candidate,
                        "remote_candidate": report.remote_candidate,
                    }
                }
            )
            started = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(ended), seconds)
            report.seconds = round(time.monotonic() - started, 2)
            if ended.done():
                _ended(report, ended.result())
            else:
                await self._send({"type": "call.hangup", "call_id": report.call_id})
                report.outcome, report.ended_by = "completed", "me"
        finally:
            watcher.cancel()
            with contextlib.suppress(BaseException):
                await watcher
            report.frames_received, report.peak = media.received, media.peak


def _ended(report: CallReport, frame: dict) -> CallReport:
    """Fill `report` from the frame that ended the call."""
    kind = frame.get("type")
    if kind == "call.ended":
        reason = frame.get("reason") or "ended"
        report.end_reason = reason
        report.ended_by = "peer" if reason in ("hangup", "rejected") else "server"
        report.outcome = "completed" if report.connected and reason == "hangup" else reason
    elif kind == "call.answered_elsewhere":
        report.outcome, report.ended_by = "answered_elsewhere", "server"
    elif kind == "error":
        report.outcome, report.ended_by = frame.get("code") or "error", "server"
    else:  # the socket closed
        report.outcome, report.ended_by = "failed", "server"
    return report
