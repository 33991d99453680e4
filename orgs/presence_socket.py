"""Presence's part of the client WebSocket (siphera.consumer), registered in
OrgsConfig.ready(): each socket's own activity, the user's status, and subscriptions to
other users' presence (orgs.services.presence says what presence is).

Every authenticated socket counts as connected, active, from `ready` until it closes; the
client reports `idle` / `active` with a `presence` frame. The web process (one `_Process`
per event loop) keeps its sockets in Redis and renews its heartbeat there every tick, so
that if it dies its sockets stop counting within PRESENCE_TTL_SECONDS; on the same tick it
cleans up after dead processes and pushes dnd/away statuses that ended.

A subscription joins the channel-layer group of the watched user's presence; its events
carry a version, and a socket forwards only versions newer than what it sent already (the
subscribe answer included), so a late event never overwrites a newer state.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import secrets
import uuid

from channels.layers import get_channel_layer
from django.conf import settings

from orgs.roles import Perm
from orgs.services import presence, presence_store
from siphera import sockets
from siphera.api_errors import ApiError
from siphera.tenancy import public_db, tenant_db
from siphera.ws import FrameError

log = logging.getLogger("siphera.presence")

MAX_IDS_PER_FRAME = 100  # `user_ids` of one subscribe / unsubscribe
MAX_SUBSCRIPTIONS = 1000  # users one socket may watch at a time
_STATES = {"active": presence_store.ACTIVE, "idle": presence_store.IDLE}


def _org_by_schema(schema: str):
    from orgs.models import Org

    return Org.objects.filter(schema_name=schema, is_active=True).first()


async def _send(found: tuple[str, dict] | None) -> None:
    """Send what presence.publish returned (a group and its event), if anything."""
    if found is not None:
        await get_channel_layer().group_send(*found)


class _Process:
    """This web process's presence: its id, its sockets, and its tick."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(8)
        self.sockets: dict[str, tuple] = {}  # socket name -> (org, user id, state)
        self.held: collections.Counter = collections.Counter()  # (schema, user) -> sockets
        self.started = asyncio.Event()  # the first heartbeat was written (or failed)
        self._names = itertools.count(1)
        self._orgs: dict[str, object] = {}
        self._task = asyncio.ensure_future(self._run())

    def new_socket_name(self) -> str:
        return f"{self.id}:{next(self._names)}"

    def hold(self, name: str, org, user_id, state: str) -> None:
        if name not in self.sockets:
            self.held[(org.schema_name, user_id)] += 1
        self.sockets[name] = (org, user_id, state)

    def release(self, name: str) -> bool | None:
        """Forget a socket: None if it was not held, else whether it was the last one of
        its user here."""
        found = self.sockets.pop(name, None)
        if found is None:
            return None
        key = (found[0].schema_name, found[1])
        self.held[key] -= 1
        if self.held[key] > 0:
            return False
        del self.held[key]
        return True

    async def _run(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:
                log.warning("presence.tick_failed", exc_info=True)
            self.started.set()  # also after a failure: sockets must not wait for Redis
            await asyncio.sleep(presence.tick_seconds())

    async def _tick(self) -> None:
        lapsed = await asyncio.to_thread(
            presence_store.heartbeat, self.id, settings.PRESENCE_TTL_SECONDS
        )
        changed: set[tuple] = set()
        if lapsed and self.sockets:
            held = [
                (name, org.schema_name, user, state)
                for name, (org, user, state) in self.sockets.items()
            ]
            await asyncio.to_thread(presence_store.rewrite, self.id, held)
            changed |= {(org.schema_name, user) for org, user, _ in self.sockets.values()}
        changed |= set(await asyncio.to_thread(presence_store.sweep_dead, self.id))
        changed |= set(await asyncio.to_thread(presence_store.due_ends))
        for schema, user_id in changed:
            try:
                org = await self._org(schema)
                if org is not None:
                    await _send(await tenant_db(org, presence.publish, user_id))
            except Exception:  # one user's failure must not skip the others
                log.warning("presence.publish_failed", exc_info=True)

    async def _org(self, schema: str):
        if schema not in self._orgs:
            self._orgs[schema] = await public_db(_org_by_schema, schema)
        return self._orgs[schema]


_processes: dict[int, _Process] = {}  # by id of the event loop (one per web process)


def _process() -> _Process:
    loop = asyncio.get_running_loop()
    found = _processes.get(id(loop))
    if found is None or found._task.get_loop() is not loop:
        found = _processes[id(loop)] = _Process()
    return found


def _user_ids(frame: dict) -> list[uuid.UUID]:
    raw = frame.get("user_ids")
    if not isinstance(raw, list) or len(raw) > MAX_IDS_PER_FRAME:
        raise FrameError(
            "invalid_frame", f"`user_ids` is a list of at most {MAX_IDS_PER_FRAME} user ids."
        )
    try:
        return list(dict.fromkeys(uuid.UUID(value) for value in raw))
    except (TypeError, ValueError, AttributeError):
        raise FrameError("invalid_frame", "Every one of `user_ids` must be a UUID.") from None


def _with_ref(reply: dict, frame: dict) -> dict:
    if isinstance(frame.get("ref"), (str, int)):
        reply["ref"] = frame["ref"]
    return reply


class PresenceSocket(sockets.Extension):
    name = "presence"

    def __init__(self, socket) -> None:
        super().__init__(socket)
        self._subscribed: dict[uuid.UUID, int] = {}  # watched user -> version sent
        self._state = presence_store.ACTIVE
        self._lock = asyncio.Lock()  # reports of this socket go to Redis in order
        self._process: _Process | None = None
        self._socket_name = ""
        self._first_report: asyncio.Task | None = None
        self._recheck: asyncio.Task | None = None
        self._closed = False

    async def ready(self) -> None:
        self._process = _process()
        self._socket_name = self._process.new_socket_name()
        # In the background: the socket's other extensions (the queue drain) go first.
        self._first_report = asyncio.ensure_future(self._report(presence_store.ACTIVE))

    async def closed(self) -> None:
        self._closed = True
        if self._recheck is not None:
            self._recheck.cancel()
        if self._first_report is not None:
            await asyncio.wait([self._first_report])  # never raises its outcome
        if self._process is not None:
            await self._report(None)

    async def _report(self, state: str | None) -> None:
        """Write this socket's state ("a", "i"; None: gone) and push the user's presence
        if it changed. Never raises: presence is best effort."""
        process, name = self._process, self._socket_name
        user_id = self.device.user_id
        async with self._lock:
            await process.started.wait()
            if state is None:
                last_here = process.release(name)
                if last_here is None:
                    return  # never reported
            else:
                if self._closed:
                    return
                process.hold(name, self.org, user_id, state)
                last_here = False
            try:
                found = await tenant_db(
                    self.org,
                    presence.socket_changed,
                    process.id,
                    name,
                    user_id,
                    state,
                    last_here=last_here,
                )
                await _send(found)
            except Exception:
                log.warning("presence.report_failed", exc_info=True)

    async def _service(self, fn, *args):
        try:
            return await tenant_db(self.org, fn, *args)
        except ApiError as exc:
            raise FrameError(exc.code, exc.message) from None

    # --- client frames ---------------------------------------------------------------
    @sockets.frame("presence", perm=None)
    async def activity(self, frame):
        """This socket's user is active or idle on it (the client decides, e.g. after 5
        minutes without input)."""
        state = _STATES.get(frame.get("state")) if isinstance(frame.get("state"), str) else None
        if state is None:
            raise FrameError("invalid_request", '`state` is "active" or "idle".')
        if state != self._state:
            self._state = state
            await self._report(state)

    @sockets.frame("presence.set", perm=None)
    async def set_status(self, frame):
        """Set or clear the user's own dnd/away status (allowed whatever the policy)."""
        if "status" not in frame:
            raise FrameError("invalid_request", '`status` is "dnd", "away" or null.')
        own = await self._service(
            presence.check_set_status, self.device.user, frame["status"], frame.get("until")
        )
        await self.send_frame(_with_ref({"type": "presence.status", **own}, frame))

    @sockets.frame("presence.subscribe", perm=Perm.DIRECTORY_CONTACTS)
    async def subscribe(self, frame):
        """Watch users: their presence now, then a `presence` frame on each change."""
        user_ids = _user_ids(frame)
        new = [u for u in user_ids if u not in self._subscribed]
        if len(self._subscribed) + len(new) > MAX_SUBSCRIPTIONS:
            raise FrameError(
                "too_many_subscriptions",
                f"A socket watches at most {MAX_SUBSCRIPTIONS} users; unsubscribe some first.",
            )
        visible, not_found = await self._service(
            presence.check_subscribe, self.device.user, user_ids
        )
        for user_id in not_found:
            await self._drop(user_id)  # no longer visible: stop watching
        schema = self.org.schema_name
        for user_id in visible:
            await self.socket.join_group(presence.presence_group(schema, user_id))
        found = await self._service(presence.snapshot, visible) if visible else []
        states = []
        for user_id, version, body in found:
            self._subscribed[user_id] = version
            states.append(body)
        reply = {
            "type": "presence.subscribed",
            "presence": states,
            "not_found": [str(u) for u in not_found],
        }
        await self.send_frame(_with_ref(reply, frame))

    @sockets.frame("presence.unsubscribe", perm=None)
    async def unsubscribe(self, frame):
        user_ids = _user_ids(frame)
        for user_id in user_ids:
            await self._drop(user_id)
        reply = {"type": "presence.unsubscribed", "user_ids": [str(u) for u in user_ids]}
        await self.send_frame(_with_ref(reply, frame))

    async def _drop(self, user_id: uuid.UUID) -> bool:
        if self._subscribed.pop(user_id, None) is None:
            return False
        await self.socket.leave_group(presence.presence_group(self.org.schema_name, user_id))
        return True

    # --- permission changes -----------------------------------------------------------
    def codes_changed(self) -> None:
        """A role change may hide users this socket watches: check them again."""
        if self._subscribed and not self._closed:
            self._recheck = asyncio.ensure_future(self._check_again())

    async def _check_again(self) -> None:
        try:
            watched = list(self._subscribed)
            keep: set = set()
            if Perm.DIRECTORY_CONTACTS in self.socket.codes:
                keep = await tenant_db(self.org, presence.visible_subset, self.device.user, watched)
            dropped = [str(u) for u in watched if u not in keep and await self._drop(u)]
            if dropped:
                await self.send_frame({"type": "presence.unsubscribed", "user_ids": dropped})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("presence.recheck_failed", exc_info=True)

    # --- channel-layer events ------------------------------------------------------------
    @sockets.event("presence.changed")
    async def changed(self, event):
        body = event["presence"]
        user_id = uuid.UUID(body["user_id"])
        sent = self._subscribed.get(user_id)
        if sent is None or event["v"] <= sent:
            return  # not watched (any more), or older than what this socket sent
        self._subscribed[user_id] = event["v"]
        await self.send_frame({"type": "presence", **body})


def register() -> None:
    sockets.register(PresenceSocket)
