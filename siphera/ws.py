"""WebSocket plumbing: tenant from the Host header, and the base client consumer.

The HTTP tenant middleware never runs for WebSockets (PITFALLS 1), so the org is resolved
here with the same lookup (siphera.tenancy.org_for_host: ALLOWED_HOSTS + the org's
domains). Never from the query string.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging

import orjson
from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import InterfaceError, OperationalError

from siphera import redis_outage
from siphera.api_errors import DATABASE_RETRY_AFTER, error_body
from siphera.logging import handshake_refused_var, org_var
from siphera.tenancy import org_for_host, public_db

log = logging.getLogger("siphera.ws")

CLOSE_UNAUTHENTICATED = 4401
CLOSE_REVOKED = 4403
CLOSE_UNKNOWN_ORG = 4404
CLOSE_REPLACED = 4409
CLOSE_TRY_AGAIN_LATER = 1013  # RFC 6455: a service the server needs is unavailable


class TenantWebSocketMiddleware:
    """ASGI middleware: puts the org answering at the Host header in scope["tenant"]."""

    def __init__(self, inner):
        self.inner = inner

    async def __call__(self, scope, receive, send):
        host = ""
        for name, value in scope.get("headers", []):
            if name == b"host":
                host = value.decode("latin-1")
                break
        try:
            tenant = await public_db(org_for_host, host)
        except (OperationalError, InterfaceError):
            log.warning("ws.database_unavailable", extra={"frame_type": "handshake"})
            await refuse_handshake_unavailable(scope, receive, send)
            return None
        if redis_outage.active() and not await _redis_back():
            # A socket cannot get a wake-up without the channel layer: come back later.
            await refuse_handshake_unavailable(scope, receive, send, redis=True)
            return None
        return await self.inner({**scope, "tenant": tenant}, receive, send)


async def _redis_back() -> bool:
    """During an outage, whether Redis answers again (asked at most once per
    siphera.redis_outage.PROBE_SECONDS; handshakes in between are refused)."""
    if redis_outage.skip():
        return False
    try:
        await get_channel_layer().connection(0).ping()
    except redis_outage.REDIS_ERRORS as exc:
        redis_outage.failed(exc, where="ws")
        return False
    redis_outage.succeeded()
    return True


def json_body(code: str, message: str) -> bytes:
    return orjson.dumps(error_body(code, message))


async def refuse_handshake_unavailable(scope, receive, send, *, redis: bool = False) -> None:
    """Answer a handshake with HTTP 503 and `Retry-After` (the database, or with `redis`
    Redis, is unavailable), where the server supports ASGI's `websocket.http.response`;
    else refuse it (403)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    handshake_refused_var.set(True)  # uvicorn's complaint about it is not an error
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1011})
        return
    if redis:
        retry_after = redis_outage.RETRY_AFTER
        body = json_body("redis_unavailable", "A service the server needs is unavailable.")
    else:
        retry_after = DATABASE_RETRY_AFTER
        body = json_body("database_unavailable", "The database is unavailable; retry shortly.")
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(retry_after).encode()),
            ],
        }
    )
    await send({"type": "websocket.http.response.body", "body": body})


class FrameError(Exception):
    """An invalid client frame: answered with an `error` frame, the socket stays open."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class JsonFrameConsumer(AsyncWebsocketConsumer):
    """Parses JSON frames, enforces the frame size limit, and hands each frame to
    `dispatch_frame` (siphera.consumer.ClientConsumer). Malformed frames and frames a
    handler refuses get an `error` frame with a code; they never close the socket."""

    max_frame_bytes = settings.WS_MAX_FRAME_BYTES

    async def __call__(self, scope, receive, send):
        # channels' AsyncConsumer.__call__, with its await_many_dispatch replaced: that made
        # a task and an asyncio.wait for every frame (6 % of the web process at full
        # rate). Here the socket's own events are read in this task, the channel layer's
        # in one task of their own, and one lock keeps handlers from running at the same
        # time, as channels does.
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        self.base_send = send
        with contextlib.suppress(StopConsumer):
            await self._dispatch_events(receive)

    async def _dispatch_events(self, receive) -> None:
        turn = asyncio.Lock()
        failed: list[BaseException] = []
        this = asyncio.current_task()

        async def layer_events():
            try:
                while True:
                    event = await self.channel_receive()
                    async with turn:
                        await self.dispatch(event)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # StopConsumer too: the socket's task ends
                failed.append(exc)
                this.cancel()  # it waits for a frame or its turn: nothing is cut short

        layer = None if self.channel_layer is None else asyncio.ensure_future(layer_events())
        try:
            while True:
                message = await receive()
                async with turn:
                    await self.dispatch(message)
        except asyncio.CancelledError:
            if failed and isinstance(failed[0], redis_outage.REDIS_ERRORS):
                await self.redis_lost(failed[0])
                return
            if failed:
                raise failed[0] from None
            raise
        finally:
            if layer is not None:
                layer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await layer

    async def redis_lost(self, exc: BaseException) -> None:
        """The channel layer lost Redis: this socket can no longer be woken up, so it is
        told why and closed with 1013 (try again later); its client reconnects, and is
        let in again once Redis answers (its queue is read then: nothing is lost)."""
        redis_outage.failed(exc, where="ws")
        with contextlib.suppress(Exception):  # the peer may be gone as well
            await self.send_error(
                "redis_unavailable",
                f"A service the server needs is unavailable; reconnect in "
                f"{redis_outage.RETRY_AFTER} s.",
                retry_after=redis_outage.RETRY_AFTER,
            )
            await self.close(code=CLOSE_TRY_AGAIN_LATER)

    async def dispatch(self, message):
        # Channels' dispatch first hops to the thread-sensitive executor to close *that*
        # thread's stale DB connection, for every frame and every channel-layer event. Our
        # DB work never runs there: it runs on siphera.tenancy's pool, which checks its own
        # connections. So the hop is skipped (it cost a thread round trip per frame).
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def receive(self, text_data=None, bytes_data=None):
        org = self.scope.get("tenant")
        org_var.set(org.slug if org else None)
        raw = text_data if text_data is not None else bytes_data
        size = len(raw.encode() if isinstance(raw, str) else raw or b"")
        if size > self.max_frame_bytes:
            await self.send_error(
                "frame_too_large", f"Frames are limited to {self.max_frame_bytes} bytes."
            )
            return
        try:
            frame = orjson.loads(raw)
        except (ValueError, UnicodeDecodeError):
            await self.send_error("malformed_json", "The frame is not valid JSON.")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self.send_error("invalid_frame", "A frame is a JSON object with a 'type'.")
            return
        ref = frame.get("ref")
        try:
            await self.dispatch_frame(frame)
        except FrameError as exc:
            await self.send_error(exc.code, exc.message, ref=ref)
        except (OperationalError, InterfaceError):
            # PostgreSQL is down, restarting or out of connections: retry later. The
            # DB thread's broken connection is replaced before its next call.
            log.warning("ws.database_unavailable", extra={"frame_type": frame["type"]})
            await self.send_error(
                "database_unavailable",
                f"The database is unavailable; retry in {DATABASE_RETRY_AFTER} s.",
                ref=ref,
                retry_after=DATABASE_RETRY_AFTER,
            )
        except Exception:
            # A bug or a failing dependency must not kill the socket without cleanup
            # (PITFALLS 27): the client hears of it, and the socket goes on.
            log.exception("ws.frame_failed", extra={"frame_type": frame["type"]})
            await self.send_error(
                "internal_error", "The server could not handle this frame.", ref=ref
            )

    async def dispatch_frame(self, frame: dict) -> None:
        raise NotImplementedError

    async def send_frame(self, frame: dict) -> None:
        # orjson: a tenth of json.dumps's CPU, and every frame out is encoded here
        await self.send(text_data=orjson.dumps(frame).decode())

    async def send_error(self, code: str, message: str, ref=None, **extra) -> None:
        frame = {"type": "error", "code": code, "message": message, **extra}
        if isinstance(ref, (str, int)):
            frame["ref"] = ref
        await self.send_frame(frame)


async def close_after(consumer, seconds: float, code: int, still_pending) -> None:
    """Close `consumer` with `code` after `seconds` unless `still_pending()` turned false."""
    await asyncio.sleep(seconds)
    if still_pending():
        log.info("ws.closed", extra={"reason": "auth_timeout"})
        await consumer.close(code=code)
