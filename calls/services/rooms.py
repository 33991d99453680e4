"""Group calls: a room on the SFU (LiveKit) per call, the tokens that let a device into it,
and the moderation of who is in it.

A group call belongs to a conversation (group or direct; its current members may join)
or is ad hoc (anyone in the org who may look up everyone, `directory.view`, may join: not
guests). A conversation has at most one live group call: starting one while another is
live joins that one. Media are encrypted by the clients with a key they share through
the conversation (docs/protocol.md, "Group calls"); the server and the SFU never hold it.

Guarantees:
- A token names one room, the call's, and carries the grants of the caller's codes:
  `calls.use` joins, publishes, subscribes and sends data; `calls.manage` adds room_admin.
- Another org's call, a call of a conversation the caller is not in, and an ad hoc call
  for a caller without `directory.view` are all 404, alike.
- Creating or joining writes the Call (kind group) and the caller's CallParticipant row
  before a token is returned; when LiveKit is not configured nothing is written.
- Removing a participant is audited (`call.participant_removed`) after LiveKit removed them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from django.core.exceptions import ValidationError
from django.db import transaction
from livekit import api as lk

from calls.error_codes import CallError
from calls.models import Call, CallParticipant
from calls.services import livekit, recording_policy
from messaging.services.conversations import access_conversation
from orgs.accounts.models import User
from orgs.audit_events import AuditEvent
from orgs.roles import Perm, codes_for
from orgs.services import audit
from siphera.api_errors import ApiError, not_found

CALL_ENDED = "call_ended"  # 410: the room finished; start a new call (as CallError)
NOT_ALLOWED = "not_allowed"  # 403: an ad hoc room needs directory.view
MEDIA = ("audio", "video")


@dataclass(frozen=True)
class RoomAccess:
    """What a client needs to join a group call's room."""

    call: Call
    room: str
    url: str
    token: str
    ttl: int

    def payload(self) -> dict:
        return {
            "call_id": str(self.call.pk),
            "conversation": str(self.call.conversation_id) if self.call.conversation_id else None,
            "media": self.call.media,
            "room": self.room,
            "url": self.url,
            "token": self.token,
            "ttl": self.ttl,
        }


def grants_for(user: User, room: str) -> lk.VideoGrants:
    """The room grants of `user`'s codes for `room` (and no other room)."""
    codes = codes_for(user)
    if Perm.CALLS_USE not in codes:  # the views require it; never mint without it
        raise ApiError(403, "forbidden", "Your role lacks the 'calls.use' permission.")
    grants = lk.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
    )
    if Perm.CALLS_MANAGE in codes:
        grants.room_admin = True
    return grants


def check_open_room(
    user: User, device_id: int, *, conversation_id=None, media: str, name: str = ""
) -> tuple[RoomAccess, bool]:
    """Start a group call (or join the conversation's live one) and mint the caller's
    token. Returns (access, created)."""
    if conversation_id is None and Perm.DIRECTORY_VIEW not in codes_for(user):
        raise ApiError(
            403, NOT_ALLOWED, "Your role can only call in conversations you are a member of."
        )
    with transaction.atomic():
        created = False
        call = None
        if conversation_id is not None:
            # The lock makes two members starting a call at once end up in one.
            conversation = access_conversation(user, conversation_id, for_update=True)
            call = (
                Call.objects.filter(kind=Call.GROUP, conversation=conversation)
                .exclude(state=Call.ENDED)
                .order_by("created_at")
                .first()
            )
        cfg = livekit.config()  # after the 404s; a 503 here leaves nothing written
        if call is None:
            call_id = uuid.uuid4()
            call = Call.objects.create(
                id=call_id,
                kind=Call.GROUP,
                media=media,
                caller=user,
                caller_device_id=device_id,
                conversation_id=conversation_id,
                room=livekit.room_name(call_id),
            )
            created = True
        access = _admit(cfg, call, user, device_id, name)
    return access, created


def check_join_room(user: User, device_id: int, call_id, *, name: str = "") -> RoomAccess:
    """A token for an existing group call's room. 410 `call_ended` once it finished."""
    with transaction.atomic():
        call = access_group_call(user, call_id)
        if call.state == Call.ENDED:
            raise ApiError(410, CALL_ENDED, "This call has ended; start a new one.")
        return _admit(livekit.config(), call, user, device_id, name)


def access_group_call(user: User, call_id) -> Call:
    """The group call if `user` may be in it, else 404 (whether or not it exists)."""
    call = _group_call(call_id)
    if call is None:
        raise not_found("No such call.")
    if call.conversation_id is not None:
        try:
            access_conversation(user, call.conversation_id)
        except ApiError:
            raise not_found("No such call.") from None
    elif Perm.DIRECTORY_VIEW not in codes_for(user):
        raise not_found("No such call.")
    return call


def access_call_for_moderation(call_id) -> Call:
    """Any group call of this org (for `calls.manage`), else 404."""
    call = _group_call(call_id)
    if call is None:
        raise not_found("No such call.")
    return call


def room_participants(call: Call) -> list[dict]:
    """Who is in the call's room now, as LiveKit says."""
    cfg = livekit.config()
    return [participant_payload(p) for p in livekit.list_participants(cfg, call.room)]


def check_remove_participant(call: Call, who: str, *, actor: audit.Actor) -> None:
    """Disconnect `who` (an identity `<user id>:<device id>`) from the call's room and
    audit it. 404 for an identity that is malformed or not in the room. Removal is a kick,
    not a ban: to keep someone out, remove them from the conversation."""
    parsed = livekit.parse_identity(who)
    if parsed is None:
        raise not_found("No such participant.")
    cfg = livekit.config()
    if not livekit.remove_participant(cfg, call.room, who):
        raise not_found("No such participant.")
    user_id, device_id = parsed
    with transaction.atomic():
        audit.record(
            AuditEvent.CALL_PARTICIPANT_REMOVED,
            actor=actor,
            target_type="call",
            target_id=call.pk,
            data={"room": call.room, "user_id": str(user_id), "device_id": device_id},
        )


def participant_payload(info: lk.ParticipantInfo) -> dict:
    parsed = livekit.parse_identity(info.identity)
    return {
        "identity": info.identity,
        "user_id": str(parsed[0]) if parsed else None,
        "device_id": parsed[1] if parsed else None,
        "name": info.name,
        "joined_at": (
            dt.datetime.fromtimestamp(info.joined_at, dt.UTC).isoformat()
            if info.joined_at
            else None
        ),
        "publishing": bool(info.is_publisher),
    }


def _group_call(call_id) -> Call | None:
    try:
        return Call.objects.filter(pk=call_id, kind=Call.GROUP).first()
    except (ValidationError, ValueError):
        return None


def _admit(cfg: livekit.LiveKitConfig, call: Call, user: User, device_id: int, name: str):
    """Record `user` as a participant of `call` and mint their device's token."""
    if recording_policy.recording_required(user):
        # No call that policy requires to be recorded goes ahead unrecorded, and the
        # recorder joins 1:1 calls only (planned for rooms). Raised inside the caller's
        # transaction: a room this request was opening is not kept.
        raise ApiError(
            409,
            CallError.RECORDING_UNSUPPORTED,
            "Your organisation records your calls, and group calls cannot be recorded yet: "
            "call people one to one instead.",
        )
    CallParticipant.objects.get_or_create(
        call=call, user=user, defaults={"role": CallParticipant.MEMBER, "device_id": device_id}
    )
    token = livekit.mint_token(
        cfg,
        room=call.room,
        identity=livekit.identity(user.pk, device_id),
        grants=grants_for(user, call.room),
        name=name,
    )
    return RoomAccess(call=call, room=call.room, url=cfg.url, token=token, ttl=cfg.token_ttl)
