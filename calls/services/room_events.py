"""LiveKit's webhooks -> group-call records.

LiveKit posts every event of every room to each configured URL, so each org host hears
about other orgs' rooms too: a room that is not named `<this schema>.<call id>` of one of
this org's group calls is refused (404) and nothing is written.

Guarantees:
- Idempotent and order-independent: a participant's connection is one RoomSession row,
  keyed by LiveKit's participant sid; a redelivered event finds its row and changes
  nothing, and a `participant_left` that overtakes its `participant_joined` still yields
  the same rows.
- A Call's `answered_at` is its first join; a CallParticipant's `joined_at` is their first
  join and `left_at` the moment their last device left (None while one is in the room).
- `room_finished` ends the call (`ended_at`, outcome `completed`, or `missed` when nobody
  ever joined) and closes every session still open. Later events of the call change no
  outcome, and a join after it ended is ignored.
- Each event is applied in one transaction, under the Call's row lock.
"""

from __future__ import annotations

import datetime as dt

from django.db import transaction
from django.db.models import Min
from django.utils import timezone
from livekit import api as lk

from calls.models import Call, CallParticipant, RoomSession
from calls.services import livekit
from orgs.accounts.models import User
from siphera.api_errors import not_found

JOINED = "participant_joined"
LEFT = ("participant_left", "participant_connection_aborted")
FINISHED = "room_finished"
END_REASON = "room_finished"


def do_apply_webhook(event: lk.WebhookEvent) -> bool:
    """Apply one verified webhook event. True if it concerned the call's records, False
    for events Siphera does not record (tracks, egress, ...). 404 for a room that is not
    one of this org's group calls."""
    if event.event != JOINED and event.event not in LEFT and event.event != FINISHED:
        return False
    call_id = livekit.call_id_of_room(event.room.name)
    if call_id is None:
        raise not_found("No such room.")
    at = _time(event.created_at) or timezone.now()
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(pk=call_id, kind=Call.GROUP).first()
        if call is None:
            raise not_found("No such room.")
        if event.event == FINISHED:
            _finish(call, at)
            return True
        session = _session(call, event.participant, at, joined=event.event == JOINED)
        if session is None:
            return False
        _derive_participant(call, session.user_id)
        _derive_call(call)
    return True


def _session(call: Call, info: lk.ParticipantInfo, at: dt.datetime, *, joined: bool):
    """The participant's RoomSession, created or completed by this event; None when the
    identity is not one of ours or the join came after the call ended."""
    parsed = livekit.parse_identity(info.identity)
    if parsed is None or not info.sid:
        return None
    user_id, device_id = parsed
    if not User.objects.filter(pk=user_id).exists():
        return None
    joined_at = _joined_at(info) or at
    if call.ended_at is not None and joined_at > call.ended_at:
        return None  # a late token used after the room finished: not part of this call
    session, created = RoomSession.objects.get_or_create(
        call=call,
        sid=info.sid[:100],
        defaults={"user_id": user_id, "device_id": device_id, "joined_at": joined_at},
    )
    left_at = None if joined else at
    if call.ended_at is not None:
        left_at = min(left_at or call.ended_at, call.ended_at)
    if left_at is not None and session.left_at is None:
        session.left_at = max(left_at, session.joined_at)
        session.save(update_fields=["left_at"])
    return session


def _derive_participant(call: Call, user_id) -> None:
    sessions = list(RoomSession.objects.filter(call=call, user_id=user_id).order_by("joined_at"))
    if not sessions:
        return
    still_in = any(s.left_at is None for s in sessions)
    participant, _ = CallParticipant.objects.get_or_create(
        call=call, user_id=user_id, defaults={"role": CallParticipant.MEMBER}
    )
    participant.joined_at = sessions[0].joined_at
    participant.left_at = None if still_in else max(s.left_at for s in sessions)
    participant.device_id = sessions[-1].device_id
    participant.save(update_fields=["joined_at", "left_at", "device_id"])


def _derive_call(call: Call) -> None:
    first = RoomSession.objects.filter(call=call).aggregate(first=Min("joined_at"))["first"]
    if first is None:
        return
    fields = []
    if call.answered_at is None or first < call.answered_at:
        call.answered_at = first
        fields.append("answered_at")
    if call.state == Call.RINGING:
        call.state = Call.ACTIVE
        fields.append("state")
    if fields:
        call.save(update_fields=fields)


def _finish(call: Call, at: dt.datetime) -> None:
    if call.ended_at is None:
        call.ended_at = max(at, call.answered_at or at)
        call.state = Call.ENDED
        call.outcome = Call.COMPLETED if call.answered_at else Call.MISSED
        call.end_reason = END_REASON
        call.save(update_fields=["ended_at", "state", "outcome", "end_reason"])
    open_users = set(
        RoomSession.objects.filter(call=call, left_at__isnull=True).values_list(
            "user_id", flat=True
        )
    )
    if open_users:
        RoomSession.objects.filter(call=call, left_at__isnull=True).update(left_at=call.ended_at)
        for user_id in open_users:
            _derive_participant(call, user_id)


def _joined_at(info: lk.ParticipantInfo) -> dt.datetime | None:
    if info.joined_at_ms:
        return _time(info.joined_at_ms / 1000)
    return _time(info.joined_at)


def _time(seconds: float) -> dt.datetime | None:
    """A Unix time of an event, or None when absent or out of any sane range."""
    if not 0 < seconds < 2**33:  # up to the year 2242
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC)
