"""Request bodies over the limit are refused before they are stored (issue 15 item 1).

Django's ASGI handler reads the whole request body (to memory, then a temporary file past
FILE_UPLOAD_MAX_MEMORY_SIZE) before any middleware or view runs, and
DATA_UPLOAD_MAX_MEMORY_SIZE is only checked when a view reads `request.body`: a client,
signed in or not, could make the server spool gigabytes to disk. This ASGI middleware
sits in front of Django: a `Content-Length` over the path's limit is answered 413 at
once, without reading the body; a body without one (chunked) is counted as it arrives
and answered 413 as soon as it passes the limit, and Django is told the client left.

Limits (bytes): REQUEST_BODY_LIMITS maps path prefixes to their own (attachment uploads,
SCIM), every other path gets DATA_UPLOAD_MAX_MEMORY_SIZE. Views keep their own, smaller
checks (an org's attachment limit, say): this is the ceiling that protects the process.
"""

from __future__ import annotations

import json

from django.conf import settings

CODE = "request_too_large"
SCIM_ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def limit_for(path: str) -> int:
    """The largest body a request to `path` may carry."""
    for prefix, limit in settings.REQUEST_BODY_LIMITS.items():
        if path.startswith(prefix):
            return limit
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def _content_length(scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server (h11/httptools) refuses such a request itself
    return None


async def _refuse(send, path: str, limit: int) -> None:
    message = f"The request body is limited to {limit} bytes here."
    if path.startswith("/scim/"):  # SCIM clients read a SCIM error (RFC 7644 3.12)
        content_type = b"application/scim+json"
        answer = {"schemas": [SCIM_ERROR], "status": "413", "detail": message}
    else:
        content_type = b"application/json"
        answer = {"error": {"code": CODE, "message": message, "max_bytes": limit}}
    body = json.dumps(answer).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        limit = limit_for(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, path, limit)
            return
        received = 0
        refused = False

        async def counting_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # More than it declared, or no Content-Length: answer now, and tell
                    # Django the client left so that it drops what it has spooled.
                    refused = True
                    await _refuse(send, path, limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:  # after our 413 Django has nothing to say
                await send(message)

        await self.app(scope, counting_receive, guarded_send)
