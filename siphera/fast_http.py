"""The hottest API requests without Django's request machinery (FAST_HTTP, on by default).

A REST send (`POST /api/v1/conversations/{id}/messages`) cost about 3.6 ms of the web
process's CPU through Django: the handler, eleven middleware, URL resolution, DRF's
request, negotiation, authentication and throttling, its Response and renderer, and a
thread hand-over. The send's own work (the statement and the wake-up) is about a fifth of
that, and the same send over a WebSocket costs 0.5-1 ms. A route registered here (`route`)
is served by this ASGI middleware instead: the request is checked and answered by the very
functions the Django path uses, in one call on the database threads the sockets use
(siphera.tenancy.tenant_db), and its answer encoded once.

What a served request gets, in Django's order:

1. the org of its Host (`org_for_host`: 404 `unknown_org`), the `http.ip` rate limit;
2. its bearer token and permissions, by the authentication and permission classes of the
   DRF view the route belongs to (the same objects, so the permission matrix, the
   schema and the route's Django twin stay the one source), the `api.user` rate limit;
3. the route's handler, which the DRF view calls too;
4. errors shaped by siphera.api_errors (`exception_handler` for API errors, `handler500`'s
   mapping for the database, Redis and key ring), the headers Django's middleware would
   add, an `X-Request-ID`, and one access log line.

Anything the route does not expect is declined *before* any work, and Django serves it with
the body replayed: another method or path, no `Authorization: Bearer`, a query string, a
content type other than JSON, an `Accept` that excludes JSON, a body that is not a JSON
object (Django's parser then words the 400), or a deployment that redirects to HTTPS or
sends HSTS (Django's SecurityMiddleware owns those). So a client sees one API, whichever
path answered; `siphera/tests/test_fast_http.py` sends the same requests to a server with and
without it and compares status, body and headers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings
from rest_framework.exceptions import APIException, NotAuthenticated, PermissionDenied

from siphera import api_errors
from siphera.logging import org_var, request_id_var
from siphera.metrics.instruments import FAST_HTTP_REQUESTS
from siphera.middleware import log_access, request_id_for, unknown_org
from siphera.ratelimit import enforce_named, hit_named, scope_client_ip, too_many
from siphera.tenancy import DatabaseBusy, enter_tenant, on_db_thread, org_for_host

log = logging.getLogger("siphera.fast_http")

# What Django's middleware adds to an API answer past the tenant and rate-limit
# middleware (SecurityMiddleware with its defaults, XFrameOptionsMiddleware); an unknown
# host or an `http.ip` refusal is answered before them, without these, as by Django.
# `siphera/tests/test_fast_http.py` compares them.
_SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


@dataclass(frozen=True)
class FastRoute:
    name: str  # in the metrics (siphera_fast_http_requests)
    method: str
    pattern: re.Pattern
    view: type  # the DRF view serving the same URL (its permission classes apply)
    handler: Callable[..., tuple[int, Any]]  # (request, **path parameters) -> (status, data)
    allow: bytes  # DRF's `Allow` header for the view


_routes: list[FastRoute] = []


def route(name: str, method: str, pattern: str, *, view: type) -> Callable:
    """Register `handler(request, **groups) -> (status, data)` for `method` on the path
    regex `pattern` (named groups are its parameters). The handler runs on a database
    thread in the org's schema; `request` has `method`, `user`, `auth` (the device),
    `tenant` and `data` (the parsed JSON object). The DRF `view` must call the same handler:
    it serves whatever the fast path declines."""

    def register(handler):
        instance = view()
        instance.setup(None)  # as Django's as_view does: a view with GET answers HEAD
        allow = ", ".join(instance.allowed_methods).encode()
        _routes.append(FastRoute(name, method, re.compile(pattern), view, handler, allow))
        return handler

    return register


class FastRequest:
    """What a route's handler and its view's permission classes read of a request."""

    __slots__ = ("META", "method", "path", "user", "auth", "tenant", "data")

    def __init__(self, method: str, path: str, data: dict, authorization: str) -> None:
        self.method, self.path, self.data = method, path, data
        self.META = {"HTTP_AUTHORIZATION": authorization}  # read by DRF authenticators
        self.user = self.auth = self.tenant = None


def enabled() -> bool:
    return (
        settings.FAST_HTTP and not settings.SECURE_SSL_REDIRECT and not settings.SECURE_HSTS_SECONDS
    )


class FastHttpMiddleware:
    """ASGI middleware in front of Django's HTTP handler (inside the body limit and the
    metrics): serves the registered routes, hands everything else to Django."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not _routes or scope["query_string"] or not enabled():
            return await self.app(scope, receive, send)
        found = _match(scope["method"], scope["path"])
        if found is None:
            return await self.app(scope, receive, send)
        reads_body = scope["method"] != "GET"
        headers = _headers(scope, reads_body)
        if headers is None:
            _count(found, "declined")
            return await self.app(scope, receive, send)
        body, disconnected = await _read_body(receive)
        if disconnected:
            return None
        data = _parse(body) if reads_body else ({} if not body else None)
        if data is None:
            _count(found, "declined")
            return await self.app(scope, _replay(body, receive), send)
        _count(found, "served")
        await _serve(scope, send, found, headers, data)
        return None


def _count(found, outcome: str) -> None:
    FAST_HTTP_REQUESTS.labels(found[0].name, outcome).inc()


def _match(method: str, path: str):
    for candidate in _routes:
        if candidate.method == method:
            matched = candidate.pattern.fullmatch(path)
            if matched is not None:
                return candidate, matched.groupdict()
    return None


def _parse(body: bytes) -> dict | None:
    """A JSON object, or None (Django's parser then words the error)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _headers(scope, reads_body: bool) -> dict[bytes, str] | None:
    """The headers the fast path reads, or None to decline the request."""
    wanted: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in (b"host", b"authorization", b"content-type", b"accept", b"x-request-id"):
            if name in wanted:
                return None  # a repeated header: Django's rules decide
            wanted[name] = value.decode("latin-1")
    if not wanted.get(b"authorization", "").startswith("Bearer "):
        return None
    content_type = "".join(wanted.get(b"content-type", "").lower().split())
    if reads_body and content_type not in _JSON_TYPES:
        return None  # another charset or parameter: DRF's parser decides
    if wanted.get(b"accept", "*/*") not in _ACCEPTED:
        return None  # quality values and the like: DRF's negotiation decides
    return wanted


_JSON_TYPES = frozenset({"application/json", "application/json;charset=utf-8"})
_ACCEPTED = frozenset({"*/*", "application/json", "application/json, */*"})


async def _read_body(receive) -> tuple[bytes, bool]:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def _replay(body: bytes, receive):
    sent = False

    async def replaying():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replaying


async def _serve(scope, send, found, headers, data) -> None:
    started = time.perf_counter()
    fast_route, parameters = found
    request_id = request_id_for(headers.get(b"x-request-id", ""))
    rid_token = request_id_var.set(request_id)
    org_token = org_var.set(None)
    try:
        request = FastRequest(scope["method"], scope["path"], data, headers[b"authorization"])
        try:
            status, content, extra = await _on_db_thread(
                _answer,
                fast_route,
                request,
                parameters,
                headers.get(b"host", ""),
                scope_client_ip(scope),
            )
        except Exception:  # the database, Redis or the key ring: as Django answers
            status, content, extra = _failure()
        if request.tenant is not None:
            org_var.set(request.tenant.slug)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    *extra,
                    (b"x-request-id", request_id.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})
        log_access(scope["method"], scope["path"], status, started)
    finally:
        request_id_var.reset(rid_token)
        org_var.reset(org_token)


_slots: asyncio.Semaphore | None = None  # of the process's one event loop


async def _on_db_thread(fn, *args):
    """`fn(*args)` on the database threads, at most FAST_HTTP_DB_CALLS of this path's at
    once, so the sockets always find threads free whatever the REST load. A request waits
    DATABASE_POOL_TIMEOUT_SECONDS at most for its turn, and as long again for a thread
    (DatabaseBusy: a 503, as Django answers a request that finds no pooled connection)."""
    global _slots
    if _slots is None:
        _slots = asyncio.Semaphore(settings.FAST_HTTP_DB_CALLS)
    wait = settings.DATABASE_POOL_TIMEOUT_SECONDS
    try:
        async with asyncio.timeout(wait):
            await _slots.acquire()
    except TimeoutError:
        raise DatabaseBusy("the fast path's database threads stayed busy") from None
    try:
        return await on_db_thread(fn, *args, wait_at_most=wait)
    finally:
        _slots.release()


def _answer(fast_route: FastRoute, request: FastRequest, parameters, host: str, ip):
    """On a database thread: the checks and the handler, in the order Django's middleware
    and DRF run them, and the answer encoded."""
    org = org_for_host(host)
    if org is None:
        return _error(unknown_org())
    enter_tenant(org)
    request.tenant = org
    org_var.set(org.slug)
    if ip:
        retry_after = hit_named("http.ip", ip)
        if retry_after is not None:
            return _error(too_many(retry_after))
    try:
        view = fast_route.view()
        for authenticator in view.get_authenticators():
            found = authenticator.authenticate(request)
            if found is not None:
                request.user, request.auth = found
                break
        else:
            raise NotAuthenticated()
        for permission in view.get_permissions():
            if not permission.has_permission(request, view):
                raise PermissionDenied()
        enforce_named("api.user", request.user.pk)
        status, data = fast_route.handler(request, **parameters)
        return status, orjson.dumps(data), [(b"allow", fast_route.allow), *_SECURITY_HEADERS]
    except APIException as exc:
        response = api_errors.exception_handler(exc, {})
        headers = _headers_of(response, lambda name: name != "content-type")
        return (
            response.status_code,
            orjson.dumps(response.data),
            [(b"allow", fast_route.allow), *headers, *_SECURITY_HEADERS],
        )


def _error(exc: api_errors.ApiError):
    """An error answered before the security middleware would have run (an unknown host,
    the `http.ip` limit): Django's answer has none of its headers either."""
    body = orjson.dumps(api_errors.error_body(exc.code, exc.message, **exc.extra))
    return exc.status_code, body, _headers_of(exc.headers)


def _headers_of(headers, keep=lambda name: True) -> list[tuple[bytes, bytes]]:
    """ASGI header pairs of a response's or an ApiError's headers (names lower-cased)."""
    return [
        (name.lower().encode(), value.encode())
        for name, value in headers.items()
        if keep(name.lower())
    ]


def _failure():
    """An exception the handler did not expect, answered as Django's `handler500` does
    (503 for the database, Redis or the key ring; 400 for a value the database refused;
    500 and a logged traceback for a bug)."""
    response = api_errors.handler500(None)
    if response.status_code == 500:
        log.exception("fast_http.unhandled")
    headers = _headers_of(response, lambda name: name == "retry-after")
    return response.status_code, response.content, [*headers, *_SECURITY_HEADERS]
