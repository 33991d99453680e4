"""An org's users over their lifetime: create or invite, change role, deactivate,
reactivate, and look them up (run inside the org's schema).

Rules every change keeps: the org always has an active owner (409 `last_owner`); no one
changes a user holding a permission they lack, or hands out one (403 `forbidden`, see
orgs.services.roles); no one deactivates themselves (409 `cannot_deactivate_self`).
"""

from __future__ import annotations

import re
from datetime import timedelta

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.urls import reverse
from django.utils import timezone

from orgs import hooks
from orgs.accounts.models import Invitation, LoginGrant, User
from orgs.audit_events import AuditEvent
from orgs.roles import OWNER, codes_for, role_codes
from orgs.services import audit, mail, tokens
from orgs.services import roles as role_service
from siphera.api_errors import ApiError, not_found
from siphera.events import notify_on_commit
from siphera.tenancy import group_name

INVITATION_PREFIX = "sph_i_"
INVITATION_TTL = timedelta(days=7)

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.@+\-]{0,149}$")


def normalize_username(username: str) -> str:
    return (username or "").strip().lower()


def check_create_user(
    *,
    username: str,
    password: str | None,
    role: str = "member",
    display_name: str = "",
    email: str = "",
    actor: audit.Actor,
) -> User:
    """Validate, then create a user. Raises ApiError with nothing written on bad input."""
    username = normalize_username(username)
    if not USERNAME_RE.match(username):
        raise ApiError(
            400,
            "invalid_username",
            "Usernames are 1-150 of a-z, 0-9 and . _ @ + -, starting with a letter or digit.",
        )
    role = role_service.check_role_name(role)
    role_service.check_can_grant(actor.user, role_codes(role))
    if password is not None:
        _check_password(password)
    if User.objects.filter(username=username).exists():
        raise ApiError(409, "username_taken", f"Username {username!r} is already taken.")
    try:
        return do_create_user(
            username=username,
            password=password,
            role=role,
            display_name=display_name,
            email=email,
            actor=actor,
        )
    except IntegrityError:  # lost a race with a concurrent create of the same name
        raise ApiError(409, "username_taken", f"Username {username!r} is already taken.") from None


def do_create_user(
    *,
    username: str,
    password: str | None,
    role: str,
    display_name: str,
    email: str,
    actor: audit.Actor,
    external_id: str | None = None,
    source: str = User.LOCAL,
) -> User:
    """Create the user and its audit entry atomically. Input must be valid. Users made by
    the IdP (SCIM, SSO just-in-time) carry its immutable id and say where they came from;
    a taken username or external id raises IntegrityError (the caller says which)."""
    with transaction.atomic():
        user = User(
            username=username,
            role=role,
            display_name=display_name,
            email=email,
            external_id=external_id,
            source=source,
        )
        if password is None:
            user.set_unusable_password()
        else:
            user.set_password(password)
        user.save()
        data = {"username": username, "role": role}
        if source != User.LOCAL:
            data["source"] = source
        audit.record(
            AuditEvent.MEMBER_CREATED,
            actor=actor,
            target_type="user",
            target_id=user.pk,
            data=data,
        )
    return user


def _check_password(password: str, user: User | None = None) -> None:
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ApiError(400, "weak_password", " ".join(exc.messages)) from None


# --- invitations ----------------------------------------------------------------------------


def check_invite_user(
    *,
    username: str,
    role: str = "member",
    display_name: str = "",
    email: str = "",
    actor: audit.Actor,
    base_url: str = "",
) -> tuple[User, str]:
    """Create a user without a password and a single-use invitation for them to set one
    (valid INVITATION_TTL). Returns the user and the invitation token, shown once: the
    admin passes the link on, and when the user has an e-mail address and `base_url` (the
    org host's origin) is given it is also mailed to them (orgs.services.mail, after
    commit). Same validation as `check_create_user`."""
    with transaction.atomic():
        user = check_create_user(
            username=username,
            password=None,
            role=role,
            display_name=display_name,
            email=email,
            actor=actor,
        )
        token = do_issue_invitation(user, actor=actor)
        if user.email and base_url:
            mail.queue_mail(
                "invitation",
                to=[user.email],
                context=mail.addressee(user)
                | {
                    "link": base_url.rstrip("/") + reverse("portal:invitation", args=[token]),
                    "days": INVITATION_TTL.days,
                },
            )
    return user, token


def do_issue_invitation(user: User, *, actor: audit.Actor) -> str:
    """A fresh invitation for `user` (earlier unused ones stop working)."""
    token, token_hash = tokens.new_secret(INVITATION_PREFIX)
    expires_at = timezone.now() + INVITATION_TTL
    with transaction.atomic():
        Invitation.objects.filter(user=user, used_at__isnull=True).delete()
        Invitation.objects.create(user=user, token_hash=token_hash, expires_at=expires_at)
        audit.record(
            AuditEvent.MEMBER_INVITED,
            actor=actor,
            target_type="user",
            target_id=user.pk,
            data={"username": user.username, "expires_at": expires_at.isoformat()},
        )
    return token


def access_invitation(token: str) -> Invitation:
    """The live invitation of an active user for this token, or 404."""
    row = (
        Invitation.objects.select_related("user")
        .filter(token_hash=tokens.hash_secret(token or ""), used_at__isnull=True)
        .first()
    )
    if row is None or row.expires_at <= timezone.now() or not row.user.is_active:
        raise not_found("This invitation link is unknown, used or expired.")
    return row


def check_accept_invitation(token: str, password: str, *, actor: audit.Actor) -> User:
    """Set the invited user's password and spend the invitation (404 when it is not
    live, 400 `weak_password`)."""
    invitation = access_invitation(token)
    _check_password(password, invitation.user)
    with transaction.atomic():
        spent = Invitation.objects.filter(pk=invitation.pk, used_at__isnull=True).update(
            used_at=timezone.now()
        )
        if spent != 1:
            raise not_found("This invitation link is unknown, used or expired.")
        user = User.objects.select_for_update().get(pk=invitation.user_id)
        user.set_password(password)
        user.save(update_fields=["password"])
        audit.record(
            AuditEvent.MEMBER_INVITATION_ACCEPTED,
            actor=actor.with_user(user),
            target_type="user",
            target_id=user.pk,
        )
    return user


# --- role, deactivation, reactivation --------------------------------------------------------


def _user_group(user: User) -> str:
    return group_name(connection.schema_name, "u", user.pk)


def check_can_change(acting_user, user: User) -> None:
    """403 `forbidden` unless the acting user (None: the platform) holds every code `user`
    holds (as of their role): nobody changes, resets or signs out a more powerful user.
    Anyone passes for themselves."""
    if acting_user is None:
        return
    lacking = sorted(role_codes(user.role) - codes_for(acting_user))
    if lacking:
        raise ApiError(
            403,
            "forbidden",
            f"{user.username} holds permissions you lack: you cannot change, reset or sign "
            "out this user.",
            extra={"lacking": lacking},
        )


def can_change(acting_user, user: User) -> bool:
    """Whether check_can_change lets `acting_user` act on `user` (for what a page offers)."""
    try:
        check_can_change(acting_user, user)
    except ApiError:
        return False
    return True


def _ensure_another_owner(user: User) -> None:
    """409 `last_owner` if `user` is the org's only active owner. Locks the owners' rows,
    so two admins demoting the last two owners at once cannot both succeed."""
    if user.role != OWNER or not user.is_active:
        return
    owners = list(
        User.objects.select_for_update()
        .filter(role=OWNER, is_active=True)
        .values_list("pk", flat=True)
    )
    if [pk for pk in owners if pk != user.pk]:
        return
    raise ApiError(
        409,
        "last_owner",
        "This is the organisation's last owner: make another user owner first.",
    )


def check_change_role(user: User, role: str, *, actor: audit.Actor) -> User:
    """Give `user` another role (built-in or custom). 400 `invalid_role`, 403 when the
    acting user lacks a code of the old or new role, 409 `last_owner`. Audited
    `member.role_changed` with before/after; live sockets reload their permissions."""
    role = role_service.check_role_name(role)
    check_can_change(actor.user, user)
    role_service.check_can_grant(actor.user, role_codes(role))
    return do_change_role(user, role, actor=actor)


def do_change_role(user: User, role: str, *, actor: audit.Actor) -> User:
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        before = locked.role
        if before == role:
            return locked
        if before == OWNER:
            _ensure_another_owner(locked)
        locked.role = role
        locked.save(update_fields=["role"])
        audit.record(
            AuditEvent.MEMBER_ROLE_CHANGED,
            actor=actor,
            target_type="user",
            target_id=locked.pk,
            data={"username": locked.username, "before": before, "after": role},
        )
        role_service.notify_permissions_changed([locked.pk])
    return locked


def check_deactivate_user(user: User, *, actor: audit.Actor) -> User:
    """Deactivate a user: 403 when they hold a code the acting user lacks, 409
    `cannot_deactivate_self`, 409 `last_owner`. Idempotent for an inactive user."""
    if actor.user is not None and actor.user.pk == user.pk:
        raise ApiError(409, "cannot_deactivate_self", "You cannot deactivate yourself.")
    check_can_change(actor.user, user)
    return do_deactivate_user(user, actor=actor)


def do_deactivate_user(user: User, *, actor: audit.Actor) -> User:
    """In one transaction: the user can no longer log in, every device is revoked (tokens
    dead, keys deleted), unused login grants and invitations are dropped, and every portal
    session ends (`session_epoch`). After commit every live socket of the user gets a
    `user.deactivated` frame and is closed with 4403. The apps above are told
    (orgs.hooks.user_deactivated: a group they were the only active admin of gets
    another). Audited `member.deactivated`."""
    from orgs.services.devices import do_revoke_user_devices

    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        if not locked.is_active:
            return locked
        _ensure_another_owner(locked)
        locked.is_active = False
        locked.session_epoch += 1
        locked.save(update_fields=["is_active", "session_epoch"])
        revoked = do_revoke_user_devices(
            locked, actor=actor, notify=False, reason="user_deactivated"
        )
        grants, _ = LoginGrant.objects.filter(user=locked, used_at__isnull=True).delete()
        Invitation.objects.filter(user=locked, used_at__isnull=True).delete()
        hooks.user_deactivated(locked, actor=actor)
        audit.record(
            AuditEvent.MEMBER_DEACTIVATED,
            actor=actor,
            target_type="user",
            target_id=locked.pk,
            data={"username": locked.username, "devices_revoked": revoked},
        )
        notify_on_commit(_user_group(locked), {"type": "user.deactivated"})
    return locked


def check_reactivate_user(user: User, *, actor: audit.Actor) -> User:
    """Let a deactivated user log in again (their devices stay revoked: each registers
    anew). 403 when they hold a code the acting user lacks. Idempotent."""
    check_can_change(actor.user, user)
    return do_reactivate_user(user, actor=actor)


def do_reactivate_user(user: User, *, actor: audit.Actor) -> User:
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        if locked.is_active:
            return locked
        locked.is_active = True
        locked.save(update_fields=["is_active"])
        audit.record(
            AuditEvent.MEMBER_REACTIVATED,
            actor=actor,
            target_type="user",
            target_id=locked.pk,
            data={"username": locked.username},
        )
    return locked


def permissions_of(user: User) -> list[str]:
    return sorted(codes_for(user))


def access_user(user_id) -> User:
    """The user with this id in the current org, or a 404 (also for malformed ids)."""
    try:
        return User.objects.get(pk=user_id)
    except (User.DoesNotExist, ValidationError, ValueError):
        raise not_found("No such user.") from None
