"""Conversations and membership. Membership changes are events in the conversation."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from messaging.error_codes import MessagingError
from messaging.models import Conversation, Member
from orgs.accounts.models import User
from orgs.roles import Perm, has_perm
from orgs.services.directory import sees_all
from siphera.api_errors import ApiError, not_found
from siphera.params import after_row

MAX_GROUP_MEMBERS = 1000


def access_conversation(user: User, conversation_id, *, for_update: bool = False) -> Conversation:
    """The conversation if `user` is a member, else 404 (whether or not it exists)."""
    try:
        # A malformed id fails as the filter is built (UUIDField.get_prep_value), not
        # when it runs: both are inside the try.
        rows = Conversation.objects.filter(pk=conversation_id, members__user=user)
        if for_update:
            rows = rows.select_for_update(of=("self",))
        conversation = rows.first()
    except (ValidationError, ValueError):
        conversation = None
    if conversation is None:
        raise not_found("No such conversation.")
    return conversation


def _active_users(user_ids) -> dict[str, User]:
    try:
        users = User.objects.filter(pk__in=list(user_ids), is_active=True)
        return {str(u.pk): u for u in users}
    except (ValidationError, ValueError):
        raise ApiError(
            400, MessagingError.INVALID_MEMBERS, "Member ids must be user ids."
        ) from None


def _require_visible(user: User, user_ids) -> None:
    # Putting someone in a conversation makes them a contact (directory and key claims
    # follow), so a guest may only bring in people it can already see.
    if not sees_all(user, user_ids):
        raise ApiError(
            403,
            MessagingError.NOT_ALLOWED,
            "You can only add people you share a conversation with.",
        )


def direct_key(a: User, b: User) -> str:
    low, high = sorted([str(a.pk), str(b.pk)])
    return f"{low}:{high}"


def check_create_conversation(
    *, creator: User, kind: str, member_ids: list[str], title: bytes | None
) -> tuple[Conversation, bool]:
    """Create a conversation (or find the existing direct one). Returns (conversation,
    created). A member the creator may not look up in the directory -> 403 `not_allowed`
    (checked first, so a guest learns nothing of ids it cannot see); unknown or inactive
    member ids -> 400 `invalid_members`."""
    wanted = {str(m) for m in member_ids} - {str(creator.pk)}
    _require_visible(creator, wanted)
    users = _active_users(wanted)
    unknown = sorted(wanted - set(users))
    if unknown:
        raise ApiError(
            400,
            MessagingError.INVALID_MEMBERS,
            "Unknown or inactive users.",
            extra={"unknown": unknown},
        )
    if kind == Conversation.DIRECT:
        if len(users) != 1:
            raise ApiError(
                400,
                MessagingError.INVALID_MEMBERS,
                "A direct conversation has exactly one other member.",
            )
        (other,) = users.values()
        return _get_or_create_direct(creator, other, title)
    if not has_perm(creator, Perm.GROUPS_CREATE):
        raise ApiError(403, MessagingError.NOT_ALLOWED, "Your role cannot create groups.")
    if len(users) + 1 > MAX_GROUP_MEMBERS:
        raise ApiError(
            400, MessagingError.INVALID_MEMBERS, f"A group has at most {MAX_GROUP_MEMBERS} members."
        )
    with transaction.atomic():
        conversation = Conversation.objects.create(
            kind=Conversation.GROUP, title=title, created_by=creator
        )
        Member.objects.create(conversation=conversation, user=creator, role=Member.ADMIN)
        Member.objects.bulk_create(
            [Member(conversation=conversation, user=u, role=Member.MEMBER) for u in users.values()]
        )
    return conversation, True


def _get_or_create_direct(creator: User, other: User, title) -> tuple[Conversation, bool]:
    key = direct_key(creator, other)
    existing = Conversation.objects.filter(direct_key=key).first()
    if existing:
        return existing, False
    try:
        with transaction.atomic():
            conversation = Conversation.objects.create(
                kind=Conversation.DIRECT, title=title, direct_key=key, created_by=creator
            )
            Member.objects.bulk_create(
                [
                    Member(conversation=conversation, user=creator, role=Member.MEMBER),
                    Member(conversation=conversation, user=other, role=Member.MEMBER),
                ]
            )
        return conversation, True
    except IntegrityError:  # a concurrent create of the same pair won
        return Conversation.objects.get(direct_key=key), False


def check_add_members(
    conversation: Conversation,
    member_ids: list[str],
    *,
    acting_user: User,
    acting_device_id: int | None = None,
) -> list[str]:
    """Add users to a group (group admins only). Returns the ids actually added and appends
    a `member.added` event to the conversation."""
    from messaging.services.delivery import do_append_event

    _require_group_admin(conversation, acting_user)
    _require_visible(acting_user, member_ids)
    users = _active_users({str(m) for m in member_ids})
    unknown = sorted({str(m) for m in member_ids} - set(users))
    if unknown:
        raise ApiError(
            400,
            MessagingError.INVALID_MEMBERS,
            "Unknown or inactive users.",
            extra={"unknown": unknown},
        )
    with transaction.atomic():
        present = set(
            Member.objects.filter(conversation=conversation, user__in=users.values()).values_list(
                "user_id", flat=True
            )
        )
        new = [u for u in users.values() if u.pk not in present]
        if Member.objects.filter(conversation=conversation).count() + len(new) > MAX_GROUP_MEMBERS:
            raise ApiError(
                400,
                MessagingError.INVALID_MEMBERS,
                f"A group has at most {MAX_GROUP_MEMBERS} members.",
            )
        Member.objects.bulk_create([Member(conversation=conversation, user=u) for u in new])
        added = [str(u.pk) for u in new]
        if added:
            do_append_event(
                conversation,
                {"action": "member.added", "user_ids": added},
                actor=acting_user,
                actor_device_id=acting_device_id,
            )
    return added


def check_remove_member(
    conversation: Conversation, user_id, *, acting_user: User, acting_device_id: int | None = None
) -> None:
    """Remove a member (group admins), or leave (anyone, for themselves). The event is
    delivered to the remaining members and to the removed user's devices."""
    from messaging.services.delivery import do_append_event

    if conversation.kind != Conversation.GROUP:
        raise ApiError(
            400, MessagingError.NOT_ALLOWED, "Direct conversations have no members to remove."
        )
    leaving = str(user_id) == str(acting_user.pk)
    if not leaving:
        _require_group_admin(conversation, acting_user)
    with transaction.atomic():
        try:
            member = Member.objects.select_for_update().get(
                conversation=conversation, user_id=user_id
            )
        except (Member.DoesNotExist, ValidationError, ValueError):
            raise not_found("No such member.") from None
        action = "member.left" if leaving else "member.removed"
        # The event goes out while the user is still a member, so their devices learn it.
        do_append_event(
            conversation,
            {"action": action, "user_ids": [str(member.user_id)]},
            actor=acting_user,
            actor_device_id=acting_device_id,
        )
        member.delete()
        if (
            member.role == Member.ADMIN
            and not Member.objects.filter(conversation=conversation, role=Member.ADMIN).exists()
        ):
            # Never leave a group without an admin: the longest-standing member takes over.
            successor = Member.objects.filter(conversation=conversation).order_by("joined_at")
            successor.filter(pk__in=successor.values("pk")[:1]).update(role=Member.ADMIN)


def _require_group_admin(conversation: Conversation, user: User) -> None:
    if conversation.kind != Conversation.GROUP:
        raise ApiError(400, MessagingError.NOT_ALLOWED, "Only groups have member management.")
    if not Member.objects.filter(conversation=conversation, user=user, role=Member.ADMIN).exists():
        raise ApiError(403, MessagingError.NOT_ALLOWED, "Only group admins can do this.")


MAX_PAGE = 500


def conversations_of(user: User, *, limit: int = MAX_PAGE, after=None) -> list[Conversation]:
    """`user`'s conversations, oldest first, at most `limit` of them; `after` (a
    conversation id) starts after that conversation, which must be one of theirs (404)."""
    rows = (
        Conversation.objects.filter(members__user=user)
        .prefetch_related("members")
        .order_by("created_at", "pk")
    )
    if after is not None:
        rows = after_row(rows, access_conversation(user, after), "created_at")
    return list(rows[:limit])


def conversation_payload(conversation: Conversation) -> dict:
    from orgs.api.fields import b64

    return {
        "id": str(conversation.pk),
        "kind": conversation.kind,
        "title": b64(conversation.title),
        "members": [
            {"user_id": str(m.user_id), "role": m.role}
            for m in sorted(conversation.members.all(), key=lambda m: m.joined_at)
        ],
        "last_seq": conversation.last_seq,
        "created_at": conversation.created_at.isoformat(),
        "retention_days": conversation.retention_days,
    }


def share_a_conversation(a: User, b: User) -> bool:
    """Whether `a` and `b` are both members of at least one conversation."""
    return Member.objects.filter(
        user=a, conversation__in=Member.objects.filter(user=b).values("conversation")
    ).exists()
