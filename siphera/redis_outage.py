"""Redis unreachable: noticed once, said once, and probed again at most once a second.

Redis carries the rate-limit counters, the channel layer (socket wake-ups), the cache and
the Celery broker, but no data a client sent: messages and everything else accepted live
in PostgreSQL. So Redis gone degrades the server instead of stopping it: rate limits fall
back to counters in this process (siphera.ratelimit), wake-ups are dropped (a socket reads
its queue when it connects), live sockets are told `redis_unavailable` and closed with
1013 so their clients reconnect, new handshakes are refused with 503 + Retry-After, and a
request that cannot do without Redis answers 503 `redis_unavailable` (never a 500).

Every caller reports what it saw here. The first failure logs one warning ("redis
unavailable"), the first success after it one info line ("redis available again"); in
between, rate limits and handshakes skip Redis (`skip()`) and try it again at most once per
PROBE_SECONDS, so an outage costs neither a log line nor a connection attempt per request.
Wake-ups are always tried (siphera.events): one call's blip must not silence live sockets.
"""

from __future__ import annotations

import logging
import threading
import time

import redis.exceptions

log = logging.getLogger("siphera.redis")

# What Redis being down or unreachable looks like to redis-py (refused, reset, timed out).
REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# Seconds a client is told to wait (Retry-After, `retry_after`) during an outage.
RETRY_AFTER = 5
PROBE_SECONDS = 1.0

_lock = threading.Lock()
_since: float | None = None  # time.monotonic() of the first failure of this outage
_next_try = 0.0


def active() -> bool:
    """Whether this process last saw Redis fail (and not succeed since)."""
    return _since is not None


def skip() -> bool:
    """Whether a caller that can do without Redis should not try it now: during an
    outage, only one call per PROBE_SECONDS goes to Redis (and finds out if it is back)."""
    global _next_try
    if _since is None:
        return False
    with _lock:
        now = time.monotonic()
        if now < _next_try:
            return True
        _next_try = now + PROBE_SECONDS
        return False


def failed(exc: BaseException, *, where: str) -> None:
    """Report a failed Redis call; the first of an outage is logged (as a warning)."""
    global _since, _next_try
    with _lock:
        now = time.monotonic()
        _next_try = now + PROBE_SECONDS
        if _since is not None:
            return
        _since = now
    log.warning(
        "redis unavailable: rate limits fall back to per-process counters, sockets are "
        "closed (1013) and told to reconnect",
        extra={"where": where, "error": f"{type(exc).__name__}: {exc}"},
    )


def succeeded() -> None:
    """Report a Redis call that worked; ends an outage (logged once)."""
    global _since
    if _since is None:
        return
    with _lock:
        if _since is None:
            return
        lasted, _since = time.monotonic() - _since, None
    log.info("redis available again", extra={"outage_seconds": round(lasted, 1)})
