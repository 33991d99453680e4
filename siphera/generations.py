"""Generations: counters that tell every web process "what you cached about X is stale".

Some answers are asked on every request but change rarely: which org a host name is
(siphera.tenancy.org_for_host), which device and user a bearer token is
(orgs.services.auth.authenticate_token). Each process keeps them in a `GenerationCache`,
tagged with the generation (a counter in Redis, `<CACHE_KEY_PREFIX>:gen:<name>`) read
*before* the answer was fetched. A change `bump`s the counter once its transaction
commits; an entry whose tag is not the current generation is never served.

- The process that made the change sees it at once: its own bump moves its local copy.
- Every other process reads the counter at most once per GENERATION_CHECK_SECONDS
  (default 1 s), so it serves a revoked token or a removed host for at most that long.
- Redis unreachable: `current()` answers a value that matches no entry, so every cache
  misses and requests go to PostgreSQL (correct, slower); entries filled before an
  outage never match again after it (the process's own part of the value moves on each
  failed read). A bump that failed is retried on the next read that reaches Redis.
- Every entry also expires after GENERATION_CACHE_MAX_AGE_SECONDS (default 60 s): the
  bound on staleness should a change ever skip its bump (a process killed between its
  commit and its bump).

Misses are never cached: an unknown host or token goes to the database every time.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import redis
import redis.asyncio
from django.conf import settings
from django.db import transaction
from django.db.models.base import ModelState

from siphera import redis_outage
from siphera.channel_layer import loop_client
from siphera.redis_outage import REDIS_ERRORS

__all__ = ["GenerationCache", "acurrent", "bump", "copy_model", "current"]

_lock = threading.Lock()
_read: dict[str, tuple[Any, float]] = {}  # name -> (value, time.monotonic() it was read)
_outages = 0  # failed reads so far: part of every value, so an outage invalidates all
_unsent: set[str] = set()  # bumps that could not reach Redis, retried on the next read


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)


def _key(name: str) -> str:
    return f"{settings.CACHE_KEY_PREFIX}:gen:{name}"


def current(name: str) -> Any:
    """The generation of `name` as this process knows it (read from Redis at most once
    per GENERATION_CHECK_SECONDS); a value matching no entry while Redis is unreachable."""
    now = time.monotonic()
    known = _read.get(name)
    if known is not None and now - known[1] < settings.GENERATION_CHECK_SECONDS:
        return known[0]
    if redis_outage.skip():
        return object()
    try:
        if _unsent:
            _send_unsent()
        raw = _client().get(_key(name))
    except REDIS_ERRORS as exc:
        return _read_failed(exc)
    return _remember(name, raw, now)


async def acurrent(name: str, *, fresh: bool = False) -> Any:
    """`current` from async code (a socket's frame), on the loop's own Redis client;
    `fresh`: read Redis now, whenever it was last read."""
    now = time.monotonic()
    known = _read.get(name)
    if not fresh and known is not None and now - known[1] < settings.GENERATION_CHECK_SECONDS:
        return known[0]
    if redis_outage.skip():
        return object()
    try:
        raw = await loop_client().get(_key(name))
    except REDIS_ERRORS as exc:
        return _read_failed(exc)
    return _remember(name, raw, now)


def _remember(name: str, raw, now: float) -> Any:
    redis_outage.succeeded()
    with _lock:
        value = (_outages, int(raw or 0))
        known = _read.get(name)
        if known is not None and known[0][0] == value[0] and known[0][1] > value[1]:
            value = known[0]  # this process bumped it while the read was under way
        _read[name] = (value, now)
    return value


def _read_failed(exc: BaseException) -> Any:
    global _outages
    redis_outage.failed(exc, where="generations")
    with _lock:
        _outages += 1
        _read.clear()
    return object()


def bump(name: str) -> None:
    """Mark everything cached under `name` stale, in every process, once the current
    transaction commits (at once outside one)."""
    transaction.on_commit(functools.partial(_bump_now, name))


def _bump_now(name: str) -> None:
    global _outages
    try:
        value = int(_client().incr(_key(name)))
    except REDIS_ERRORS as exc:
        redis_outage.failed(exc, where="generations")
        with _lock:
            _unsent.add(name)
            _outages += 1  # this process's own entries are stale from now on
            _read.clear()
        return
    redis_outage.succeeded()
    with _lock:
        _read[name] = ((_outages, value), time.monotonic())


def _send_unsent() -> None:
    with _lock:
        names = list(_unsent)
        _unsent.clear()
    try:
        for name in names:
            _client().incr(_key(name))
    except REDIS_ERRORS:
        with _lock:
            _unsent.update(names)
        raise


def copy_model(instance):
    """A copy of a model instance for one request: the same field values, its own
    `_state` (so no related object cached on it is shared). A third of `copy.copy`'s cost,
    which goes through pickling's protocol; like it, shallow."""
    clone = instance.__class__.__new__(instance.__class__)
    clone.__dict__.update(instance.__dict__)
    state = ModelState()
    state.db, state.adding = instance._state.db, instance._state.adding
    clone._state = state
    return clone


class GenerationCache:
    """A bounded map of answers, each served only while the generation it was fetched
    under is current and for at most GENERATION_CACHE_MAX_AGE_SECONDS.

    `get_or_fetch(key, generation_name, fetch)` returns a copy (`copy_value`, by default
    `copy_model`) of the cached answer, so a caller that changes what it got (a view
    editing `request.user`) never changes what other requests get; `fetch()` returning None
    is not cached.
    """

    def __init__(self, *, max_entries: int = 10_000, copy_value: Callable = copy_model):
        self._entries: dict[Hashable, tuple[Any, Any, float]] = {}
        self._max_entries = max_entries
        self._copy = copy_value

    def get_or_fetch(self, key: Hashable, generation_name: str, fetch: Callable[[], Any]):
        generation = current(generation_name)  # before the fetch: see the module docstring
        now = time.monotonic()
        entry = self._entries.get(key)
        if (
            entry is not None
            and entry[1] == generation
            and now - entry[2] < settings.GENERATION_CACHE_MAX_AGE_SECONDS
        ):
            return self._copy(entry[0])
        value = fetch()
        if value is None:
            self._entries.pop(key, None)
            return None
        if len(self._entries) >= self._max_entries:
            self._entries.clear()  # rare (10,000 distinct live keys): refill from use
        self._entries[key] = (value, generation, now)
        return self._copy(value)

    def clear(self) -> None:
        self._entries.clear()
