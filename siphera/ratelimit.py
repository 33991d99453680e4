"""Fixed-window rate limits in Redis, shared by every web process.

Counters live in Redis under `<CACHE_KEY_PREFIX>:rl:<schema>:<scope>:<ident>`, so every
web process of the deployment spends one budget, and one org's traffic never spends
another org's. Named limits (the table in docs/rate-limits.md) have generous defaults
below, each overridable with `RATE_LIMITS="name=count/seconds,..."`; a few older limits
(login, MFA, key directory) have their own settings and call `enforce` directly. Named
limits are spent from leases of the Redis budget (`hit_named`), so most requests and
frames cost no round trip; the others count each hit in Redis.

Over a limit: HTTP answers 429 `rate_limited` with `Retry-After` (and `retry_after` in the
body); a WebSocket frame gets an `error` frame with code `rate_limited` and `retry_after`.

Redis unreachable: every limit fails open to counters of this process with the same
limits and windows (so each web process allows the whole budget; siphera.redis_outage
logs the outage once and retries Redis at most once a second), rather than failing the
request.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from dataclasses import dataclass

import redis
import redis.asyncio
from django.conf import settings
from django.db import connection

from siphera import redis_outage
from siphera.api_errors import ApiError, error_response
from siphera.channel_layer import loop_client
from siphera.metrics import instruments as metrics
from siphera.redis_outage import REDIS_ERRORS


@dataclass(frozen=True)
class Limit:
    count: int
    window: int  # seconds


# name -> (count, window seconds). Generous: a person or a well-behaved client never
# meets them; a runaway script or a flood does.
DEFAULT_LIMITS: dict[str, tuple[int, int]] = {
    "http.ip": (1200, 60),  # every HTTP request to an org host, per client IP
    "api.user": (1200, 60),  # every authenticated API call, per user
    "portal.user": (600, 60),  # every signed-in portal page or action, per user
    "invitation.ip": (30, 300),  # opening/accepting invitation links, per client IP
    "sso.ip": (60, 60),  # starting single sign-on sign-ins (GET /sso/login), per client IP
    "ws.connect.ip": (120, 60),  # WebSocket handshakes, per client IP
    "ws.frame.user": (1800, 60),  # every frame after auth, per user (all their sockets)
    "calls.turn.user": (60, 60),  # TURN credentials (GET /api/v1/calls/turn), per user
    "scim.token": (60000, 60),  # SCIM requests (/scim/v2/), per org token: IdP pushes
}


def parse_limits(spec: str) -> dict[str, Limit]:
    """`DEFAULT_LIMITS` with the overrides of a `name=count/seconds,...` string (later
    entries win). Unknown names or malformed entries raise ValueError at start-up."""
    limits = {name: Limit(*value) for name, value in DEFAULT_LIMITS.items()}
    for item in (part.strip() for part in (spec or "").split(",")):
        if not item:
            continue
        name, _, value = item.partition("=")
        count, _, window = value.partition("/")
        name = name.strip()
        if name not in DEFAULT_LIMITS or not count.strip().isdigit():
            raise ValueError(f"RATE_LIMITS: bad entry {item!r} (known: {', '.join(limits)})")
        limits[name] = Limit(int(count), int(window) if window.strip().isdigit() else 60)
    return limits


@functools.cache
def limits() -> dict[str, Limit]:
    return parse_limits(getattr(settings, "RATE_LIMITS", ""))


def limit(name: str) -> Limit:
    return limits()[name]


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def _key(scope: str, ident: str, schema: str | None) -> str:
    return f"{settings.CACHE_KEY_PREFIX}:rl:{schema or connection.schema_name}:{scope}:{ident}"


def hit(
    scope: str, ident: str, *, limit: int, window: int, schema: str | None = None
) -> int | None:
    """Count one hit; return None if under `limit` per `window` seconds, else the seconds
    until the window resets (for Retry-After). Keys carry the schema (default: the
    current one), so one org's traffic never spends another org's budget."""
    key = _key(scope, ident, schema)
    verdict = _guarded(
        lambda: _verdict(_script(_client())(keys=[key], args=[window, limit])),
        lambda: _local_verdict(key, window, limit),
    )
    if verdict is not None:
        metrics.rate_limited(scope)  # a limit's name, never the identity
    return verdict


# One round trip and one small reply per hit (limits with their own settings: login, MFA,
# key claims): count, start the window on the first hit, and only past the limit read how
# long it has left.
_HIT_LUA = """
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
if count > tonumber(ARGV[2]) then
  return redis.call('TTL', KEYS[1])
end
return -3
"""


@functools.cache
def _script(client):
    return client.register_script(_HIT_LUA)


def _verdict(reply: int) -> int | None:
    return None if reply == -3 else max(int(reply), 1)


def hit_named(name: str, ident, *, schema: str | None = None) -> int | None:
    """`hit` against a named limit of the table, spent from a lease (`_take_lease`): most
    calls cost no Redis round trip. Runs on every HTTP request (`http.ip`, `api.user`).
    A refusal is counted in the metrics under the limit's name."""
    verdict = _hit_named(name, ident, schema=schema)
    if verdict is not None:
        metrics.rate_limited(name)
    return verdict


def _hit_named(name: str, ident, *, schema: str | None) -> int | None:
    rule = limit(name)
    key = _key(name, str(ident), schema)
    now = time.monotonic()
    decided, verdict = _take_lease(key, now)
    if decided:
        return verdict
    if redis_outage.skip():
        return _local_verdict(key, rule.window, rule.count)
    try:
        granted, ttl_ms = _lease_script(_client())(
            keys=[key], args=[rule.window, rule.count, _lease_size(rule)]
        )
    except REDIS_ERRORS as exc:
        redis_outage.failed(exc, where="ratelimit")
        return _local_verdict(key, rule.window, rule.count)
    redis_outage.succeeded()
    return _store_lease(key, now, int(granted), int(ttl_ms))


async def ahit_named(name: str, ident, *, schema: str) -> int | None:
    """`hit_named` from async code (a consumer: every frame of every socket)."""
    rule = limit(name)
    key = _key(name, str(ident), schema)
    now = time.monotonic()
    decided, verdict = _take_lease(key, now)
    if decided:
        return verdict
    if redis_outage.skip():
        return _local_verdict(key, rule.window, rule.count)
    try:
        granted, ttl_ms = await _lease_script(loop_client())(
            keys=[key], args=[rule.window, rule.count, _lease_size(rule)]
        )
    except REDIS_ERRORS as exc:
        redis_outage.failed(exc, where="ratelimit")
        return _local_verdict(key, rule.window, rule.count)
    redis_outage.succeeded()
    return _store_lease(key, now, int(granted), int(ttl_ms))


# Leases: the process takes several hits of a window's budget from Redis at once and
# spends them locally, so most hits cost no round trip; a refusal is remembered until the
# window ends, so a flood costs none either. Every process still spends the one budget in
# Redis. A lease is at most 1/50 of the limit (and 100 hits): hits leased by one process
# and not spent are lost to the others for that window, so a client whose requests or
# sockets reach several processes may be refused up to that much early, never late.


def _lease_size(rule: Limit) -> int:
    return max(1, min(100, rule.count // 50))


def _take_lease(key: str, now: float) -> tuple[bool, int | None]:
    """(True, verdict) when this process's lease for `key` decides the hit, else
    (False, None): a new lease is needed."""
    with _lease_lock:
        lease = _leases.get(key)
        if lease is None or lease.until <= now:
            return False, None
        if lease.left > 0:
            lease.left -= 1
            return True, None
        if lease.refused:
            return True, max(math.ceil(lease.until - now), 1)
        return False, None


def _store_lease(key: str, now: float, granted: int, ttl_ms: int) -> int | None:
    """Keep what Redis granted (one hit of it spent now); the verdict of this hit."""
    until = time.monotonic() + max(ttl_ms, 0) / 1000
    with _lease_lock:
        if len(_leases) > 10_000:
            _forget_expired_leases(now)
        if not granted:
            _leases[key] = _Lease(until=until, left=0, refused=True)
            return max(math.ceil(ttl_ms / 1000), 1)
        current = _leases.get(key)
        left = granted - 1
        if current is not None and current.until > now and not current.refused:
            left += current.left  # another hit of this key leased meanwhile
        _leases[key] = _Lease(until=until, left=left, refused=False)
    return None


@dataclass
class _Lease:
    until: float  # time.monotonic() when the window's key expires in Redis
    left: int  # leased hits not yet spent
    refused: bool  # the budget is spent: refuse until `until`


_leases: dict[str, _Lease] = {}
_lease_lock = threading.Lock()  # sync views' threads and the event loop share the table


def _forget_expired_leases(now: float) -> None:
    for key in [k for k, lease in _leases.items() if lease.until <= now]:
        del _leases[key]


# Take up to ARGV[3] hits of the window's budget; the reply is {hits granted, ms until the
# window resets}. Counting past the limit is harmless (the window's key expires anyway).
_LEASE_LUA = """
local want = tonumber(ARGV[3])
local used = redis.call('INCRBY', KEYS[1], want)
redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
local room = tonumber(ARGV[2]) - (used - want)
if room < 0 then room = 0 end
return {math.min(room, want), redis.call('PTTL', KEYS[1])}
"""


@functools.cache
def _lease_script(client):
    return client.register_script(_LEASE_LUA)


# --- counters read before they are judged (login failures: orgs.services.auth) ------------


def reserve(scope: str, ident: str, *, window: int) -> tuple[int, int]:
    """Count one more against `scope`/`ident` (the window starts at the first) and return
    (the count now, seconds until the window resets). Counting before the outcome is known
    keeps parallel attempts from all slipping under a limit; `release` gives the count
    back when the outcome turns out not to be one that counts."""
    key = _key(scope, ident, None)

    def in_redis() -> tuple[int, int]:
        count, ttl = _reserve_script(_client())(keys=[key], args=[window])
        return int(count), max(int(ttl), 1)

    return _guarded(in_redis, lambda: _local_add(key, window))


def peek(scope: str, ident: str) -> tuple[int, int]:
    """(the count of `scope`/`ident` in its window, seconds until it resets); (0, 0) when
    nothing is counted."""
    key = _key(scope, ident, None)

    def in_redis() -> tuple[int, int]:
        value, ttl = _client().pipeline(transaction=False).get(key).ttl(key).execute()
        return (int(value), max(int(ttl), 1)) if value is not None else (0, 0)

    return _guarded(in_redis, lambda: _local_peek(key))


def release(scope: str, ident: str) -> None:
    """Give back one `reserve`d count (never below zero, never reviving an expired key)."""
    key = _key(scope, ident, None)
    _guarded(lambda: _release_script(_client())(keys=[key]), lambda: _local_add(key, 1, -1))


_RESERVE_LUA = """
local count = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[1], 'NX')
return {count, redis.call('TTL', KEYS[1])}
"""
_RELEASE_LUA = """
if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then
  return redis.call('DECR', KEYS[1])
end
return 0
"""


@functools.cache
def _reserve_script(client):
    return client.register_script(_RESERVE_LUA)


@functools.cache
def _release_script(client):
    return client.register_script(_RELEASE_LUA)


def too_many(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "rate_limited",
        f"Too many requests; retry in {retry_after} s.",
        extra={"retry_after": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


def enforce(scope: str, ident: str, *, limit: int, window: int) -> None:
    """Raise a 429 `rate_limited` ApiError with Retry-After when over the limit."""
    retry_after = hit(scope, ident, limit=limit, window=window)
    if retry_after is not None:
        raise too_many(retry_after)


def enforce_named(name: str, ident) -> None:
    """`enforce` against a named limit of the table."""
    retry_after = hit_named(name, ident)
    if retry_after is not None:
        raise too_many(retry_after)


def reset(scope: str, ident: str) -> None:
    key = _key(scope, ident, None)
    _guarded(lambda: _client().delete(key), lambda: _local.pop(key, None))


# --- Redis unreachable: this process's own counters (siphera.redis_outage) ---------------


def _guarded(in_redis, locally):
    """`in_redis()`, or `locally()` when Redis fails (or is known down and not due for
    another try): a rate limit must never be what turns a Redis outage into failed
    requests."""
    if redis_outage.skip():
        return locally()
    try:
        result = in_redis()
    except REDIS_ERRORS as exc:
        redis_outage.failed(exc, where="ratelimit")
        return locally()
    redis_outage.succeeded()
    return result


# key -> [count, time.monotonic() when its window ends]; the same keys, limits and windows
# as in Redis, but for this process only. Emptied of ended windows as it grows.
_local: dict[str, list] = {}


def _local_add(key: str, window: int, n: int = 1) -> tuple[int, int]:
    """Add `n` to the local count of `key` (a window of `window` seconds starts when none
    is running; a negative `n` never starts one nor goes below zero): (count, seconds
    left)."""
    now = time.monotonic()
    entry = _local.get(key)
    if entry is None or entry[1] <= now:
        if n <= 0:
            return 0, 0
        if len(_local) > 10_000:
            # A copy first: sync views' threads and the event loop share the table.
            for stale in [k for k, (_, until) in list(_local.items()) if until <= now]:
                _local.pop(stale, None)
            if len(_local) > 100_000:  # a flood of distinct keys: memory before counts
                _local.clear()
        entry = _local[key] = [0, now + window]
    entry[0] = max(entry[0] + n, 0)
    return entry[0], max(math.ceil(entry[1] - now), 1)


def _local_peek(key: str) -> tuple[int, int]:
    entry = _local.get(key)
    now = time.monotonic()
    if entry is None or entry[1] <= now:
        return 0, 0
    return entry[0], max(math.ceil(entry[1] - now), 1)


def _local_verdict(key: str, window: int, limit: int) -> int | None:
    count, left = _local_add(key, window)
    return None if count <= limit else left


# --- where the limits are applied --------------------------------------------------------


class RateLimitMiddleware:
    """`http.ip` on every request an org host answers (after the tenant middleware, so
    the counter is the org's). Static files are exempt: they are cheap and a page pulls
    several."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        from siphera.net import client_ip

        ip = client_ip(request)
        # /scim/v2/ spends its own budget per org token (an IdP's push of 10,000 users
        # comes from one address); a request without a valid token spends this one there.
        exempt = request.path.startswith(("/static/", "/scim/"))
        if ip and connection.schema_name != "public" and not exempt:
            retry_after = hit_named("http.ip", ip)
            if retry_after is not None:
                return error_response(too_many(retry_after))
        return self.get_response(request)


class ApiUserRateLimit:
    """DRF throttle: `api.user` per authenticated user on every API call (answered as
    the ApiError above, so the body has the project's error shape)."""

    def allow_request(self, request, view) -> bool:
        user = getattr(request, "user", None)
        if user is not None and getattr(user, "pk", None):
            enforce_named("api.user", user.pk)
        return True

    def wait(self):  # never asked: allow_request raises instead of answering False
        return None


def scope_client_ip(scope) -> str | None:
    """The client address of an ASGI scope (a WebSocket), honouring TRUSTED_PROXY_COUNT
    exactly like siphera.net.client_ip does for HTTP."""
    from siphera.net import forwarded_client

    forwarded = ",".join(
        value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name == b"x-forwarded-for"
    )
    client = scope.get("client")
    return forwarded_client(forwarded, client[0] if client else None)
