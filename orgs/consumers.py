"""The client WebSocket `/ws/v1`: first-frame auth, then frames of every app.

Each app adds its frames as `frame_<type>` methods on a mixin (messaging, calls, e911);
ClientConsumer composes them. All DB work goes through siphera.tenancy.tenant_db, which
sets this socket's org schema for every call (PITFALLS 2).

Every frame handler declares the permission code it needs (`orgs.roles.frame_perm`); the
socket keeps its user's codes from auth on and reloads them when a service says they
changed (`user.permissions_changed`). Frames are rate-limited per user (`ws.frame.user`)
and handshakes per client IP (`ws.connect.ip`), see siphera.ratelimit.
"""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings

from messaging.consumers import MessagingFrames
from orgs.api.fields import b64
from orgs.roles import Perm, codes_for, frame_perm
from orgs.services import auth, devices
from siphera import events, ratelimit
from siphera.api_errors import ApiError
from siphera.tenancy import group_name, tenant_db
from siphera.ws import (
    CLOSE_REPLACED,
    CLOSE_REVOKED,
    CLOSE_UNAUTHENTICATED,
    FrameError,
    JsonFrameConsumer,
    close_after,
)

log = logging.getLogger("siphera.ws")


def _authenticate(token: str):
    device = auth.authenticate_token(token)
    if device is None:
        return None
    devices.do_touch_device(device)
    return device


def _fresh_codes(user_id) -> frozenset[Perm]:
    from orgs.accounts.models import User

    return codes_for(User.objects.filter(pk=user_id).first())


# Close code of a handshake refused for too many connections from one address.
CLOSE_RATE_LIMITED = 4429


def _device_list(viewer, user_id):
    from orgs.services.directory import access_directory_user

    user = access_directory_user(viewer, user_id)
    return {
        "type": "devices",
        "user_id": str(user.pk),
        "devices": [
            {
                "device_id": d.device_id,
                "name": d.name,
                "identity_key": b64(d.identity_key),
                "signing_key": b64(d.signing_key),
            }
            for d in devices.user_devices(user)
        ],
    }


class ClientConsumer(MessagingFrames, JsonFrameConsumer):
    device = None
    groups_joined: list[str]
    codes: frozenset[Perm] = frozenset()

    async def connect(self):
        self.org = self.scope.get("tenant")
        self.groups_joined = []
        if self.org is None:
            await self.close()  # handshake refused: no org answers at this host (HTTP 403)
            return
        await self.accept()
        ip = ratelimit.scope_client_ip(self.scope)
        retry_after = (
            await ratelimit.ahit_named("ws.connect.ip", ip, schema=self.org.schema_name)
            if ip
            else None
        )
        if retry_after is not None:
            await self.send_rate_limited(retry_after)
            await self.close(code=CLOSE_RATE_LIMITED)
            return
        self.auth_timer = asyncio.create_task(
            close_after(
                self,
                settings.WS_AUTH_TIMEOUT_SECONDS,
                CLOSE_UNAUTHENTICATED,
                lambda: self.device is None,
            )
        )

    async def disconnect(self, code):
        timer = getattr(self, "auth_timer", None)
        if timer:
            timer.cancel()
        self._leave_local()
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        await super().disconnect(code)

    def _leave_local(self) -> None:
        for group in self.groups_joined:
            events.leave_local(group, self)

    async def dispatch_frame(self, frame: dict) -> None:
        if self.device is None:
            if frame["type"] != "auth":
                await self.close(code=CLOSE_UNAUTHENTICATED)
                return
            await self.authenticate(frame)
            return
        handler = getattr(self, "frame_" + frame["type"].replace(".", "_"), None)
        if handler is None:
            raise FrameError("unknown_frame_type", f"Unknown frame type {frame['type']!r}.")
        if not hasattr(handler, "required_perm"):  # fail closed: undeclared is refused
            raise FrameError("forbidden", f"Frame {frame['type']!r} declares no permission.")
        perm = handler.required_perm
        if perm is not None and perm not in self.codes:
            await self.send_frame(
                self._with_ref(
                    {
                        "type": "error",
                        "code": "forbidden",
                        "message": f"Your role lacks the '{perm}' permission.",
                        "permission": str(perm),
                    },
                    frame,
                )
            )
            return
        retry_after = await ratelimit.ahit_named(
            "ws.frame.user", self.device.user_id, schema=self.org.schema_name
        )
        if retry_after is not None:
            await self.send_rate_limited(retry_after, frame)
            return
        await handler(frame)

    @staticmethod
    def _with_ref(reply: dict, frame: dict | None) -> dict:
        ref = (frame or {}).get("ref")
        if isinstance(ref, (str, int)):
            reply["ref"] = ref
        return reply

    async def send_rate_limited(self, retry_after: int, frame: dict | None = None) -> None:
        await self.send_frame(
            self._with_ref(
                {
                    "type": "error",
                    "code": "rate_limited",
                    "message": f"Too many frames; retry in {retry_after} s.",
                    "retry_after": retry_after,
                },
                frame,
            )
        )

    async def authenticate(self, frame: dict) -> None:
        token = frame.get("token")
        device = await tenant_db(self.org, _authenticate, token) if isinstance(token, str) else None
        if device is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.device = device
        self.codes = await tenant_db(self.org, codes_for, device.user)
        self.auth_timer.cancel()
        schema = self.org.schema_name
        device_group = devices.device_group(device, schema)
        # One socket per device: tell an older socket of this device to close (4409)
        # before joining, so this socket never receives its own takeover.
        await self.channel_layer.group_send(
            device_group, {"type": "session.takeover", "channel": self.channel_name}
        )
        for group in (device_group, group_name(schema, "u", device.user_id)):
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
            events.join_local(group, self)
        log.info("ws.authenticated", extra={"device": device.device_id})
        await self.send_frame(
            {"type": "ready", "user_id": str(device.user_id), "device_id": device.device_id}
        )
        await self.after_ready()

    # --- client frames ---------------------------------------------------------------
    @frame_perm(None)
    async def frame_auth(self, frame):
        raise FrameError("already_authenticated", "This socket is already authenticated.")

    @frame_perm(None)
    async def frame_ping(self, frame):
        await self.send_frame({"type": "pong", **({"ref": frame["ref"]} if "ref" in frame else {})})

    @frame_perm(Perm.MESSAGING_USE)
    async def frame_devices(self, frame):
        """A user's current devices (default: the caller's own) — to address envelopes."""
        user_id = frame.get("user_id", str(self.device.user_id))
        try:
            reply = await tenant_db(self.org, _device_list, self.device.user, user_id)
        except ApiError as exc:
            raise FrameError(exc.code, exc.message) from None
        if "ref" in frame:
            reply["ref"] = frame["ref"]
        await self.send_frame(reply)

    # --- channel-layer events (from services, after commit) -----------------------------
    async def session_takeover(self, event):
        if event["channel"] != self.channel_name:
            self._leave_local()  # wake-ups for this device now go to the new socket
            await self.close(code=CLOSE_REPLACED)

    async def device_revoked(self, event):
        await self.send_frame({"type": "device.revoked"})
        await self.close(code=CLOSE_REVOKED)

    async def user_deactivated(self, event):
        """The user was deactivated (orgs.services.users): every socket of theirs ends."""
        await self.send_frame({"type": "user.deactivated"})
        await self.close(code=CLOSE_REVOKED)

    async def user_permissions_changed(self, event):
        """The user's role, or their custom role's codes, changed: reload the codes."""
        if self.device is not None:
            self.codes = await tenant_db(self.org, _fresh_codes, self.device.user_id)
            self.codes_changed()
