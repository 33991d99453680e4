"""Everything that touches PostgreSQL schemas lives here.

One org = one schema (django-tenants). HTTP requests get their schema from
`siphera.middleware.TenantMiddleware`; WebSockets, Celery tasks and commands get it from
the helpers below. Nothing else calls `connection.set_tenant` by hand.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import queue
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, InterfaceError, OperationalError, connection, connections
from django.http.request import split_domain_port, validate_host
from django_tenants.utils import (
    get_public_schema_name,
    get_tenant_domain_model,
    schema_context,
    tenant_context,
)

from siphera import events, generations

T = TypeVar("T")

__all__ = [
    "group_name",
    "in_tenant",
    "org_for_host",
    "public_db",
    "public_schema",
    "run_in_tenant",
    "schema_context",
    "send_task",
    "tenant_context",
    "tenant_db",
]

_GROUP_PART = re.compile(r"^[A-Za-z0-9_.-]+$")


def normalize_host(host: str) -> str | None:
    """Lower-cased host without port, or None if it is not a valid Host header value."""
    domain, _port = split_domain_port(host or "")
    return domain or None


def org_for_host(host: str):
    """The active Org whose Domain matches `host`, or None.

    The same lookup serves HTTP (middleware) and WebSocket (ASGI middleware): the host must
    pass ALLOWED_HOSTS and be registered as one of the org's domains. Runs in `public`.

    Each process caches the answer per host until a save or delete of an Org or Domain
    bumps the `tenancy` generation (siphera.generations): at once in the process that made
    the change, within GENERATION_CHECK_SECONDS in the others. A host no org answers is
    not cached. Each caller gets its own copy of the Org.
    """
    domain = normalize_host(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    return _orgs_by_host.get_or_fetch(domain, _TENANCY, lambda: _fetch_org(domain))


def _fetch_org(domain: str):
    Domain = get_tenant_domain_model()  # orgs.Domain: the core names no app

    with schema_context(get_public_schema_name()):
        row = (
            Domain.objects.select_related("tenant")
            .filter(domain=domain, tenant__is_active=True)
            .first()
        )
    return row.tenant if row else None


_TENANCY = "tenancy"
_orgs_by_host = generations.GenerationCache()


def forget_cached_orgs(**_signal_kwargs) -> None:
    """Which org a host is may have changed (an Org or Domain was saved or deleted): every
    process drops its cached answers (after the current transaction commits)."""
    generations.bump(_TENANCY)


def public_schema():
    """Context manager: run in the public schema (org directory)."""
    return schema_context(get_public_schema_name())


def in_tenant(org, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a sync function inside `org`'s schema, restoring the previous schema after."""
    with tenant_context(org):
        return fn(*args, **kwargs)


async def tenant_db(org, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a sync DB function from async code (a consumer) inside `org`'s schema.

    Calls run on the pool's threads (_DbPool); a thread's connection may still be set
    to another org's schema from its previous call (PITFALLS 2), so the schema is set
    explicitly for every call. Worker threads live as long as the process, so each keeps
    its connection open between calls instead of reconnecting per frame; a connection that
    saw an error is checked and replaced if unusable (PITFALLS 5). With
    TENANT_DB_VERIFY_SCHEMA on, PostgreSQL itself confirms the schema before `fn` runs.
    """

    def call() -> T:
        enter_tenant(org)
        return fn(*args, **kwargs)

    return await _db_pool().run(call)


def enter_tenant(org) -> None:
    """On one of tenant_db's threads: point its connection at `org`'s schema.

    Worker threads belong to no request: the schema stays set after the call (the next
    call sets its own), so a thread serving one org keeps its search_path."""
    if connection.schema_name != org.schema_name:
        connection.set_tenant(org)
    if settings.TENANT_DB_VERIFY_SCHEMA:
        verify_schema(org)


async def on_db_thread(fn: Callable[..., T], *args: Any, wait_at_most: float | None = None) -> T:
    """Run `fn(*args)` on tenant_db's threads without choosing a schema first: for a call
    that finds its org itself (siphera.fast_http: the Host's org, then `enter_tenant`).
    With `wait_at_most`, a call no thread has started within that many seconds (every
    thread busy: a slow or locked database) is not run: it raises DatabaseBusy (an
    OperationalError: a 503 `database_unavailable`), as a Django request does that finds
    no pooled connection."""
    return await _db_pool().run(lambda: fn(*args), wait_at_most=wait_at_most)


class DatabaseBusy(OperationalError):
    """Every database thread stayed busy (a slow or locked database) for as long as the
    caller would wait."""


async def public_db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a sync DB function from async code in the `public` schema (the org directory),
    on tenant_db's threads and their open connections.

    For the WebSocket handshake's org lookup: channels' database_sync_to_async ran it on
    one thread for every handshake of the process, and closed that thread's connection
    after each (CONN_MAX_AGE = 0), so every socket cost PostgreSQL a new backend."""

    def call() -> T:
        with public_schema():
            return fn(*args, **kwargs)

    return await _db_pool().run(call)


class _DbPool:
    """Threads that run consumers' DB calls, each keeping its own PostgreSQL connection.

    Consumer DB calls spend most of their time waiting on PostgreSQL, so they get threads
    of their own rather than asyncio's default pool (cpu_count + 4 threads, shared with
    every `to_thread` call). Not a ThreadPoolExecutor: its futures, locks and idle-thread
    bookkeeping cost 50 µs of CPU per call under load, where a plain queue and
    `call_soon_threadsafe` cost 7 µs, and every frame makes one or two calls. The call runs
    in a copy of the caller's context (the org of the log lines, the loop bound by
    siphera.events), as with sync_to_async, on the thread's connection once one that saw
    an error has been checked and, if unusable, closed (PITFALLS 5). The channel-layer
    events the call asks for are sent by `run`, on the loop, after the thread is free
    (siphera.events.send_now): a thread is never held while Redis answers.
    """

    def __init__(self, threads: int):
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(threads):
            threading.Thread(target=self._work, name=f"tenant-db-{i}", daemon=True).start()

    async def run(self, fn: Callable[[], T], *, wait_at_most: float | None = None) -> T:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        events.bind_loop()  # sync code of the call posts its wake-ups to this loop
        sends: list = []  # its channel-layer events, made here once it has returned
        # With a wait limit, the call is claimed once: by a thread that starts it, or by
        # the timer that gives up on it (DatabaseBusy), whichever comes first.
        claim = threading.Lock() if wait_at_most is not None else None
        timer = None
        if claim is not None:
            timer = loop.call_later(wait_at_most, _give_up, future, claim)
        self._jobs.put((loop, future, contextvars.copy_context(), fn, sends, claim))
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            # Not on cancellation (the call may still be running): `_settle` sends them.
            if sends and not future.cancelled():
                await events.send_collected(sends)

    def _work(self) -> None:
        _use_unpooled_connection()
        checked = 0  # the connection-loss generation this thread's connection was checked at
        while True:
            loop, future, context, fn, sends, claim = self._jobs.get()
            if claim is not None and not claim.acquire(blocking=False):
                del future, sends  # given up on while it waited: not run
                continue
            try:
                checked = _discard_broken_connection(checked)
                outcome = (context.run(events.collecting, fn, sends), None)
            except BaseException as exc:  # handed to the awaiting coroutine
                if isinstance(exc, (OperationalError, InterfaceError)):
                    _connection_lost()
                outcome = (None, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome, sends)
            except RuntimeError:
                pass  # the loop closed while the call ran: nobody is waiting any more
            del future, outcome, sends  # drop references while the thread waits for work


def _give_up(future: asyncio.Future, claim: threading.Lock) -> None:
    """On the loop, when a call has waited its limit for a thread: unless one has started
    it, it is never run and its caller gets DatabaseBusy."""
    if claim.acquire(blocking=False) and not future.done():
        future.set_exception(DatabaseBusy("every database thread stayed busy"))


def _use_unpooled_connection() -> None:
    """Give this thread a connection of its own, outside the process's pool (Django keeps
    connections per thread). A pool buys these long-lived threads nothing, and would cost
    them: while the database is unreachable, a pooled connection is only handed out (or
    refused) after DATABASE_POOL_TIMEOUT_SECONDS, where an own connection fails at once
    and a socket's frame is answered `database_unavailable` straight away."""
    options = dict(connections.settings[DEFAULT_DB_ALIAS].get("OPTIONS", {}))
    if "pool" not in options:
        return
    del options["pool"]
    settings_dict = {**connections.settings[DEFAULT_DB_ALIAS], "OPTIONS": options}
    backend = type(connections[DEFAULT_DB_ALIAS])
    connections[DEFAULT_DB_ALIAS] = backend(settings_dict, DEFAULT_DB_ALIAS)


def _settle(future: asyncio.Future, result, exc: BaseException | None, sends: list) -> None:
    if future.cancelled():
        # The caller went away (a closed socket); the call still ran to its end, and what
        # it committed still reaches the other sockets.
        if sends:
            events.send_collected_later(sends)
        return
    if exc is None:
        future.set_result(result)
    else:
        future.set_exception(exc)


@functools.cache
def _db_pool() -> _DbPool:
    return _DbPool(settings.WS_DB_THREADS)


class SchemaMismatch(RuntimeError):
    """PostgreSQL's search_path does not point at the org a call was meant to run in."""


def verify_schema(org) -> None:
    """Ask PostgreSQL, on this thread's connection, which schema unqualified names resolve
    to, and raise SchemaMismatch unless it is `org`'s (PITFALLS 2).

    `connection.schema_name` is only django-tenants' note of what it last set; this asks
    the server itself, through the same lazily issued `SET search_path` the next query
    gets. One round trip per call, so it is off unless TENANT_DB_VERIFY_SCHEMA is set
    (the test suite sets it).
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_schema()")
        (actual,) = cursor.fetchone()
    if actual != org.schema_name:
        raise SchemaMismatch(f"expected schema {org.schema_name!r}, PostgreSQL is in {actual!r}")


# Raised whenever a call on any pool thread fails for want of the database: the other
# threads' idle connections may be dead too (PostgreSQL restarted), so each checks its own
# once before its next call, instead of failing that call first.
_lost_generation = 0


def _connection_lost() -> None:
    global _lost_generation
    _lost_generation += 1


def _discard_broken_connection(checked: int = 0) -> int:
    """Close this thread's connection if it saw an error, or if the database went away
    since it was last checked, and it no longer answers. Returns the generation checked."""
    generation = _lost_generation
    if connection.connection is not None and (connection.errors_occurred or generation != checked):
        if connection.is_usable():
            connection.errors_occurred = False
        else:
            connection.close()
    return generation


def run_in_tenant(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator for sync functions whose first argument is the org."""

    @functools.wraps(fn)
    def wrapper(org, *args: Any, **kwargs: Any) -> T:
        return in_tenant(org, fn, org, *args, **kwargs)

    return wrapper


def group_name(org_or_schema, kind: str, *parts: Any) -> str:
    """A channel-layer group name scoped to one org: `t.<schema>.<kind>.<parts...>`.

    Group names are global in the shared Redis (PITFALLS 4): the schema prefix keeps org A
    from ever joining or sending to a group of org B. UUIDs are written as hex.
    """
    schema = getattr(org_or_schema, "schema_name", org_or_schema)
    rendered = [kind] + [p.hex if hasattr(p, "hex") else str(p) for p in parts]
    name = ".".join(["t", schema, *rendered])
    if not _GROUP_PART.match(name) or len(name) >= 100:
        raise ValueError(f"invalid channel-layer group name: {name!r}")
    return name


def current_schema() -> str:
    return connection.schema_name


def send_task(task, *args: Any, org=None, countdown: float | None = None, **kwargs: Any):
    """Queue a Celery task to run in `org`'s schema (default: the current one).

    tenant-schemas-celery reads the schema at send time (PITFALLS 7); passing it
    explicitly keeps a task sent from beat, a consumer thread or an on_commit hook from
    running in `public`.
    """
    schema = org.schema_name if org is not None else connection.schema_name
    return task.apply_async(
        args=args, kwargs=kwargs, countdown=countdown, headers={"_schema_name": schema}
    )
