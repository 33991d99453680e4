"""The client WebSocket `/ws/v1`: first-frame auth, then the frames every app registered.

The socket belongs to the core. Apps add frames, channel-layer events and per-socket
state through siphera.sockets (from their AppConfig.ready()); who a token belongs to is
the registered authenticator's business (orgs). All DB work goes through
siphera.tenancy.tenant_db, which sets this socket's org schema for every call (PITFALLS 2).

Every frame declares the permission code it needs; the socket keeps its identity's codes
and reloads them on `user.permissions_changed`. Frames are rate-limited per user
(`ws.frame.user`) and handshakes per client IP (`ws.connect.ip`), see siphera.ratelimit.

Cleanup runs once, in `finally`, however the socket ends (a close, a lost peer, an
exception in a handler): its groups are left, its timers cancelled and every extension's
`closed()` runs (PITFALLS 27). An unexpected exception in a frame handler is logged and
answered with an `internal_error` frame; the socket stays open.
"""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings
from django.db import InterfaceError, OperationalError

from siphera import events, generations, ratelimit, redis_outage, sockets
from siphera.api_errors import DATABASE_RETRY_AFTER
from siphera.metrics import instruments as metrics
from siphera.sockets import Extension, SocketIdentity, frame
from siphera.tenancy import tenant_db
from siphera.ws import (
    CLOSE_REPLACED,
    CLOSE_REVOKED,
    CLOSE_UNAUTHENTICATED,
    FrameError,
    JsonFrameConsumer,
    close_after,
)

log = logging.getLogger("siphera.ws")

# Close code of a handshake refused for too many connections from one address.
CLOSE_RATE_LIMITED = 4429


class CoreFrames(Extension):
    """The frames of the socket itself."""

    name = "core"

    @frame("auth", perm=None)
    async def auth(self, frame):
        raise FrameError("already_authenticated", "This socket is already authenticated.")

    @frame("ping", perm=None)
    async def ping(self, frame):
        await self.send_frame({"type": "pong", **({"ref": frame["ref"]} if "ref" in frame else {})})


sockets.register(CoreFrames)


class ClientConsumer(JsonFrameConsumer):
    device = None
    identity: SocketIdentity | None = None
    codes: frozenset = frozenset()
    org = None
    replaced = False  # closed because a newer socket of the same device took over
    counted = False  # in the open-sockets gauge

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.groups_joined: list[str] = []
        self.ext: dict[str, Extension] = {}
        self.auth_timer: asyncio.Task | None = None
        self._cleaned_up = False
        self.rights_seen = None  # the org's rights generation when this socket last looked

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._cleanup()

    async def connect(self):
        self.org = self.scope.get("tenant")
        if self.org is None:
            await self.close()  # handshake refused: no org answers at this host (HTTP 403)
            return
        await self.accept()
        metrics.WEBSOCKETS_OPEN.inc()
        self.counted = True
        ip = ratelimit.scope_client_ip(self.scope)
        retry_after = (
            await ratelimit.ahit_named("ws.connect.ip", ip, schema=self.org.schema_name)
            if ip
            else None
        )
        if retry_after is not None:
            metrics.rate_limited("ws.connect.ip")
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
        await self._cleanup()
        await super().disconnect(code)

    async def _cleanup(self) -> None:
        """Leave every group, stop timers, tell every extension. Runs once."""
        if self._cleaned_up:
            return
        self._cleaned_up = True
        if self.counted:
            metrics.WEBSOCKETS_OPEN.dec()
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        self._leave_local()
        for extension in reversed(list(self.ext.values())):
            try:
                await extension.closed()
            except Exception:
                log.exception("ws.cleanup_failed", extra={"extension": extension.name})
        layer = self.channel_layer
        for group in self.groups_joined:
            try:
                await layer.group_discard(group, self.channel_name)
            except Exception:  # Redis gone: the group entry expires by itself
                if not redis_outage.active():  # an outage is logged once, not per socket
                    log.warning("ws.group_discard_failed", exc_info=True)

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
        spec = sockets.registry.frames.get(frame["type"])
        if spec is None:
            raise FrameError("unknown_frame_type", f"Unknown frame type {frame['type']!r}.")
        if spec.perm is not None and not await self.rights_still_hold():
            return
        if spec.perm is not None and spec.perm not in self.codes:
            await self.send_frame(
                self._with_ref(
                    {
                        "type": "error",
                        "code": "forbidden",
                        "message": f"Your role lacks the '{spec.perm}' permission.",
                        "permission": str(spec.perm),
                    },
                    frame,
                )
            )
            return
        retry_after = await ratelimit.ahit_named(
            "ws.frame.user", self.device.user_id, schema=self.org.schema_name
        )
        if retry_after is not None:
            metrics.rate_limited("ws.frame.user")
            await self.send_rate_limited(retry_after, frame)
            return
        await spec.handler(self.ext[spec.app], frame)

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

    def _client(self) -> sockets.SocketClient:
        agent = next((v for k, v in self.scope.get("headers", ()) if k == b"user-agent"), b"")
        return sockets.SocketClient(
            ip=ratelimit.scope_client_ip(self.scope),
            user_agent=agent.decode("latin-1")[:300],
        )

    async def authenticate(self, frame: dict) -> None:
        token = frame.get("token")
        authenticator = sockets.registry.authenticator
        # Read before the token is checked (as this process last read it: an older value
        # only costs one more check below): a revoke committed from here on moves it.
        self.rights_seen = await self._rights_generation()
        try:
            identity = (
                await tenant_db(self.org, authenticator, token, self._client())
                if isinstance(token, str) and authenticator is not None
                else None
            )
        except (OperationalError, InterfaceError):
            # Not 4401: the token may be good, and a client must not drop it for this.
            log.warning("ws.database_unavailable", extra={"frame_type": "auth"})
            await self.send_error(
                "database_unavailable",
                f"The database is unavailable; retry in {DATABASE_RETRY_AFTER} s.",
                retry_after=DATABASE_RETRY_AFTER,
            )
            await self.close(code=1011)
            return
        if identity is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.identity = identity
        self.device = identity.device
        self.codes = identity.codes
        self.auth_timer.cancel()
        self.ext = {cls.name: cls(self) for cls in sockets.registry.extensions}
        # One socket per device: tell an older socket of this device to close (4409)
        # before joining, so this socket never receives its own takeover.
        await self.channel_layer.group_send(
            identity.device_group, {"type": "session.takeover", "channel": self.channel_name}
        )
        for group in (identity.device_group, *identity.groups):
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
            events.join_local(group, self)
        # A revoke committed while the token was being checked sent its event before this
        # socket joined its groups: it moved the generation, which is read afresh now.
        if not await self.rights_still_hold(fresh=True):
            return
        log.info("ws.authenticated", extra={"device": identity.device_id})
        await self.send_frame(
            {"type": "ready", "user_id": str(identity.user_id), "device_id": identity.device_id}
        )
        for extension in self.ext.values():
            try:
                await extension.ready()
            except Exception:
                # A socket half set up (no delivery, say) must not look ready: close it,
                # and the client connects again (1011: try again later).
                log.exception("ws.ready_failed", extra={"extension": extension.name})
                await self.close(code=1011)
                return

    async def join_group(self, group: str) -> None:
        """Join a further channel-layer group (left again when the socket closes)."""
        if group in self.groups_joined:
            return
        await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined.append(group)
        events.join_local(group, self)

    async def leave_group(self, group: str) -> None:
        if group not in self.groups_joined:
            return
        self.groups_joined.remove(group)
        events.leave_local(group, self)
        await self.channel_layer.group_discard(group, self.channel_name)

    async def _rights_generation(self, *, fresh: bool = False):
        name = sockets.registry.rights_generation
        if name is None:
            return None
        return await generations.acurrent(name(self.org.schema_name), fresh=fresh)

    async def rights_still_hold(self, *, fresh: bool = False) -> bool:
        """Whether this socket's device still works, checked again only when the org's
        rights generation moved since it last looked (a dict lookup per frame; Redis at
        most once per GENERATION_CHECK_SECONDS per process). A device revoked or a user
        deactivated meanwhile closes the socket as its event would have (4403); changed
        codes are taken over."""
        revalidator = sockets.registry.revalidator
        seen = await self._rights_generation(fresh=fresh)
        if revalidator is None or seen == self.rights_seen:
            return True
        identity = await tenant_db(self.org, revalidator, self.identity)
        if identity is None:
            log.info("ws.rights_lapsed", extra={"device": self.identity.device_id})
            await self.send_frame({"type": "device.revoked"})
            await self.close(code=CLOSE_REVOKED)
            return False
        self.rights_seen = seen
        if identity.codes != self.codes:
            self.codes = identity.codes
            for extension in self.ext.values():
                extension.codes_changed()
        return True

    async def reload_codes(self) -> None:
        """Read the identity's codes again and tell every extension."""
        if self.identity is None:
            return
        self.codes = await tenant_db(self.org, sockets.registry.codes_loader, self.identity)
        for extension in self.ext.values():
            extension.codes_changed()

    # --- events: the socket's own, then the registry's ------------------------------
    async def dispatch(self, message):
        kind = message["type"]
        if kind.startswith("websocket."):
            await super().dispatch(message)
            return
        if kind == "session.takeover":
            await self.session_takeover(message)
            return
        entry = sockets.registry.events.get(kind)
        if entry is None:
            log.warning("ws.unknown_event", extra={"event": kind})
            return
        extension = self.ext.get(entry[0])
        if extension is not None:  # not yet authenticated: nothing is addressed to it
            await entry[1](extension, message)

    def local_event(self, event: dict) -> None:
        entry = sockets.registry.local_events.get(event["type"])
        extension = None if entry is None else self.ext.get(entry[0])
        if extension is not None:
            entry[1](extension, event)

    async def session_takeover(self, event):
        if event["channel"] != self.channel_name:
            self.replaced = True
            self._leave_local()  # wake-ups for this device now go to the new socket
            await self.close(code=CLOSE_REPLACED)
