"""Calls' part of the client WebSocket (siphera.consumer), registered in CallsConfig.ready():
the `call.*` frames of 1:1 signaling (calls.services.signaling) and the relay of the
frames other devices' actions send to this one.

A socket that closes while its device is in a call starts the reconnect grace
(`on_device_disconnected`); a socket of that device that becomes ready within it keeps
the call (`on_device_connected`). A socket replaced by a newer one of the same device
(4409) is not a drop."""

from __future__ import annotations

import asyncio

from channels.layers import get_channel_layer

from calls.services import recording, signaling
from orgs.roles import Perm
from siphera import redis_outage, sockets
from siphera.api_errors import ApiError
from siphera.redis_outage import REDIS_ERRORS
from siphera.tenancy import tenant_db
from siphera.ws import FrameError

# How long a leg's offer may take to reach the recorder's channel (Redis) before the
# device is told `recorder_unavailable` (with `retry_after`).
RECORDER_SEND_SECONDS = 5


class CallsSocket(sockets.Extension):
    name = "calls"

    def __init__(self, socket) -> None:
        super().__init__(socket)
        # Whether this socket may hold a call: it signaled one, heard of one, or picked
        # one up on connect. A socket that never did closes without a query.
        self.in_calls = False

    async def ready(self) -> None:
        resumed = await tenant_db(
            self.org, signaling.on_device_connected, self.device.user_id, self.device.device_id
        )
        self.in_calls = resumed > 0

    async def closed(self) -> None:
        if self.in_calls and not self.socket.replaced:
            await tenant_db(
                self.org,
                signaling.on_device_disconnected,
                self.device.user_id,
                self.device.device_id,
            )

    async def _run(self, fn, frame: dict, **fields):
        self.in_calls = True
        try:
            return await tenant_db(
                self.org,
                fn,
                user=self.device.user,
                device_id=self.device.device_id,
                call_id=frame.get("call_id"),
                **fields,
            )
        except ApiError as exc:
            raise FrameError(exc.code, exc.message) from None

    def _reply(self, reply: dict, frame: dict) -> dict:
        if isinstance(frame.get("ref"), (str, int)):
            reply["ref"] = frame["ref"]
        return reply

    # --- client frames ---------------------------------------------------------------
    @sockets.frame("call.invite", perm=Perm.CALLS_USE)
    async def invite(self, frame):
        """Ring a user's devices (or the other member of a direct conversation)."""
        outcome = await self._run(
            signaling.check_invite,
            frame,
            to=frame.get("to"),
            media=frame.get("media"),
            sdp=frame.get("sdp"),
        )
        call_id = str(outcome.call.pk)
        if outcome.recording is not None:
            # Compliance recording: the caller hears of the recorder before anything else.
            await self.send_frame(self._reply(dict(outcome.recording), frame))
        if outcome.ringing:
            reply = {"type": "call.invited", "call_id": call_id}
        else:
            reply = {"type": "call.ended", "call_id": call_id, "reason": outcome.reason}
            if outcome.replaced_by is not None:
                reply["replaced_by"] = str(outcome.replaced_by)
        await self.send_frame(self._reply(reply, frame))

    @sockets.frame("call.ringing", perm=Perm.CALLS_USE)
    async def ringing(self, frame):
        await self._run(signaling.check_ringing, frame)

    @sockets.frame("call.accept", perm=Perm.CALLS_USE)
    async def accept(self, frame):
        await self._run(signaling.check_accept, frame, sdp=frame.get("sdp"))

    @sockets.frame("call.reject", perm=Perm.CALLS_USE)
    async def reject(self, frame):
        await self._run(signaling.check_reject, frame, reason=frame.get("reason"))

    @sockets.frame("call.ice", perm=Perm.CALLS_USE)
    async def ice(self, frame):
        await self._run(signaling.check_ice, frame, candidate=frame.get("candidate"))

    @sockets.frame("call.hangup", perm=Perm.CALLS_USE)
    async def hangup(self, frame):
        await self._run(signaling.check_hangup, frame)

    @sockets.frame("call.recording.offer", perm=Perm.CALLS_USE)
    async def recording_offer(self, frame):
        """This device's leg to the call's recorder (compliance recording): its SDP offer,
        candidates included, goes to the recorder, which answers with
        `call.recording.answer`."""
        offer = await self._run(recording.check_recording_offer, frame, sdp=frame.get("sdp"))
        try:
            # Bounded: a stalled Redis would otherwise hold this socket's frames forever.
            await asyncio.wait_for(
                get_channel_layer().send(offer.channel, offer.message), RECORDER_SEND_SECONDS
            )
        except (*REDIS_ERRORS, TimeoutError) as exc:
            # The recorder's channel is in Redis: the offer can be sent again shortly.
            redis_outage.failed(exc, where="recording_offer")
            await self.send_frame(
                self._reply(
                    {
                        "type": "error",
                        "code": recording.UNAVAILABLE,
                        "message": "The recorder cannot be reached; offer the leg again "
                        f"in {redis_outage.RETRY_AFTER} s.",
                        "retry_after": redis_outage.RETRY_AFTER,
                    },
                    frame,
                )
            )

    # --- channel-layer events --------------------------------------------------------
    @sockets.event("call.frame")
    async def call_frame(self, event):
        """A frame for this device from another device's action (or a timer)."""
        if event.get("except_device") == self.device.device_id:
            return
        self.in_calls = True
        await self.send_frame(event["frame"])
