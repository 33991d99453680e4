"""The boundary with LiveKit, the SFU of group calls: configuration, room names, access
tokens, the room service (Twirp over HTTP) and webhook signatures.

One LiveKit server serves every org, so a room's name carries the org's schema and the
call's id (`<schema>.<call uuid>`): a token names exactly one room, and a webhook about a
room of another org is recognised and refused.

Guarantees:
- Without LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET every caller gets a 503
  `livekit_not_configured`, never a 500; an unreachable or failing LiveKit is a 503
  `livekit_unavailable`.
- No secret, token or webhook signature is ever logged or put into an error.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

import aiohttp
from asgiref.sync import async_to_sync
from django.conf import settings
from livekit import api as lk

from siphera.api_errors import ApiError
from siphera.tenancy import current_schema

log = logging.getLogger(__name__)

LIVEKIT_NOT_CONFIGURED = "livekit_not_configured"  # 503: this deployment has no SFU
LIVEKIT_UNAVAILABLE = "livekit_unavailable"  # 503: the room service failed; try again
# Each room-service call gets this long (seconds); a slow LiveKit is a 503, not a hang.
ROOM_SERVICE_TIMEOUT = 5


@dataclass(frozen=True)
class LiveKitConfig:
    url: str  # what clients connect to
    api_url: str  # the room service, as this server reaches it
    api_key: str
    api_secret: str
    token_ttl: int


def config() -> LiveKitConfig:
    """The configured LiveKit, or a 503 `livekit_not_configured`."""
    if not (settings.LIVEKIT_URL and settings.LIVEKIT_API_KEY and settings.LIVEKIT_API_SECRET):
        raise ApiError(
            503, LIVEKIT_NOT_CONFIGURED, "Group calls are not configured on this server."
        )
    return LiveKitConfig(
        url=settings.LIVEKIT_URL,
        api_url=settings.LIVEKIT_API_URL,
        api_key=settings.LIVEKIT_API_KEY,
        api_secret=settings.LIVEKIT_API_SECRET,
        token_ttl=settings.LIVEKIT_TOKEN_TTL_SECONDS,
    )


# --- room names and identities -----------------------------------------------------------


def room_name(call_id: uuid.UUID) -> str:
    """The SFU room of a group call in the current org: `<schema>.<call uuid>`."""
    return f"{current_schema()}.{call_id}"


def call_id_of_room(name: str) -> uuid.UUID | None:
    """The call id of a room of the current org, or None for any other name (another
    org's room, or one Siphera did not name)."""
    schema, dot, raw_id = name.rpartition(".")
    if not dot or schema != current_schema():
        return None
    try:
        return uuid.UUID(raw_id)
    except ValueError:
        return None


def identity(user_id, device_id: int) -> str:
    """A participant's identity in a room: `<user id>:<device id>`."""
    return f"{user_id}:{device_id}"


def parse_identity(value: str) -> tuple[uuid.UUID, int] | None:
    """(user id, device id) of an identity made by `identity`, else None."""
    raw_user, colon, raw_device = value.partition(":")
    if not colon or not raw_device.isascii() or not raw_device.isdigit() or len(raw_device) > 9:
        return None
    try:
        return uuid.UUID(raw_user), int(raw_device)
    except ValueError:
        return None


# --- access tokens ---------------------------------------------------------------------


def mint_token(
    cfg: LiveKitConfig, *, room: str, identity: str, grants: lk.VideoGrants, name: str = ""
) -> str:
    """A signed LiveKit access token for one room, valid for `cfg.token_ttl` seconds."""
    token = (
        lk.AccessToken(cfg.api_key, cfg.api_secret)
        .with_identity(identity)
        .with_grants(grants)
        .with_ttl(dt.timedelta(seconds=cfg.token_ttl))
    )
    if name:
        token = token.with_name(name)
    return token.to_jwt()


# --- webhooks --------------------------------------------------------------------------


class BadSignature(Exception):
    """The webhook's Authorization is missing, or does not sign this body."""


def verify_webhook(cfg: LiveKitConfig, body: bytes, authorization: str) -> lk.WebhookEvent:
    """The event of a webhook whose Authorization header is a JWT signed with our API
    key that carries the body's sha256 (what LiveKit sends), else BadSignature."""
    token = authorization.removeprefix("Bearer ").strip()
    if not token:
        raise BadSignature("no Authorization")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadSignature("body is not UTF-8") from None
    receiver = lk.WebhookReceiver(lk.TokenVerifier(cfg.api_key, cfg.api_secret))
    try:
        return receiver.receive(text, token)
    except Exception as exc:  # jwt errors, "hash mismatch", an unparseable body, ...
        # Only the exception's class: its text could quote the token.
        raise BadSignature(type(exc).__name__) from None


# --- the room service ------------------------------------------------------------------


def list_participants(cfg: LiveKitConfig, room: str) -> list[lk.ParticipantInfo]:
    """Who is in `room` now, from LiveKit's room service. A room LiveKit does not know
    (nobody joined yet, or it finished) has nobody in it."""

    async def call(service: lk.LiveKitAPI):
        return await service.room.list_participants(lk.ListParticipantsRequest(room=room))

    try:
        return list(_room_service(cfg, call).participants)
    except lk.ServerError as exc:
        if exc.status == 404:
            return []
        raise _unavailable(exc) from None


def remove_participant(cfg: LiveKitConfig, room: str, who: str) -> bool:
    """Disconnect participant `who` from `room`. False when they are not in it."""

    async def call(service: lk.LiveKitAPI):
        return await service.room.remove_participant(
            lk.RoomParticipantIdentity(room=room, identity=who)
        )

    try:
        _room_service(cfg, call)
    except lk.ServerError as exc:
        if exc.status == 404:
            return False
        raise _unavailable(exc) from None
    return True


def _room_service(cfg: LiveKitConfig, call):
    """Run `call(LiveKitAPI)` to completion from sync code (a DRF view's thread, where
    async_to_sync runs it on the server's event loop). A fresh aiohttp session per call:
    a session belongs to one event loop, and these calls are rare admin actions."""

    async def run():
        timeout = aiohttp.ClientTimeout(total=ROOM_SERVICE_TIMEOUT)
        async with lk.LiveKitAPI(
            cfg.api_url, cfg.api_key, cfg.api_secret, timeout=timeout, failover=False
        ) as service:
            return await call(service)

    try:
        return async_to_sync(run)()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _unavailable(exc) from None


def _unavailable(exc: BaseException) -> ApiError:
    status = getattr(exc, "status", None)
    log.warning(
        "livekit room service failed: %s%s",
        type(exc).__name__,
        f" (HTTP {status})" if status else "",
    )
    return ApiError(
        503,
        LIVEKIT_UNAVAILABLE,
        "The group-call server did not answer; try again.",
        headers={"Retry-After": "5"},
    )
