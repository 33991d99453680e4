"""Wake-ups over the channel layer, sent only after the transaction commits.

The channel layer is never a store (PITFALLS 6): it only tells live sockets that something
changed. Group names come from siphera.tenancy.group_name and carry the org's schema.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from siphera import redis_outage
from siphera.redis_outage import REDIS_ERRORS

log = logging.getLogger("siphera.events")

# The event loop of the async code (a consumer) that handed the current sync call to a
# worker thread; contextvars travel into the thread with the rest of the context.
_loop: contextvars.ContextVar[asyncio.AbstractEventLoop | None] = contextvars.ContextVar(
    "siphera_event_loop", default=None
)


def bind_loop() -> None:
    """Note the running loop, so sync code this coroutine calls can post events to it
    without blocking its thread (siphera.tenancy._DbPool.run and siphera.handler call
    this)."""
    _loop.set(asyncio.get_running_loop())


# Sends asked for by sync code on a socket DB thread (siphera.tenancy._DbPool): made on the
# loop by the coroutine that awaited the call, once the call has returned (`collecting`).
_collected: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "siphera_collected_sends", default=None
)
# Channel-layer sends one batch of collected sends keeps in flight at a time: a 1,000-member
# fan-out neither goes one Redis round trip after another nor takes every connection of
# the process's pool (REDIS_MAX_CONNECTIONS) from the other sockets' sends.
FANOUT_CONCURRENCY = 32


def send_now(group: str, payload: dict) -> None:
    """Send and wait until the channel layer has it (events whose order matters).

    From a socket's DB thread (siphera.tenancy.tenant_db) the send is only noted: the
    coroutine that awaited the call makes it on its loop as soon as the call returns, in
    the order the call asked, before it goes on (`collecting`). The DB thread is free
    meanwhile: a typing frame into a 1,000-member group used to hold it for 1,000 channel
    layer sends, and a slow Redis held every DB thread of the process that way. From
    other sync code with a bound loop (an HTTP request's thread) the send runs on that
    loop, on its Redis connections; anywhere else on a loop of its own.

    With Redis unreachable the event is dropped (logged once per outage by
    siphera.redis_outage), never raised into the request or frame that caused it: what it
    is about is committed, and no socket can miss it, because every socket is closed
    when its process loses Redis and reads its state afresh when it connects again. Each
    event is still tried (not skipped during a known outage, as rate limits are): a blip
    that one call saw must not cost live sockets their wake-ups."""
    collected = _collected.get()
    if collected is not None:
        collected.append((group, payload))
        return
    loop = _loop.get()
    try:
        if loop is not None and not loop.is_closed() and not _on_a_loop():
            coroutine = get_channel_layer().group_send(group, payload)
            asyncio.run_coroutine_threadsafe(coroutine, loop).result()
        else:
            async_to_sync(get_channel_layer().group_send)(group, payload)
    except REDIS_ERRORS as exc:
        redis_outage.failed(exc, where="events")
        return
    redis_outage.succeeded()


def collecting(fn: Callable[[], Any], sends: list) -> Any:
    """Run `fn` (on a DB thread, in its call's context) with its `send_now` sends, and
    those of its `notify_on_commit` hooks, appended to `sends` instead of made."""
    _collected.set(sends)
    return fn()


async def send_collected(sends: list[tuple[str, dict]]) -> None:
    """Make the sends a DB call collected, on this loop: sends to different groups go
    together (at most FANOUT_CONCURRENCY at a time), two sends to one group in the order
    they were asked for. Returns once all are done. A send Redis refuses is dropped, as
    in `send_now`. Not cut short if the caller is cancelled (its socket closed): what
    the call committed still reaches the other sockets."""
    task = asyncio.ensure_future(_send_in_order(sends))
    _sending.add(task)
    task.add_done_callback(_sent)
    await asyncio.shield(task)


def send_collected_later(sends: list[tuple[str, dict]]) -> None:
    """`send_collected` without waiting (on the loop's thread): for a call whose caller
    went away before it returned."""
    task = asyncio.ensure_future(_send_in_order(sends))
    _sending.add(task)
    task.add_done_callback(_sent)


async def _send_in_order(sends: list[tuple[str, dict]]) -> None:
    layer = get_channel_layer()
    wave: list[tuple[str, dict]] = []
    groups: set[str] = set()
    for group, payload in sends:
        if group in groups or len(wave) >= FANOUT_CONCURRENCY:
            await _send_wave(layer, wave)
            wave, groups = [], set()
        wave.append((group, payload))
        groups.add(group)
    await _send_wave(layer, wave)


async def _send_wave(layer, wave: list[tuple[str, dict]]) -> None:
    if not wave:
        return
    results = await asyncio.gather(
        *(layer.group_send(group, payload) for group, payload in wave), return_exceptions=True
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    if not failures:
        redis_outage.succeeded()
        return
    for failure in failures:
        if isinstance(failure, REDIS_ERRORS):
            redis_outage.failed(failure, where="events")
        else:
            log.error("events.send_failed", exc_info=failure)


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def send_soon(
    groups: list[str], payload: dict, *, local: Callable[[str], dict] | None = None
) -> None:
    """Send to each group without waiting: for wake-ups, which carry no data, so neither
    their order nor their completion matters to the sender.

    From a consumer's worker thread the sends are posted to the consumer's loop and the
    thread goes back to work at once (waiting would hold a DB thread for four Redis round
    trips per group); likewise from an HTTP request's thread (siphera.handler binds the
    server's loop). A group with a member socket in this process (`join_local`) is
    handed to that socket directly, without Redis, by a call of its `local_event`.
    Anywhere else (a task, a command) the sends go through the channel layer, in order,
    before returning.

    `local(group)`, if given, is the payload for a socket of this process instead of
    `payload` (a wake-up may hand such a socket the message it is about, see
    messaging.consumers); it is called on this thread, and never for the channel layer."""
    loop = _loop.get()
    if loop is None or loop.is_closed():
        for group in groups:
            send_now(group, payload)
        return
    local_sends, remote = [], []
    for group in groups:
        members = _local_members.get(group)
        if members:
            local_payload = payload if local is None else local(group)
            local_sends.extend((consumer, local_payload) for consumer in tuple(members))
        else:
            remote.append(group)
    try:
        loop.call_soon_threadsafe(_start_send, local_sends, remote, payload)
    except RuntimeError:
        pass  # the loop closed (the process is stopping): its sockets are gone


# Sends started by `send_soon` and not yet done (the loop keeps only weak references).
_sending: set[asyncio.Task] = set()


def _start_send(local: list[tuple[Any, dict]], remote: list[str], payload: dict) -> None:
    # On the loop's thread. A socket of this process takes its event by a plain call
    # (`local_event`, which must not block): a task per wake-up cost more than the
    # wake-up. Only the channel layer's sends need one. Not run_coroutine_threadsafe: its
    # thread-safe future and the chaining of it to the task cost more than the send.
    for consumer, local_payload in local:
        try:
            consumer.local_event(local_payload)
        except Exception:
            log.exception("events.send_failed")
    if remote:
        task = asyncio.ensure_future(_send_remote(remote, payload))
        _sending.add(task)
        task.add_done_callback(_sent)


def _sent(task: asyncio.Task) -> None:
    _sending.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("events.send_failed", exc_info=task.exception())


async def _send_remote(remote: list[str], payload: dict) -> None:
    layer = get_channel_layer()
    try:
        await asyncio.gather(*(layer.group_send(group, payload) for group in remote))
    except REDIS_ERRORS as exc:  # dropped, as in send_now
        redis_outage.failed(exc, where="events")
        return
    redis_outage.succeeded()


# Sockets of this process by group, for `send_soon`. Only wake-ups use it: a socket that
# lives here is woken directly; one elsewhere through the channel layer as before. A socket
# leaves as soon as it is replaced or closes (ClientConsumer), and a new socket reads its
# queue on connect and again shortly after (messaging.consumers), so a wake-up that went to
# the old socket while the new one connected in another process is not lost.
_local_members: dict[str, set] = {}


def join_local(group: str, consumer) -> None:
    _local_members.setdefault(group, set()).add(consumer)


def leave_local(group: str, consumer) -> None:
    members = _local_members.get(group)
    if members is not None:
        members.discard(consumer)
        if not members:
            _local_members.pop(group, None)


def notify_on_commit(group: str, payload: dict) -> None:
    """Send `payload` (with a `type` naming the consumer handler) to `group` after commit
    (by `send_now`: from a socket's DB thread, on the loop once the call returned)."""
    transaction.on_commit(lambda: send_now(group, payload))
