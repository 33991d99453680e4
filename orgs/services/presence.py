"""Presence: whether a user is online, idle, offline, in a call, or set do-not-disturb or
away — computed on demand, pushed to subscribers when it changes.

What it is made of:
- the user's sockets, on every device and web process (orgs.services.presence_store, in
  Redis): `online` if one is active, `idle` if all are idle, `offline` if there are none;
- a call (orgs.hooks.in_call, which calls fills in): `in_call`;
- the status the user set (accounts.PresenceStatus, in PostgreSQL): `dnd` or `away`,
  until a time or until cleared.

One state is shown, the first that applies: `offline` (no socket and no call), `dnd`,
`in_call`, `away`, then `online` / `idle`. A status that ended counts as none at once;
its end is also pushed within a tick (orgs.presence_socket).

Delivery: a subscriber's socket joins the channel-layer group `group_name(schema, "p",
user)` of each user it may see (orgs.services.directory.access_directory_user) and gets
the current presence in one frame; every change is then computed once, by whichever
process caused or noticed it, and sent to that group as a `presence.changed` event with
its version (presence_store.bump), so subscribers drop a change older than what they have.

With the org policy `presence_hidden` on, nobody may subscribe and nothing is pushed; users
still set their own status (and `dnd_active` still keeps calls from ringing).

Everything here runs in the org's schema (a socket's tenant_db, a request, a task).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from orgs import hooks
from orgs.accounts.models import PresenceStatus, User
from orgs.services import presence_store
from orgs.services.directory import access_directory_user
from orgs.services.mfa import get_org_policy
from siphera import events
from siphera.api_errors import ApiError
from siphera.channel_layer import groups_with_members
from siphera.tenancy import group_name, schema_context

log = logging.getLogger("siphera.presence")

ONLINE, IDLE, OFFLINE, IN_CALL = "online", "idle", "offline", "in_call"
DND, AWAY = PresenceStatus.DND, PresenceStatus.AWAY
STATUSES = (DND, AWAY)
MAX_UNTIL = dt.timedelta(days=366)  # the furthest a status may be set to end

__all__ = [
    "check_set_status",
    "connected_now",
    "dnd_active",
    "notify_changed",
    "own_presence",
    "presence_hidden",
    "presence_of",
]


def tick_seconds() -> float:
    """How often a web process renews its heartbeat and looks for ended statuses and
    dead processes (orgs.presence_socket)."""
    return min(5.0, settings.PRESENCE_TTL_SECONDS / 3)


def presence_group(schema: str, user_id) -> str:
    """The channel-layer group of one user's presence subscribers."""
    return group_name(schema, "p", user_id)


def presence_hidden() -> bool:
    """Whether the org hides everyone's presence from everyone else."""
    return get_org_policy().presence_hidden


def connected_now() -> tuple[int, int] | None:
    """(open sockets, users with one) of the current org across every web process, or
    None when Redis does not answer (the caller shows "unknown", never a stale count)."""
    import redis

    try:
        return presence_store.open_sockets(connection.schema_name)
    except redis.RedisError:
        log.warning("presence.count_unavailable")
        return None


# --- the user's own status --------------------------------------------------------------


def _current_statuses(user_ids: list) -> dict:
    now = timezone.now()
    rows = PresenceStatus.objects.filter(user_id__in=user_ids).filter(
        Q(until__isnull=True) | Q(until__gt=now)
    )
    return {row.user_id: row for row in rows}


def dnd_active(user) -> bool:
    """Whether `user` (a User or a user id) has do-not-disturb on now: calls must not ring
    them. Regardless of the `presence_hidden` policy."""
    user_id = getattr(user, "pk", user)
    return (
        PresenceStatus.objects.filter(user_id=user_id, status=DND)
        .filter(Q(until__isnull=True) | Q(until__gt=timezone.now()))
        .exists()
    )


def _parse_until(value) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_request", "`until` is an ISO 8601 time or null.")
    try:
        until = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ApiError(400, "invalid_request", "`until` is an ISO 8601 time or null.") from None
    if until.tzinfo is None:
        raise ApiError(400, "invalid_request", "`until` needs a time zone (e.g. `Z`).")
    now = timezone.now()
    if until <= now:
        raise ApiError(400, "invalid_request", "`until` is in the past.")
    if until > now + MAX_UNTIL:
        raise ApiError(400, "invalid_request", "`until` is at most 366 days ahead.")
    return until


def check_set_status(user: User, status, until=None) -> dict:
    """Validate, then set (or with `status` None clear) the user's own status; returns
    `own_presence`. 400 `invalid_request` for an unknown status, or an `until` that is not
    an aware ISO 8601 time within the next 366 days (or that comes without a status)."""
    if status is not None and status not in STATUSES:
        raise ApiError(400, "invalid_request", '`status` is "dnd", "away" or null.')
    if status is None and until is not None:
        raise ApiError(400, "invalid_request", "`until` needs a `status`.")
    do_set_status(user, status, _parse_until(until))
    return own_presence(user)


def do_set_status(user: User, status: str | None, until: dt.datetime | None) -> None:
    """Store the status and, after commit, push the user's presence and schedule the
    push of its end."""
    with transaction.atomic():
        if status is None:
            PresenceStatus.objects.filter(user=user).delete()
        else:
            PresenceStatus.objects.update_or_create(
                user=user, defaults={"status": status, "until": until}
            )
        schema = connection.schema_name
        until_epoch = until.timestamp() if until is not None else None
        transaction.on_commit(
            lambda: presence_store.schedule_end(schema, user.pk, until_epoch), robust=True
        )
        notify_changed(user.pk)


def own_presence(user: User) -> dict:
    """The user's own view: `{"status", "until", "state"}` (`state` as others see it)."""
    row = _current_statuses([user.pk]).get(user.pk)
    return {
        "status": row.status if row else None,
        "until": _iso(row.until) if row else None,
        "state": presence_of([user.pk])[user.pk]["state"],
    }


def _iso(when: dt.datetime | None) -> str | None:
    return when.astimezone(dt.UTC).isoformat() if when is not None else None


# --- computing --------------------------------------------------------------------------


def _as_uuid(user_id) -> uuid.UUID:
    return user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))


def presence_of(user_ids: list) -> dict:
    """user id (UUID) -> `{"user_id", "state", "until"}` now (`until`: when a shown
    dnd/away ends, else null). Ignores the `presence_hidden` policy: callers decide who
    may know."""
    schema = connection.schema_name
    user_ids = [_as_uuid(u) for u in user_ids]
    connected = presence_store.connection_states(schema, user_ids)
    statuses = _current_statuses(user_ids)
    out = {}
    for user_id in user_ids:
        in_call = hooks.in_call.any(user_id)
        status = statuses.get(user_id)
        until = None
        if connected[user_id] == OFFLINE and not in_call:
            state = OFFLINE
        elif status is not None and status.status == DND:
            state, until = DND, status.until
        elif in_call:
            state = IN_CALL
        elif status is not None and status.status == AWAY:
            state, until = AWAY, status.until
        else:
            state = connected[user_id]
        out[user_id] = {"user_id": str(user_id), "state": state, "until": _iso(until)}
    return out


def publish(user_id) -> tuple[str, dict] | None:
    """Compute the user's presence after a change and return `(group, event)` to send to
    its subscribers, or None: nothing new (another process published it already or a
    newer one), or the org hides presence. The caller sends it (channel layer)."""
    found = publish_many([user_id])
    return found[0] if found else None


def publish_many(user_ids) -> list[tuple[str, dict]]:
    """`publish` for several users at once (one policy read, one status read, one
    socket-state read for all of them): the `(group, event)`s to send."""
    schema = connection.schema_name
    user_ids = [_as_uuid(u) for u in user_ids]
    # Nobody watches most users at any moment: skip them (a subscriber reads the state
    # afresh after joining the group, so a change skipped here is never missed).
    watched = groups_with_members([presence_group(schema, u) for u in user_ids])
    user_ids = [u for u, yes in zip(user_ids, watched, strict=True) if yes]
    if not user_ids or presence_hidden():
        return []
    versions = {user_id: presence_store.bump(schema, user_id) for user_id in user_ids}
    bodies = presence_of(user_ids)
    out = []
    for user_id in user_ids:
        body = bodies[user_id]
        if presence_store.publish_if_newer(schema, user_id, versions[user_id], json.dumps(body)):
            event = {"type": "presence.changed", "v": versions[user_id], "presence": body}
            out.append((presence_group(schema, user_id), event))
    return out


def notify_changed(*user_ids) -> None:
    """Push these users' presence to their subscribers after the current transaction
    commits (at once outside one): for calls, when a user's call starts or ends. Never
    raises: presence is best effort and must not fail the caller."""
    schema = connection.schema_name

    def send() -> None:
        try:
            if connection.schema_name == schema:
                found = publish_many(user_ids)
            else:  # an on_commit hook may run after the caller's schema context ended
                with schema_context(schema):
                    found = publish_many(user_ids)
            for group, event in found:
                events.send_now(group, event)
        except Exception:
            log.warning("presence.notify_failed", exc_info=True)

    transaction.on_commit(send)


# --- subscribing and sockets -------------------------------------------------------------


def check_subscribe(viewer: User, user_ids: list[uuid.UUID]) -> tuple[list, list]:
    """Split ids into those `viewer` may see the presence of and those answered
    `not_found` (unknown, another org's, or hidden from a guest: all alike). 403
    `presence_hidden` when the org hides presence."""
    if presence_hidden():
        raise ApiError(403, "presence_hidden", "This organisation does not share presence.")
    visible, not_found = [], []
    for user_id in dict.fromkeys(user_ids):
        try:
            access_directory_user(viewer, user_id)
        except ApiError as exc:
            if exc.status_code != 404:
                raise
            not_found.append(user_id)
        else:
            visible.append(user_id)
    return visible, not_found


def snapshot(user_ids: list) -> list[tuple[uuid.UUID, int, dict]]:
    """(user, version, presence) now, for a socket that just joined their groups: the
    version is read first, so a change it missed comes with a higher one."""
    schema = connection.schema_name
    found_versions = presence_store.versions(schema, user_ids)
    bodies = presence_of(user_ids)
    return [(u, found_versions[u], bodies[u]) for u in user_ids]


def visible_subset(viewer: User, user_ids: list) -> set:
    """The ids of `user_ids` `viewer` may still see (after their permissions changed)."""
    if presence_hidden():
        return set()
    return set(check_subscribe(viewer, user_ids)[0])


def socket_changed(
    process: str, socket: str, user_id, state: str | None, *, last_here: bool = False
) -> tuple[str, dict] | None:
    """A socket of `user_id` connected or reported "a"/"i" (active/idle), or closed
    (None; `last_here`: the process holds no other socket of the user). Returns what
    `publish` returns."""
    schema = connection.schema_name
    presence_store.set_socket(process, schema, user_id, socket, state)
    if last_here:
        presence_store.forget_user(process, schema, user_id)
    return publish(user_id)
