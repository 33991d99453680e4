"""ASGI middleware in front of the HTTP app: counts every answer by status class, and
answers `GET /metrics` on a host no org answers, to a scraper it allows.

Anyone else (no token, an address outside METRICS_ALLOWED_NETWORKS, an org's host) is
handed to the app like any other path, and gets the same 404 as any unknown path there:
the endpoint is not advertised. Counting sits in front of the body limit too, so its 413s
are counted.
"""

from __future__ import annotations

import logging

from channels.db import database_sync_to_async
from prometheus_client import CONTENT_TYPE_LATEST

from siphera.metrics import exposition
from siphera.metrics.instruments import HTTP_ABORTED, HTTP_BY_CLASS
from siphera.ratelimit import scope_client_ip
from siphera.tenancy import org_for_host

log = logging.getLogger("siphera.metrics")

PATH = "/metrics"


class MetricsMiddleware:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 0

        async def counting_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if scope["path"] == PATH and await _scrape(scope, counting_send):
                return
            await self.app(scope, receive, counting_send)
        finally:
            (HTTP_BY_CLASS.get(status // 100) or HTTP_ABORTED).inc()


async def _scrape(scope, send) -> bool:
    """Answer the scrape if this client may have it here; False to hand it on."""
    if scope["method"] not in ("GET", "HEAD") or not exposition.enabled():
        return False
    headers = dict(scope.get("headers") or ())
    authorization = headers.get(b"authorization", b"").decode("latin-1") or None
    if not exposition.allowed(authorization, scope_client_ip(scope)):
        return False
    host = headers.get(b"host", b"").decode("latin-1")
    try:
        org = await database_sync_to_async(org_for_host)(host)
    except Exception:  # the database is down: an outage is when metrics matter most
        log.warning("metrics.host_lookup_failed", exc_info=True)
        org = None
    if org is not None:
        return False  # an org's host: metrics live on the operator's host only
    body = await database_sync_to_async(exposition.render)()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", CONTENT_TYPE_LATEST.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
    return True
