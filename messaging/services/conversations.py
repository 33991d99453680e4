"""Conversations and group administration. Every change of a group (members, roles, title,
topic) is an event in the conversation: a message of kind `event` with its own seq, queued
for every member device (messaging.services.delivery.do_append_event).

Changes take the conversation's row lock first, as sends do, so two of them (two admins
leaving at once, two adds racing past the size limit) run one after the other, and a send
never reads a member set that a change is rewriting.
"""

from __future__ import annotations

import uuid

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from messaging.error_codes import MessagingError
from messaging.models import Conversation, Member
from orgs.accounts.models import User
from orgs.roles import Perm, has_perm
from orgs.services.directory import sees_all
from orgs.services.policy import group_max_members
from siphera.api_errors import ApiError, not_found
from siphera.params import after_row

# Per request (POST /conversations, POST .../members); the org's policy bounds the group.
MAX_MEMBERS_PER_REQUEST = 1000


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


def user_id_text(raw) -> str:
    """A user id as the database spells it (a UUID in any of its written forms: upper
    case, no hyphens, braces), so that ids compare as the users they name; anything else
    as given (it then names no one)."""
    try:
        return str(uuid.UUID(str(raw)))
    except ValueError:
        return str(raw)


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


def _users_to_add(acting_user: User, wanted: set[str]) -> dict[str, User]:
    """The users `acting_user` brings into a conversation, by id: 403 `not_allowed` for
    anyone they may not look up (checked first: it confirms nothing), then 400
    `invalid_members` (+`unknown`) for unknown or inactive ids."""
    _require_visible(acting_user, wanted)
    users = _active_users(wanted)
    unknown = sorted(wanted - set(users))
    if unknown:
        raise ApiError(
            400,
            MessagingError.INVALID_MEMBERS,
            "Unknown or inactive users.",
            extra={"unknown": unknown},
        )
    return users


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
    users = _users_to_add(creator, {user_id_text(m) for m in member_ids} - {str(creator.pk)})
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
    _check_size(len(users) + 1)
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


def _check_size(size: int) -> None:
    limit = group_max_members()
    if size > limit:
        raise ApiError(
            400,
            MessagingError.GROUP_TOO_LARGE,
            f"A group of this org has at most {limit} members.",
            extra={"max_members": limit},
        )


def _lock(conversation: Conversation) -> Conversation:
    return Conversation.objects.select_for_update().get(pk=conversation.pk)


def _member(conversation: Conversation, user_id) -> Member:
    try:
        return Member.objects.select_related("user").get(conversation=conversation, user_id=user_id)
    except (Member.DoesNotExist, ValidationError, ValueError):
        raise not_found("No such member.") from None


def check_add_members(
    conversation: Conversation,
    member_ids: list[str],
    *,
    acting_user: User,
    acting_device_id: int | None = None,
) -> list[str]:
    """Add users to a group (group admins only). Returns the ids actually added and appends
    a `member.added` event to the conversation. Beyond the org's group size (policy
    `group_max_members`) -> 400 `group_too_large`, nobody added. New members start with
    everything before their arrival read (their unread count starts at zero)."""
    from messaging.services.delivery import do_append_event

    wanted = {user_id_text(m) for m in member_ids}
    with transaction.atomic():
        locked = _lock(conversation)
        _require_group_admin(locked, acting_user)
        users = _users_to_add(acting_user, wanted)
        present = set(
            Member.objects.filter(conversation=locked, user__in=users.values()).values_list(
                "user_id", flat=True
            )
        )
        new = [u for u in users.values() if u.pk not in present]
        if new:
            _check_size(Member.objects.filter(conversation=locked).count() + len(new))
        Member.objects.bulk_create(
            [
                Member(
                    conversation=locked,
                    user=u,
                    read_seq=locked.last_seq,
                    delivered_seq=locked.last_seq,
                )
                for u in new
            ]
        )
        added = [str(u.pk) for u in new]
        if added:
            do_append_event(
                locked,
                {"action": "member.added", "user_ids": added},
                actor=acting_user,
                actor_device_id=acting_device_id,
            )
    return added


def check_remove_member(
    conversation: Conversation, user_id, *, acting_user: User, acting_device_id: int | None = None
) -> None:
    """Remove a member (group admins), or leave (anyone, for themselves). The event is
    delivered to the remaining members and to the removed user's devices. The group's only
    admin cannot leave while other (active) members remain: 409 `last_admin`, promote
    someone first. The last member may leave."""
    if conversation.kind != Conversation.GROUP:
        raise ApiError(
            400, MessagingError.NOT_ALLOWED, "Direct conversations have no members to remove."
        )
    leaving = user_id_text(user_id) == str(acting_user.pk)
    with transaction.atomic():
        locked = _lock(conversation)
        if not leaving:
            _require_group_admin(locked, acting_user)
        member = _member(locked, user_id)
        if leaving and member.role == Member.ADMIN:
            _require_another_admin(locked, member, alone_ok=True)
        do_remove_member(
            locked,
            member,
            action="member.left" if leaving else "member.removed",
            actor=acting_user,
            actor_device_id=acting_device_id,
        )


def do_remove_member(
    conversation: Conversation,
    member: Member,
    *,
    action: str,
    actor: User,
    actor_device_id: int | None = None,
    reason: str | None = None,
) -> None:
    """Take `member` out of the group (the caller holds the conversation's lock): the
    `action` event (`member.left` / `member.removed`) goes out while they are still a
    member, so their devices learn it. A group left with active members but no active
    admin (a forced removal: an erased user was its only admin) makes its longest-standing
    active member admin, with a `member.role_changed` event."""
    from messaging.services.delivery import do_append_event

    event = {"action": action, "user_ids": [str(member.user_id)]}
    if reason:
        event["reason"] = reason
    do_append_event(conversation, event, actor=actor, actor_device_id=actor_device_id)
    member.delete()
    if conversation.kind == Conversation.GROUP:
        _ensure_an_active_admin(conversation, actor=actor, actor_device_id=actor_device_id)


def _ensure_an_active_admin(
    conversation: Conversation, *, actor: User, actor_device_id: int | None = None
) -> None:
    """If the group (locked by the caller) has active members but no active admin, make
    its longest-standing active member admin, with a `member.role_changed` event."""
    from messaging.services.delivery import do_append_event

    active = Member.objects.filter(conversation=conversation, user__is_active=True)
    if active.filter(role=Member.ADMIN).exists():
        return
    successor = active.order_by("joined_at", "pk").first()
    if successor is not None:
        Member.objects.filter(pk=successor.pk).update(role=Member.ADMIN)
        do_append_event(
            conversation,
            {
                "action": "member.role_changed",
                "user_ids": [str(successor.user_id)],
                "role": "admin",
            },
            actor=actor,
            actor_device_id=actor_device_id,
        )


def on_user_deactivated(user: User, *, actor) -> None:
    """orgs.hooks.user_deactivated: every group `user` was an admin of and that has no
    other active admin now gets one (_ensure_an_active_admin), so a deactivated only
    admin (an account deprovisioned by the IdP, say) leaves no group that nobody can
    manage. They stay a member and an admin: reactivated, they manage it again. Groups
    are locked in id order (a send or a change locks one at a time)."""
    groups = (
        Member.objects.filter(user=user, role=Member.ADMIN, conversation__kind=Conversation.GROUP)
        .order_by("conversation_id")
        .values_list("conversation_id", flat=True)
    )
    for conversation_id in list(groups):
        locked = Conversation.objects.select_for_update().get(pk=conversation_id)
        _ensure_an_active_admin(locked, actor=user)


def _require_another_admin(conversation: Conversation, member: Member, *, alone_ok: bool) -> None:
    """409 `last_admin` unless another active admin remains after `member` goes or steps
    down (or, with `alone_ok`, no other active member remains)."""
    others = Member.objects.filter(conversation=conversation, user__is_active=True).exclude(
        pk=member.pk
    )
    if others.filter(role=Member.ADMIN).exists() or (alone_ok and not others.exists()):
        return
    raise ApiError(
        409,
        MessagingError.LAST_ADMIN,
        "You are the group's only admin: make someone else admin first.",
    )


ROLES = (Member.ADMIN, Member.MEMBER)


def check_set_member_role(
    conversation: Conversation,
    user_id,
    role: str,
    *,
    acting_user: User,
    acting_device_id: int | None = None,
) -> Member:
    """Promote a member to admin or demote an admin (group admins only), appending a
    `member.role_changed` event; the same role again changes nothing. The group's only
    active admin cannot step down: 409 `last_admin`. An inactive user cannot be made
    admin (400 `invalid_members`)."""
    from messaging.services.delivery import do_append_event

    if role not in ROLES:
        raise ApiError(400, "invalid_request", "role is 'admin' or 'member'.")
    with transaction.atomic():
        locked = _lock(conversation)
        _require_group_admin(locked, acting_user)
        member = _member(locked, user_id)
        if member.role == role:
            return member
        if role == Member.ADMIN and not member.user.is_active:
            raise ApiError(400, MessagingError.INVALID_MEMBERS, "This user is deactivated.")
        if role == Member.MEMBER:
            _require_another_admin(locked, member, alone_ok=False)
        member.role = role
        member.save(update_fields=["role"])
        do_append_event(
            locked,
            {"action": "member.role_changed", "user_ids": [str(member.user_id)], "role": role},
            actor=acting_user,
            actor_device_id=acting_device_id,
        )
    return member


DESCRIPTION_FIELDS = ("title", "topic")


def check_update_conversation(
    conversation: Conversation,
    changes: dict[str, bytes | None],
    *,
    acting_user: User,
    acting_device_id: int | None = None,
) -> Conversation:
    """Rename a group or set its topic (group admins only). Both are ciphertext the
    clients encrypt (the server stores and relays the bytes, never reads them); None
    clears one. Each field that changes appends a `title.changed` / `topic.changed` event
    carrying the new value (base64, or null)."""
    from messaging.services.delivery import do_append_event
    from orgs.api.fields import b64

    with transaction.atomic():
        locked = _lock(conversation)
        _require_group_admin(locked, acting_user)
        changed = []
        for field in DESCRIPTION_FIELDS:
            if field not in changes:
                continue
            before = getattr(locked, field)
            value = changes[field]
            if (None if before is None else bytes(before)) == value:
                continue
            setattr(locked, field, value)
            changed.append(field)
            do_append_event(
                locked,
                {"action": f"{field}.changed", field: b64(value)},
                actor=acting_user,
                actor_device_id=acting_device_id,
            )
        if changed:
            locked.save(update_fields=changed)
    return locked


def _require_group_admin(conversation: Conversation, user: User) -> None:
    if conversation.kind != Conversation.GROUP:
        raise ApiError(400, MessagingError.NOT_ALLOWED, "Only groups have admins.")
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


def conversation_payloads(conversations: list[Conversation], *, viewer: User) -> list[dict]:
    """The `Conversation` objects of the API, with `viewer`'s read state in each (one
    query for all of them: messaging.services.unread)."""
    from messaging.services.unread import read_states
    from orgs.api.fields import b64

    states = read_states(viewer, [c.pk for c in conversations])
    payloads = []
    for conversation in conversations:
        state = states.get(str(conversation.pk))
        payloads.append(
            {
                "id": str(conversation.pk),
                "kind": conversation.kind,
                "title": b64(conversation.title),
                "topic": b64(conversation.topic),
                "members": [
                    {"user_id": str(m.user_id), "role": m.role}
                    for m in sorted(conversation.members.all(), key=lambda m: m.joined_at)
                ],
                "last_seq": conversation.last_seq,
                "created_at": conversation.created_at.isoformat(),
                "retention_days": conversation.retention_days,
                **(state.payload() if state else {}),
            }
        )
    return payloads


def conversation_payload(conversation: Conversation, *, viewer: User) -> dict:
    return conversation_payloads([conversation], viewer=viewer)[0]


def share_a_conversation(a: User, b: User) -> bool:
    """Whether `a` and `b` are both members of at least one conversation."""
    return Member.objects.filter(
        user=a, conversation__in=Member.objects.filter(user=b).values("conversation")
    ).exists()
