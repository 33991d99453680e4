"""1:1 call signaling: invite, ring, accept, reject, ICE, hang up, time out, drop.

The call's state is its row (calls.models.Call), changed under locks, so every web process
and every restart sees one truth:
- an invite takes transaction-scoped advisory locks on both users (in a fixed order), so
  busy and glare are decided once even when both people call each other at the same
  instant; the first invite to commit wins and the other ends as `glare`, naming it;
- accept, reject, hang-up, the ring timeout and the reconnect grace lock the call's row:
  the first device to accept wins, the others hear `call.answered_elsewhere`.

Frames go to devices through the channel layer (`call.frame` events to device and user
groups, siphera.tenancy.group_name) after commit, so they reach sockets in any web process.
SDP and ICE candidates are relayed untouched and never stored. Timers (the ring timeout,
the reconnect grace) are Celery tasks with a countdown (calls.tasks), and beat's sweep
ends what a lost timer left behind.

Every function runs in the org's schema and assumes the caller may use calls
(`calls.use`, checked by the socket); each checks that the user is a party to the call.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from calls.error_codes import CallError
from calls.models import Call, CallParticipant
from calls.services import recording
from messaging.models import Conversation
from messaging.services.conversations import access_conversation
from orgs.accounts.models import User
from orgs.roles import Perm, has_perm
from orgs.services import presence
from orgs.services.directory import access_directory_user
from siphera.api_errors import ApiError, not_found
from siphera.events import notify_on_commit, send_now
from siphera.tenancy import group_name

log = logging.getLogger("siphera.calls")

MEDIA = ("audio", "video")
REASON_MAX = 100
# An ICE candidate line is well under 200 bytes; the bound keeps one frame from relaying
# a quarter-megabyte to every ringing device.
CANDIDATE_MAX_BYTES = 4096
_LOCK_NAMESPACE = 0x43414C4C  # "CALL": advisory locks of this module


# --- where frames go --------------------------------------------------------------------


def device_group(user_id, device_id: int) -> str:
    return group_name(connection.schema_name, "d", user_id, device_id)


def user_group(user_id) -> str:
    return group_name(connection.schema_name, "u", user_id)


def _event(frame: dict, except_device: int | None = None) -> dict:
    event = {"type": "call.frame", "frame": frame}
    if except_device is not None:
        event["except_device"] = except_device
    return event


def _after_commit(group: str, frame: dict, *, except_device: int | None = None) -> None:
    notify_on_commit(group, _event(frame, except_device))


# --- reading ----------------------------------------------------------------------------


def _call_id(value) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ApiError(400, CallError.INVALID_CALL, "`call_id` must be a UUID.") from None


def _lock_call(call_id) -> tuple[Call, dict[str, CallParticipant]]:
    call = Call.objects.select_for_update().filter(pk=_call_id(call_id), kind=Call.DIRECT).first()
    if call is None:
        raise not_found("No such call.")
    return call, _participants(call)


def _participants(call: Call) -> dict[str, CallParticipant]:
    rows = CallParticipant.objects.filter(call=call)
    return {row.role: row for row in rows}


def _party(call: Call, parts: dict[str, CallParticipant], user: User) -> CallParticipant:
    """The caller's or the callee's row if `user` is that party, else 404."""
    for row in parts.values():
        if row.user_id == user.pk:
            return row
    raise not_found("No such call.")


def _sdp(sdp) -> str:
    if not isinstance(sdp, str) or not sdp:
        raise ApiError(400, CallError.INVALID_CALL, "`sdp` is a non-empty string.")
    if len(sdp.encode()) > settings.CALL_SDP_MAX_BYTES:
        raise ApiError(
            413, CallError.SDP_TOO_LARGE, f"SDP is limited to {settings.CALL_SDP_MAX_BYTES} bytes."
        )
    return sdp


# --- invite -----------------------------------------------------------------------------


@dataclass
class InviteOutcome:
    call: Call
    ringing: bool
    reason: str = ""  # why it ended at once: busy, glare, dnd
    replaced_by: uuid.UUID | None = None  # glare: the callee's call that rings instead
    recording: dict | None = None  # the `call.recording` frame, sent before `call.invited`


def _callee_of(caller: User, to) -> tuple[User, Conversation | None]:
    if not isinstance(to, dict) or len(to) != 1:
        raise ApiError(
            400, CallError.INVALID_CALL, "`to` is one of {user_id}, {conversation}, {emergency}."
        )
    if "emergency" in to:
        raise ApiError(
            501, CallError.EMERGENCY_UNAVAILABLE, "Emergency calling is not available yet."
        )
    if "user_id" in to:
        callee = access_directory_user(caller, to["user_id"])
        conversation = None
    elif "conversation" in to:
        conversation = access_conversation(caller, to["conversation"])
        if conversation.kind != Conversation.DIRECT:
            raise ApiError(
                400,
                CallError.GROUP_CALL_NEEDS_ROOM,
                "A group conversation is called through a room (POST /api/v1/calls/rooms).",
            )
        callee = (
            User.objects.filter(memberships__conversation=conversation)
            .exclude(pk=caller.pk)
            .first()
        )
        if callee is None:
            raise not_found("No such user.")
    else:
        raise ApiError(
            400, CallError.INVALID_CALL, "`to` is one of {user_id}, {conversation}, {emergency}."
        )
    if callee.pk == caller.pk:
        raise ApiError(400, CallError.CANNOT_CALL_SELF, "You cannot call yourself.")
    if not callee.is_active:
        raise not_found("No such user.")
    if not has_perm(callee, Perm.CALLS_USE):
        raise ApiError(409, CallError.CALLEE_UNAVAILABLE, "This user cannot take calls.")
    return callee, conversation


def _lock_users(*user_ids) -> None:
    with connection.cursor() as cursor:
        for user_id in sorted(str(u) for u in user_ids):
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                [_LOCK_NAMESPACE, f"{connection.schema_name}:{user_id}"],
            )


def _ringing_from(caller: User, callee: User) -> Call | None:
    return (
        Call.objects.filter(
            kind=Call.DIRECT,
            state=Call.RINGING,
            caller=caller,
            participants__user=callee,
            participants__role=CallParticipant.CALLEE,
        )
        .order_by("created_at")
        .first()
    )


def in_a_call(user_id) -> bool:
    """Whether the user is a connected party of a 1:1 call that was answered."""
    return CallParticipant.objects.filter(
        user_id=user_id,
        joined_at__isnull=False,
        left_at__isnull=True,
        call__state=Call.ACTIVE,
        call__kind=Call.DIRECT,
    ).exists()


def check_invite(*, user: User, device_id: int, call_id, to, media, sdp) -> InviteOutcome:
    """`user`'s device `device_id` starts ringing `to` (every device of the callee) with
    its SDP offer.

    Answers at once, without ringing, when the callee is in an answered call (`busy`), is
    calling the caller right now (`glare`: the callee's call wins, named in
    `replaced_by`), or has do-not-disturb on (`dnd`, recorded as missed); each is a
    call record. A retried invite (same call_id, same device) changes nothing."""
    call_id = _call_id(call_id)
    if media not in MEDIA:
        raise ApiError(400, CallError.INVALID_CALL, "`media` is 'audio' or 'video'.")
    sdp = _sdp(sdp)
    caller = user
    callee, conversation = _callee_of(caller, to)
    with transaction.atomic():
        _lock_users(caller.pk, callee.pk)
        existing = Call.objects.filter(pk=call_id).first()
        if existing is not None:
            if existing.caller_id == caller.pk and existing.caller_device_id == device_id:
                rec = recording.recording_of(existing)
                return InviteOutcome(
                    existing,
                    existing.state == Call.RINGING,
                    existing.end_reason,
                    recording=recording.notice(existing) if rec else None,
                )
            raise ApiError(409, CallError.CALL_ID_IN_USE, "Another call has this call_id.")
        now = timezone.now()
        call = Call.objects.create(
            id=call_id,
            kind=Call.DIRECT,
            media=media,
            caller=caller,
            caller_device_id=device_id,
            conversation=conversation,
        )
        CallParticipant.objects.bulk_create(
            [
                CallParticipant(
                    call=call,
                    user=caller,
                    role=CallParticipant.CALLER,
                    device_id=device_id,
                    joined_at=now,
                ),
                CallParticipant(call=call, user=callee, role=CallParticipant.CALLEE),
            ]
        )
        rival = _ringing_from(callee, caller)
        if rival is not None:
            _finish(call, Call.GLARE, "glare", now=now, notify=False)
            return InviteOutcome(call, False, "glare", replaced_by=rival.pk)
        if in_a_call(callee.pk):
            _finish(call, Call.BUSY, "busy", now=now, notify=False)
            return InviteOutcome(call, False, "busy")
        if presence.dnd_active(callee):
            _finish(call, Call.MISSED, "dnd", now=now, notify=False)
            return InviteOutcome(call, False, "dnd")
        incoming = {
            "type": "call.incoming",
            "call_id": str(call.pk),
            "from": {"user_id": str(caller.pk), "device_id": device_id},
            "media": media,
            "sdp": sdp,
        }
        if conversation is not None:
            incoming["conversation"] = str(conversation.pk)
        # Compliance recording: the callee's devices hear `call.recording` first.
        notice = recording.on_invite(call, caller, callee, user_group(callee.pk))
        _after_commit(user_group(callee.pk), incoming)
        due = now + timedelta(seconds=settings.CALL_RING_TIMEOUT_SECONDS)
        _schedule(
            "ring_timeout",
            str(call.pk),
            due.isoformat(),
            countdown=settings.CALL_RING_TIMEOUT_SECONDS,
        )
    return InviteOutcome(call, True, recording=notice)


# --- answering --------------------------------------------------------------------------


def check_ringing(*, user: User, device_id: int, call_id) -> None:
    """A callee device rings: the caller's device hears `call.ringing`."""
    call = Call.objects.filter(pk=_call_id(call_id), kind=Call.DIRECT).first()
    if call is None:
        raise not_found("No such call.")
    parts = _participants(call)
    if _party(call, parts, user).role != CallParticipant.CALLEE:
        raise not_found("No such call.")
    if call.state != Call.RINGING:
        return  # late: the caller already knows more than this
    send_now(
        device_group(call.caller_id, call.caller_device_id),
        _event({"type": "call.ringing", "call_id": str(call.pk), "device_id": device_id}),
    )


def check_accept(*, user: User, device_id: int, call_id, sdp) -> Call:
    """Answer with this device's SDP. The first device wins: the caller's device gets
    `call.accept`, the callee's other devices `call.answered_elsewhere`; a later accept
    is refused with `already_answered`. A retried accept by the winner is a no-op."""
    sdp = _sdp(sdp)
    with transaction.atomic():
        call, parts = _lock_call(call_id)
        me = _party(call, parts, user)
        if me.role != CallParticipant.CALLEE:
            raise not_found("No such call.")
        if call.state == Call.ENDED:
            raise ApiError(410, CallError.CALL_ENDED, "The call has ended.")
        if call.state == Call.ACTIVE:
            if me.device_id == device_id:
                return call
            raise ApiError(409, CallError.ALREADY_ANSWERED, "Another device answered the call.")
        now = timezone.now()
        call.state, call.answered_at = Call.ACTIVE, now
        call.save(update_fields=["state", "answered_at"])
        me.device_id, me.joined_at = device_id, now
        me.save(update_fields=["device_id", "joined_at"])
        accept = {
            "type": "call.accept",
            "call_id": str(call.pk),
            "sdp": sdp,
            "from": {"user_id": str(user.pk), "device_id": device_id},
        }
        # A recorded call: the caller gets the answer once every recorder leg connects.
        if not recording.hold_accept(call, accept):
            _after_commit(device_group(call.caller_id, call.caller_device_id), accept)
        _after_commit(
            user_group(user.pk),
            {"type": "call.answered_elsewhere", "call_id": str(call.pk), "device_id": device_id},
            except_device=device_id,
        )
        _presence_changed(call.caller_id, user.pk)
    return call


def check_reject(*, user: User, device_id: int, call_id, reason=None) -> Call:
    """A callee declines a ringing call: it ends `rejected` for the caller and stops
    ringing on the callee's other devices."""
    if reason is not None and (not isinstance(reason, str) or len(reason) > REASON_MAX):
        raise ApiError(400, CallError.INVALID_CALL, f"`reason` is text of {REASON_MAX} at most.")
    with transaction.atomic():
        call, parts = _lock_call(call_id)
        me = _party(call, parts, user)
        if me.role != CallParticipant.CALLEE:
            raise not_found("No such call.")
        if call.state == Call.ENDED:
            raise ApiError(410, CallError.CALL_ENDED, "The call has ended.")
        if call.state != Call.RINGING:
            raise ApiError(409, CallError.NOT_RINGING, "The call was answered: hang up instead.")
        _finish(call, Call.REJECTED, "rejected", by=(user.pk, device_id), parts=parts)
    return call


def check_hangup(*, user: User, device_id: int, call_id) -> Call:
    """A party's device ends the call: the caller (cancelling a ringing call, recorded as
    missed, or ending an answered one) or the callee's answering device; a callee's
    device while it rings declines it. Hanging up an ended call changes nothing."""
    with transaction.atomic():
        call, parts = _lock_call(call_id)
        me = _party(call, parts, user)
        if call.state == Call.ENDED:
            return call
        if me.role == CallParticipant.CALLER:
            if device_id != call.caller_device_id:
                raise not_found("No such call.")
            outcome = Call.COMPLETED if call.state == Call.ACTIVE else Call.MISSED
            _finish(call, outcome, "hangup", by=(user.pk, device_id), parts=parts)
        elif call.state == Call.RINGING:
            _finish(call, Call.REJECTED, "rejected", by=(user.pk, device_id), parts=parts)
        elif me.device_id == device_id:
            _finish(call, Call.COMPLETED, "hangup", by=(user.pk, device_id), parts=parts)
        else:
            raise not_found("No such call.")  # another device of the callee's
    return call


def check_ice(*, user: User, device_id: int, call_id, candidate) -> None:
    """Relay an ICE candidate, untouched, to the other party: from the caller's device to
    the answering device (to every callee device while it rings), from the answering
    device to the caller's."""
    if not isinstance(candidate, dict) or len(json.dumps(candidate)) > CANDIDATE_MAX_BYTES:
        raise ApiError(
            400,
            CallError.INVALID_CALL,
            f"`candidate` is an object of at most {CANDIDATE_MAX_BYTES} bytes as JSON.",
        )
    call = Call.objects.filter(pk=_call_id(call_id), kind=Call.DIRECT).first()
    if call is None:
        raise not_found("No such call.")
    parts = _participants(call)
    me = _party(call, parts, user)
    if call.state == Call.ENDED:
        raise ApiError(410, CallError.CALL_ENDED, "The call has ended.")
    callee = parts[CallParticipant.CALLEE]
    if me.role == CallParticipant.CALLER and device_id == call.caller_device_id:
        if call.state == Call.ACTIVE:
            target = device_group(callee.user_id, callee.device_id)
        else:
            target = user_group(callee.user_id)
    elif me.role == CallParticipant.CALLEE and call.state == Call.ACTIVE:
        if me.device_id != device_id:
            raise not_found("No such call.")
        target = device_group(call.caller_id, call.caller_device_id)
    else:
        raise not_found("No such call.")
    frame = {
        "type": "call.ice",
        "call_id": str(call.pk),
        "candidate": candidate,
        "from": {"user_id": str(user.pk), "device_id": device_id},
    }
    send_now(target, _event(frame))


# --- ending -----------------------------------------------------------------------------


def _finish(
    call: Call,
    outcome: str,
    reason: str,
    *,
    now: datetime | None = None,
    by: tuple | None = None,
    notify: bool = True,
    parts: dict[str, CallParticipant] | None = None,
) -> None:
    """End a locked call: record the outcome, close every participant, and (with
    `notify`) tell every device still in it with `call.ended`, except the one that
    ended it (`by`: user id, device id)."""
    now = now or timezone.now()
    was_active = call.state == Call.ACTIVE
    call.state, call.outcome, call.end_reason, call.ended_at = Call.ENDED, outcome, reason, now
    call.save(update_fields=["state", "outcome", "end_reason", "ended_at"])
    CallParticipant.objects.filter(call=call, joined_at__isnull=False, left_at__isnull=True).update(
        left_at=now
    )
    recording.on_finished(call)
    if not notify:
        return
    parts = parts if parts is not None else _participants(call)
    frame = {"type": "call.ended", "call_id": str(call.pk), "reason": reason}
    by_user, by_device = by if by else (None, None)
    if not (by_user == call.caller_id and by_device == call.caller_device_id):
        _after_commit(device_group(call.caller_id, call.caller_device_id), frame)
    callee = parts.get(CallParticipant.CALLEE)
    if callee is not None:
        if was_active:
            if not (by_user == callee.user_id and by_device == callee.device_id):
                _after_commit(device_group(callee.user_id, callee.device_id), frame)
        else:  # every device of theirs rang: all stop (but the one that declined)
            _after_commit(
                user_group(callee.user_id),
                frame,
                except_device=by_device if by_user == callee.user_id else None,
            )
    if was_active:
        _presence_changed(call.caller_id, callee.user_id if callee else None)


def do_ring_timeout(call_id, due: str) -> bool:
    """End the call as missed (`timeout`) if it still rings at `due` (ISO 8601, set by the
    web process that started the ringing, with its CALL_RING_TIMEOUT_SECONDS); True if it
    did. A timer that fires early (clock skew) leaves the call to the sweep."""
    with transaction.atomic():
        try:
            call, parts = _lock_call(call_id)
        except ApiError:
            return False
        deadline = datetime.fromisoformat(due)
        if call.state != Call.RINGING or timezone.now() < deadline - timedelta(seconds=1):
            return False
        _finish(call, Call.MISSED, "timeout", parts=parts)
        return True


# --- sockets coming and going -----------------------------------------------------------


def _live_legs(user_id, device_id):
    """This device's places in calls that are not over: as the caller (ringing or
    answered), or as the callee's answering device."""
    return CallParticipant.objects.filter(
        Q(role=CallParticipant.CALLER, call__state__in=[Call.RINGING, Call.ACTIVE])
        | Q(role=CallParticipant.CALLEE, call__state=Call.ACTIVE),
        user_id=user_id,
        device_id=device_id,
        left_at__isnull=True,
        call__kind=Call.DIRECT,
    )


def on_device_connected(user_id, device_id: int) -> int:
    """A socket of this device is ready: calls it dropped from within the grace period
    go on. Returns how many."""
    return CallParticipant.objects.filter(
        user_id=user_id, device_id=device_id, disconnected_at__isnull=False
    ).update(disconnected_at=None)


def on_device_disconnected(user_id, device_id: int) -> int:
    """This device's socket is gone: each call it is in ends unless it reconnects within
    CALL_RECONNECT_GRACE_SECONDS. Returns how many calls wait so."""
    now = timezone.now()
    with transaction.atomic():
        legs = list(_live_legs(user_id, device_id).filter(disconnected_at__isnull=True))
        for leg in legs:
            leg.disconnected_at = now
            leg.save(update_fields=["disconnected_at"])
            _schedule(
                "reconnect_grace_expired",
                str(leg.call_id),
                str(user_id),
                now.isoformat(),
                countdown=settings.CALL_RECONNECT_GRACE_SECONDS,
            )
    return len(legs)


def do_reconnect_grace_expired(call_id, user_id, since: str) -> bool:
    """End the call (`failed`) if the party is still away since `since`; True if so."""
    with transaction.atomic():
        try:
            call, parts = _lock_call(call_id)
        except ApiError:
            return False
        leg = next((p for p in parts.values() if str(p.user_id) == str(user_id)), None)
        if (
            call.state == Call.ENDED
            or leg is None
            or leg.disconnected_at is None
            or leg.disconnected_at.isoformat() != since
        ):
            return False
        _finish(call, Call.FAILED, "failed", by=(leg.user_id, leg.device_id), parts=parts)
        return True


def on_device_revoked(device) -> None:
    """orgs.hooks.device_revoked: a revoked device's calls end (`failed`) at once."""
    for leg in _live_legs(device.user_id, device.device_id):
        call, parts = _lock_call(leg.call_id)
        if call.state != Call.ENDED:
            _finish(call, Call.FAILED, "failed", by=(device.user_id, device.device_id), parts=parts)


def do_sweep() -> int:
    """End what lost timers left: calls ringing past the ring timeout, calls with a party
    away past the reconnect grace, and recorded calls past a leg's connect deadline
    (calls.services.recording.sweep). Returns how many calls ended."""
    now = timezone.now()
    ended = 0
    ring_deadline = now - timedelta(seconds=settings.CALL_RING_TIMEOUT_SECONDS + 5)
    for call_id in Call.objects.filter(
        kind=Call.DIRECT, state=Call.RINGING, created_at__lt=ring_deadline
    ).values_list("pk", flat=True):
        ended += do_ring_timeout(call_id, now.isoformat())
    away_deadline = now - timedelta(seconds=settings.CALL_RECONNECT_GRACE_SECONDS + 5)
    for leg in CallParticipant.objects.filter(
        disconnected_at__lt=away_deadline, call__state__in=[Call.RINGING, Call.ACTIVE]
    ):
        ended += do_reconnect_grace_expired(
            leg.call_id, leg.user_id, leg.disconnected_at.isoformat()
        )
    return ended + recording.sweep(now)


# --- timers and presence ----------------------------------------------------------------


def _schedule(task_name: str, *args, countdown: float) -> None:
    from calls import tasks
    from siphera.tenancy import send_task

    task = getattr(tasks, task_name)
    transaction.on_commit(lambda: send_task(task, *args, countdown=countdown))


def _presence_changed(*user_ids) -> None:
    """In-a-call changed for these users: presence tells their watchers after commit."""
    presence.notify_changed(*(user_id for user_id in user_ids if user_id is not None))
