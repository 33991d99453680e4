"""Delivered/read markers (stored per member) and typing (relayed, never stored)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.db.models.functions import Greatest

from messaging.models import Member
from messaging.services import unread
from orgs.accounts.models import User
from siphera.api_errors import ApiError, not_found
from siphera.events import notify_on_commit, send_now
from siphera.tenancy import group_name

KINDS = ("delivered", "read")


def _other_member_groups(conversation_id, user: User) -> list[str]:
    schema = connection.schema_name
    others = Member.objects.filter(conversation_id=conversation_id).exclude(user=user)
    return [group_name(schema, "u", uid) for uid in others.values_list("user_id", flat=True)]


def _membership(conversation_id, user: User) -> Member:
    try:
        member = Member.objects.filter(conversation_id=conversation_id, user=user).first()
    except (ValueError, ValidationError):  # malformed id
        member = None
    if member is None:
        raise not_found("No such conversation.")
    return member


def read_receipts_enabled() -> bool:
    """Whether read markers are relayed to other members in this org: the org policy's
    read-receipts switch (orgs.services.policy; on by default)."""
    from orgs.services import policy

    return policy.read_receipts_enabled()


def do_mark(
    user: User, conversation_id, *, kind: str, up_to_seq: int, read_receipts_enabled: bool = True
) -> dict:
    """Raise the member's delivered/read marker to `up_to_seq` (never lowers it) and relay
    it to the other members. Read markers are stored but not relayed when the org turned
    read receipts off. A read marker stops at the conversation's last seq and moves the
    member's unread and mention counts (messaging.services.unread)."""
    if kind not in KINDS:
        raise ApiError(400, "invalid_request", "kind is 'delivered' or 'read'.")
    member = _membership(conversation_id, user)
    field = "delivered_seq" if kind == "delivered" else "read_seq"
    with transaction.atomic():
        if kind == "read":  # read implies delivered
            unread.do_mark_read(member, up_to_seq)
        else:
            Member.objects.filter(pk=member.pk).update(**{field: Greatest(F(field), up_to_seq)})
        member.refresh_from_db(fields=["delivered_seq", "read_seq"])
        marker = {
            "type": "receipt.relay",
            "conversation": str(conversation_id),
            "user_id": str(user.pk),
            "kind": kind,
            "up_to_seq": getattr(member, field),
        }
        if kind == "delivered" or read_receipts_enabled:
            for group in _other_member_groups(conversation_id, user):
                notify_on_commit(group, marker)
    return marker


def relay_typing(user: User, device_id: int, conversation_id, *, state: str) -> None:
    """Tell the other members that `user` started/stopped typing. Nothing is stored."""
    if state not in ("start", "stop"):
        raise ApiError(400, "invalid_request", "state is 'start' or 'stop'.")
    _membership(conversation_id, user)
    event = {
        "type": "typing.relay",
        "conversation": str(conversation_id),
        "user_id": str(user.pk),
        "device_id": device_id,
        "state": state,
    }
    for group in _other_member_groups(conversation_id, user):
        send_now(group, event)
