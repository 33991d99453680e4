"""Messaging's part of the client WebSocket (siphera.consumer), registered in
MessagingConfig.ready(): the `send`, `ack`, `receipt` and `typing` frames, delivery, and
the `receipt`, `typing`, `mention` and `keys.low` frames other changes push.

Delivery: after `ready` the socket drains the device's queue from PostgreSQL oldest first,
sends `queue.empty`, then keeps reading the queue whenever a `queue.wake` arrives. Live
messages therefore never overtake the backlog (PITFALLS 15): the queue is the one store.
At most MAX_IN_FLIGHT messages are sent and unacknowledged at a time; unacked messages stay
queued and are sent again on the next connection.

A wake-up from a send in this process carries the message frame and its queue id
(messaging.services.delivery), and the socket sends it without reading the queue when
nothing can be ahead of it: the socket is caught up (its last read was not cut short by
the window) and the message's seq is the one after the last seq of its conversation this
socket has sent. Sends to one conversation are serialised by its row lock, so that seq
rule holds however the wake-ups of two sends race each other across threads or
processes; any other wake-up, or a gap in the seqs, means a read of the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import datetime

from django.db import InterfaceError, OperationalError

from messaging.api.send_form import SendFormError, parse_send
from messaging.services import delivery, receipts
from orgs.roles import Perm
from siphera import sockets
from siphera.api_errors import DATABASE_RETRY_AFTER, ApiError
from siphera.metrics import instruments as metrics
from siphera.params import BIGINT_MAX, in_range
from siphera.tenancy import tenant_db
from siphera.ws import FrameError

log = logging.getLogger("siphera.ws")

MAX_IN_FLIGHT = 256
RECHECK_AFTER = (1.0, 5.0)  # seconds after `ready`


def _uuid(value, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise FrameError("invalid_frame", f"`{field}` must be a UUID.") from None


class _AckBatches:
    """The acks of this process's sockets, deleted in one statement per org at a time.

    While an org's DELETE runs, the acks that arrive meanwhile wait and go together in the
    next one (each socket's ack otherwise cost a statement and a thread hop of its own).
    An `ack` frame still returns only once its rows are deleted, so its socket handles its
    next frame, and takes the ids out of its window, as if the ack had run alone."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._waiting: dict[str, list[tuple[int, list, asyncio.Future]]] = {}
        self._flushing: dict[str, asyncio.Task] = {}

    async def ack(self, org, device_pk: int, ids: list) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(org.schema_name, []).append((device_pk, ids, future))
        if org.schema_name not in self._flushing:
            self._flushing[org.schema_name] = asyncio.create_task(self._flush(org))
        await future

    async def _flush(self, org) -> None:
        try:
            while batch := self._waiting.pop(org.schema_name, None):
                failure = None
                try:
                    await tenant_db(
                        org, delivery.do_ack_many, [(device, ids) for device, ids, _ in batch]
                    )
                except Exception as exc:
                    failure = exc
                for *_, future in batch:
                    if future.done():
                        continue  # its socket closed meanwhile
                    if failure is None:
                        future.set_result(None)
                    else:
                        future.set_exception(failure)
        finally:
            self._flushing.pop(org.schema_name, None)


_ack_batches: dict[int, _AckBatches] = {}  # by id of the event loop (one per process)


def _acks() -> _AckBatches:
    loop = asyncio.get_running_loop()
    batches = _ack_batches.get(id(loop))
    if batches is None or batches.loop is not loop:
        batches = _ack_batches[id(loop)] = _AckBatches(loop)
    return batches


# `mention` frames being sent from local hand-overs (the loop keeps only weak references).
_relaying: set[asyncio.Task] = set()


class MessagingSocket(sockets.Extension):
    """A device's delivery on one socket: its queue drain, window and live hand-overs."""

    name = "messaging"
    _delivery_task: asyncio.Task | None = None
    _live = False  # the backlog is drained: deliveries from now on are timed

    async def ready(self) -> None:
        self._in_flight: dict[str, int] = {}  # message id -> queue id, sent and unacked
        # conversation -> the seq up to which every message of it queued for this device
        # has been sent on this socket (read from the queue, handed over, or our own)
        self._sent_seq: dict[str, int] = {}
        self._handed: list[tuple[int, dict]] = []  # (queue id, frame) from wake-ups
        self._read_needed = True
        self._caught_up = False
        self._wake = asyncio.Event()
        self._wake.set()
        self._delivery_task = asyncio.create_task(self._deliver())
        # Read the queue again shortly after connecting: a wake-up sent while this socket
        # replaced an older one of the device (in another web process) may have gone to
        # the old socket (siphera.events.send_soon).
        loop = asyncio.get_running_loop()
        self._rechecks = [loop.call_later(delay, self._read_soon) for delay in RECHECK_AFTER]

    def _read_soon(self) -> None:
        self._read_needed = True
        self._wake.set()

    async def closed(self) -> None:
        if self._delivery_task is not None:
            self._delivery_task.cancel()
            for handle in self._rechecks:
                handle.cancel()

    async def _deliver(self) -> None:
        drained = False
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if Perm.MESSAGING_USE not in self.socket.codes:
                    # The role may not read messages (its acks would be refused and the
                    # window would jam): hold the queue until the codes change.
                    self._handed.clear()
                    self._read_needed = True
                    continue
                room = MAX_IN_FLIGHT - len(self._in_flight)
                if self._read_needed and room > 0:  # else an ack will wake us
                    self._read_needed = False
                    try:
                        entries = await tenant_db(
                            self.org,
                            delivery.pending_for_device,
                            self.device.pk,
                            exclude_ids=list(self._in_flight.values()),
                            limit=room,
                        )
                    except (OperationalError, InterfaceError):
                        # PostgreSQL is unreachable: the queue stays where it is; read it
                        # again later rather than closing a socket the client would only
                        # reopen into the same outage.
                        log.warning("ws.delivery_waits_for_database")
                        handle = asyncio.get_running_loop().call_later(
                            DATABASE_RETRY_AFTER, self._read_soon
                        )
                        self._rechecks.append(handle)
                        continue
                    for queue_id, frame in entries:
                        await self._send_message(queue_id, frame)
                    self._caught_up = len(entries) < room
                    if not self._caught_up:
                        self._read_soon()  # there may be more than fitted
                    elif not drained:
                        drained = True
                        self._live = True
                        await self.send_frame({"type": "queue.empty"})
                handed, self._handed = self._handed, []
                for queue_id, frame in handed:
                    await self._send_handed(queue_id, frame)
        except (asyncio.CancelledError, OSError):
            pass  # the socket closed (an OSError: uvicorn's ClientDisconnected mid-send)
        except Exception:
            log.exception("ws.delivery_failed")
            await self.socket.close(code=1011)

    async def _send_handed(self, queue_id: int, frame: dict) -> None:
        """Send a message a wake-up handed over, or read the queue if it may not go yet."""
        sent_seq = self._sent_seq.get(frame["conversation"])
        if frame["id"] in self._in_flight or (sent_seq is not None and frame["seq"] <= sent_seq):
            return  # a read sent it already
        if (
            self._caught_up
            and not self._read_needed
            and sent_seq == frame["seq"] - 1
            and len(self._in_flight) < MAX_IN_FLIGHT
        ):
            await self._send_message(queue_id, frame)
        else:
            self._read_soon()  # something may be ahead of it, or the window is full

    async def _send_message(self, queue_id: int, frame: dict) -> None:
        self._in_flight[frame["id"]] = queue_id
        conversation = frame["conversation"]
        # A read returns every unsent message of a conversation below its highest seq
        # (they committed before it, under the conversation's lock), so its seqs advance
        # the mark as far as the highest; a handed-over message only when it is the next.
        self._sent_seq[conversation] = max(frame["seq"], self._sent_seq.get(conversation, 0))
        await self.send_frame(frame)
        metrics.MESSAGES_DELIVERED.inc()
        if self._live:
            accepted = datetime.fromisoformat(frame["ts"]).timestamp()
            metrics.DELIVERY_SECONDS.observe(max(time.time() - accepted, 0.0))

    # --- client frames ---------------------------------------------------------------
    @sockets.frame("ack", perm=Perm.MESSAGING_USE)
    async def ack(self, frame):
        ids = frame.get("ids")
        if not isinstance(ids, list) or len(ids) > 1000:
            raise FrameError("invalid_frame", "`ids` is a list of at most 1000 message ids.")
        await _acks().ack(self.org, self.device.pk, ids)
        was_full = len(self._in_flight) >= MAX_IN_FLIGHT
        for message_id in ids:
            self._in_flight.pop(str(message_id), None)
        if was_full:
            self._read_soon()  # the window had closed: send what waited behind it

    @sockets.frame("receipt", perm=Perm.MESSAGING_USE)
    async def receipt(self, frame):
        seq = frame.get("up_to_seq")
        if not in_range(seq, 0, BIGINT_MAX):
            raise FrameError("invalid_frame", "`up_to_seq` is an integer from 0 to 2^63 - 1.")
        conversation = _uuid(frame.get("conversation"), "conversation")
        try:
            await tenant_db(
                self.org,
                receipts.do_mark,
                self.device.user,
                conversation,
                kind=frame.get("kind"),
                up_to_seq=seq,
                read_receipts_enabled=await self._read_receipts_enabled(),
            )
        except ApiError as exc:
            raise FrameError(exc.code, exc.message) from None

    async def _read_receipts_enabled(self) -> bool:
        return await tenant_db(self.org, receipts.read_receipts_enabled)

    @sockets.frame("typing", perm=Perm.MESSAGING_USE)
    async def typing(self, frame):
        conversation = _uuid(frame.get("conversation"), "conversation")
        try:
            await tenant_db(
                self.org,
                receipts.relay_typing,
                self.device.user,
                self.device.device_id,
                conversation,
                state=frame.get("state"),
            )
        except ApiError as exc:
            raise FrameError(exc.code, exc.message) from None

    @sockets.frame("send", perm=Perm.MESSAGING_USE)
    async def send(self, frame):
        """Send a message over the socket (same rules as POST .../messages); answered with
        `sent` {ref, id, seq, ts} or an `error` frame carrying missing/extra/stale."""
        try:
            fields = parse_send(frame)
        except SendFormError as exc:
            raise FrameError("invalid_request", str(exc)) from None
        conversation = _uuid(frame.get("conversation"), "conversation")
        try:
            result = await tenant_db(
                self.org,
                delivery.check_send_message,
                conversation_id=conversation,
                sender=self.device.user,
                sender_device_id=self.device.device_id,
                **fields,
            )
        except ApiError as exc:
            error = {"type": "error", "code": exc.code, "message": exc.message, **exc.extra}
            if "ref" in frame:
                error["ref"] = frame["ref"]
            await self.send_frame(error)
            return
        if self._sent_seq.get(str(conversation)) == result.message.seq - 1:
            self._sent_seq[str(conversation)] = result.message.seq  # nothing to send of it
        reply = {"type": "sent", **result.payload()}
        if "ref" in frame:
            reply["ref"] = frame["ref"]
        await self.send_frame(reply)

    def codes_changed(self) -> None:
        """The socket's permission codes were reloaded: read the queue again (it may have
        been held for want of `messaging.use`)."""
        if self._delivery_task is not None:
            self._read_soon()

    # --- channel-layer events --------------------------------------------------------
    @sockets.event("queue.wake")
    async def queue_wake(self, event):
        self.local_queue_wake(event)

    @sockets.local_event("queue.wake")
    def local_queue_wake(self, event):
        """A wake-up, from the channel layer (bare) or from a send in this process (with
        the message: siphera.events.send_soon)."""
        if self._delivery_task is None:
            return  # not ready yet: the first read will find it
        if "message" in event and len(self._handed) < MAX_IN_FLIGHT:
            self._handed.append((event["queue_id"], event["message"]))
            self._wake.set()
        else:
            self._read_soon()

    @sockets.event("receipt.relay")
    async def receipt_relay(self, event):
        await self.send_frame({k: v for k, v in event.items() if k != "type"} | {"type": "receipt"})

    @sockets.event("typing.relay")
    async def typing_relay(self, event):
        await self.send_frame({k: v for k, v in event.items() if k != "type"} | {"type": "typing"})

    @sockets.event("mention.relay")
    async def mention_relay(self, event):
        """Someone mentioned this user (messaging.services.unread): metadata, no body."""
        if Perm.MESSAGING_USE not in self.socket.codes:
            return  # as its messages, held while the role may not read them
        try:
            await self.send_frame(
                {k: v for k, v in event.items() if k != "type"} | {"type": "mention"}
            )
        except OSError:
            pass  # the socket closed meanwhile

    @sockets.local_event("mention.relay")
    def local_mention_relay(self, event):
        """The same, handed over by a send in this process (siphera.events.send_soon):
        sent from a task of its own, since a local event must not block."""
        task = asyncio.ensure_future(self.mention_relay(event))
        _relaying.add(task)
        task.add_done_callback(_relaying.discard)

    @sockets.event("keys.low")
    async def keys_low(self, event):
        """A claim left this device with few one-time prekeys (messaging.services.keys)."""
        await self.send_frame(
            {"type": "keys.low", "one_time": event["one_time"], "pq": event["pq"]}
        )
