"""The registry of the client WebSocket `/ws/v1`: what each app adds to the one socket.

The socket (siphera.consumer.ClientConsumer) belongs to no app. Each app describes its part
of it as an `Extension` subclass and registers that from its `AppConfig.ready()`:

    class MessagingSocket(sockets.Extension):
        name = "messaging"

        @sockets.frame("send", perm=Perm.MESSAGING_USE)
        async def send(self, frame): ...          # a client frame, with its permission

        @sockets.event("queue.wake")
        async def queue_wake(self, event): ...    # a channel-layer event for this socket

    sockets.register(MessagingSocket)

One instance of each extension lives on every authenticated socket (`socket.ext[name]`)
and keeps that app's state of the socket. `ready()`, `closed()` and `codes_changed()` are
called on each, in registration order (lower layers first). The app that knows who a
token belongs to (orgs) registers the `authenticator`; the core knows nothing of users,
devices or roles beyond the opaque `SocketIdentity` it returns.

Frame permissions are codes (strings): the socket refuses a frame whose code the
identity's codes lack, and the permission registry (orgs.perm_registry) reads them from
here for the permission matrix test. Fail closed: every frame declares one (None: any
authenticated socket).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class SocketClient:
    """Where a socket connects from: its client address (as siphera.ratelimit reads it,
    behind TRUSTED_PROXY_COUNT proxies) and its User-Agent header (cut to 300 chars)."""

    ip: str | None = None
    user_agent: str = ""


@dataclass
class SocketIdentity:
    """Who an authenticated socket is, as the authenticator says."""

    device: Any  # the device row (the apps read .pk, .user, .user_id, .device_id)
    user_id: Any
    device_id: int
    codes: frozenset  # permission codes the user holds
    device_group: str  # one socket per device: an older socket in it is closed (4409)
    groups: tuple[str, ...] = ()  # further channel-layer groups to join (the user's)


@dataclass(frozen=True)
class FrameSpec:
    """A client frame type: the extension that handles it and the code it needs."""

    type: str
    perm: str | None
    app: str
    handler: Callable[[Any, dict], Awaitable[None]]  # unbound: handler(extension, frame)


class Extension:
    """One app's part of one authenticated socket. Subclasses set `name` and decorate
    methods with `frame`, `event` or `local_event`."""

    name: ClassVar[str]

    def __init__(self, socket) -> None:
        self.socket = socket
        self.org = socket.org
        self.device = socket.device

    async def ready(self) -> None:
        """The socket is authenticated and `ready` was sent."""

    async def closed(self) -> None:
        """The socket closed (any reason); runs once, in `finally`. Must not raise."""

    def codes_changed(self) -> None:
        """The socket's permission codes were reloaded (`socket.codes`)."""

    async def send_frame(self, frame: dict) -> None:
        await self.socket.send_frame(frame)


def frame(frame_type: str, *, perm):
    """Declare an extension method as the handler of client frame `frame_type`, allowed
    to holders of code `perm` (None: any authenticated socket)."""

    def mark(method):
        method.socket_frame = (frame_type, perm)
        return method

    return mark


def event(event_type: str):
    """Declare an async extension method as the handler of channel-layer event
    `event_type` sent to a group this socket joined."""

    def mark(method):
        method.socket_event = event_type
        return method

    return mark


def local_event(event_type: str):
    """Declare a plain (sync, non-blocking) extension method as the handler of an event
    handed over in this process by siphera.events.send_soon."""

    def mark(method):
        method.socket_local_event = event_type
        return method

    return mark


@dataclass
class Registry:
    extensions: list[type[Extension]] = field(default_factory=list)
    frames: dict[str, FrameSpec] = field(default_factory=dict)
    # event type -> (extension name, unbound handler)
    events: dict[str, tuple[str, Callable]] = field(default_factory=dict)
    local_events: dict[str, tuple[str, Callable]] = field(default_factory=dict)
    authenticator: Callable[[str], SocketIdentity | None] | None = None
    revalidator: Callable[[SocketIdentity], SocketIdentity | None] | None = None
    rights_generation: Callable[[str], str] | None = None
    # identity -> fresh codes (after `user.permissions_changed`), run on a DB thread
    codes_loader: Callable[[SocketIdentity], frozenset] | None = None

    def register(self, cls: type[Extension]) -> type[Extension]:
        if any(existing.name == cls.name for existing in self.extensions):
            raise ValueError(f"socket extension {cls.name!r} is registered twice")
        found_frames, found_events, found_local = {}, {}, {}
        for attr in dir(cls):
            method = getattr(cls, attr)
            spec = getattr(method, "socket_frame", None)
            if spec is not None:
                found_frames[spec[0]] = FrameSpec(spec[0], spec[1], cls.name, method)
            if (kind := getattr(method, "socket_event", None)) is not None:
                found_events[kind] = (cls.name, method)
            if (kind := getattr(method, "socket_local_event", None)) is not None:
                found_local[kind] = (cls.name, method)
        for table, found, what in (
            (self.frames, found_frames, "frame"),
            (self.events, found_events, "event"),
            (self.local_events, found_local, "local event"),
        ):
            clash = sorted(set(table) & set(found))
            if clash:
                raise ValueError(f"{cls.name}: {what} types already registered: {clash}")
            table.update(found)
        self.extensions.append(cls)
        return cls

    def authenticate_with(
        self,
        authenticator: Callable[[str, SocketClient], SocketIdentity | None],
        codes_loader: Callable[[SocketIdentity], frozenset],
        *,
        revalidator: Callable[[SocketIdentity], SocketIdentity | None] | None = None,
        rights_generation: Callable[[str], str] | None = None,
    ) -> None:
        """Set the function that turns an `auth` frame's token (and where the socket comes
        from) into an identity (run on a DB thread in the socket's org, None for a bad
        token), and the one that reloads an identity's codes.

        `rights_generation(schema)` names the org's generation (siphera.generations) that
        moves whenever a device, user or role changes; when it has moved since a socket
        last looked, the socket's next frame first runs `revalidator(identity)` (on a DB
        thread): the identity with fresh codes, or None when the device no longer works
        (revoked, user deactivated), which closes the socket. So a socket that missed its
        `device.revoked` event (a revoke committed while it was authenticating, a lost
        wake-up) cannot go on sending."""
        self.authenticator = authenticator
        self.codes_loader = codes_loader
        self.revalidator = revalidator
        self.rights_generation = rights_generation


registry = Registry()
register = registry.register
authenticate_with = registry.authenticate_with


def frames() -> dict[str, FrameSpec]:
    """Every client frame type the socket handles (the core's and every app's)."""
    import siphera.consumer  # noqa: F401  (registers the core's frames on import)

    return registry.frames
