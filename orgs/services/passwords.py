"""Passwords after creation: change your own, forgot-password by mail, an admin sending a
reset mail (run inside the org's schema).

Guarantees:
- Every new password passes the org's policy (`validate_password`: the policy's minimum
  length and the local breached-password list, orgs.accounts.passwords): 400
  `weak_password`.
- A new password ends every other way in: all devices but the one that changed it are
  revoked (their sockets closed), unused login grants, invitations and reset links are
  dropped, and every portal session and MFA enrolment token ends (both are bound to the
  session hash, which covers the password).
- Reset links are `sph_r_...` secrets, stored as sha256, single-use, valid
  PASSWORD_RESET_TTL_SECONDS; asking for one answers the same, in the same time, whether
  or not the account exists, has an e-mail address or may use a password (no user
  enumeration): the worker looks the account up.
- Each step is audited; no password or token is ever logged.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from orgs.accounts.models import Device, Invitation, LoginGrant, PasswordReset, User
from orgs.audit_events import AuditEvent
from orgs.services import audit, devices, mail, policy, tokens
from orgs.services.auth import login_attempt
from orgs.services.users import _check_password, check_can_change, normalize_username
from siphera import ratelimit
from siphera.api_errors import ApiError

RESET_PREFIX = "sph_r_"
_BAD_LINK = "This password reset link is unknown, used or expired: ask for a new one."


def reset_link(base_url: str, token: str) -> str:
    """The portal page a reset mail links to (`base_url`: the org host's own origin)."""
    return base_url.rstrip("/") + reverse("portal:password-reset", args=[token])


def _check_may_use_password(user: User) -> None:
    """403 `login_method_disabled` when the org's policy keeps `user` on single sign-on."""
    if not policy.password_login_allowed(user):
        raise ApiError(
            403,
            "login_method_disabled",
            "Your organisation signs you in with single sign-on: you have no password here.",
        )


# --- change your own -------------------------------------------------------------------------


def check_change_password(
    user: User, *, current: str, new: str, actor: audit.Actor, keep_device: Device | None = None
) -> None:
    """Change `user`'s own password: the current one must be right (401
    `invalid_credentials`, failures throttled like logins: 429), the new one must pass the
    policy (400 `weak_password`) and differ from the current one (400 `same_password`);
    an org that turned passwords off for this user refuses (403 `login_method_disabled`).
    Then `do_set_password`, keeping `keep_device` (the caller's own) signed in."""
    _check_may_use_password(user)
    _check_password(new, user)
    with login_attempt(user.username, actor=actor):
        if not user.check_password(current or ""):
            audit.record(
                AuditEvent.MEMBER_LOGIN_FAILED,
                actor=actor,
                target_type="user",
                target_id=user.pk,
                data={"reason": "password_change"},
            )
            raise ApiError(401, "invalid_credentials", "The current password is wrong.")
    if current == new:
        raise ApiError(400, "same_password", "Choose a password other than the current one.")
    do_set_password(
        user, new, actor=actor, event=AuditEvent.MEMBER_PASSWORD_CHANGED, keep_device=keep_device
    )


def do_set_password(
    user: User,
    password: str,
    *,
    actor: audit.Actor,
    event: AuditEvent,
    keep_device: Device | None = None,
) -> User:
    """Set a valid password and end every other session of `user` in one transaction
    (see the module's guarantees); audited as `event` with how many devices were revoked.
    The user is told by mail (when they have an address) after commit."""
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        locked.set_password(password)
        locked.save(update_fields=["password"])
        revoked = 0
        others = devices.user_devices(locked)
        if keep_device is not None:
            others = others.exclude(pk=keep_device.pk)
        for device in others.select_for_update():
            devices.do_revoke_device(device, actor=actor)
            revoked += 1
        LoginGrant.objects.filter(user=locked, used_at__isnull=True).delete()
        Invitation.objects.filter(user=locked, used_at__isnull=True).delete()
        PasswordReset.objects.filter(user=locked, used_at__isnull=True).delete()
        audit.record(
            event,
            actor=actor,
            target_type="user",
            target_id=locked.pk,
            data={"username": locked.username, "devices_revoked": revoked},
        )
        if locked.email:
            mail.queue_mail(
                "password_changed",
                to=[locked.email],
                context=mail.addressee(locked)
                | {"reset": event == AuditEvent.MEMBER_PASSWORD_RESET},
            )
    return locked


# --- reset links -----------------------------------------------------------------------------


def check_request_reset(identifier: str, *, actor: audit.Actor, base_url: str) -> None:
    """Forgot-password: mail a reset link to the active account(s) whose username or
    e-mail address is `identifier`. Throttled per client IP and per identifier asked for
    (429 + Retry-After), whether or not it exists. Then the worker does the rest
    (`do_request_reset`, queued after commit), so neither the answer nor its timing says
    whether an account matched."""
    from orgs.tasks import request_password_reset
    from siphera.tenancy import send_task

    wanted = normalize_username(identifier)[:254]
    window = settings.PASSWORD_RESET_RATE_WINDOW_SECONDS
    ratelimit.enforce(
        "pwreset-ip", actor.ip or "-", limit=settings.PASSWORD_RESET_RATE_PER_IP, window=window
    )
    ratelimit.enforce(
        "pwreset-account",
        wanted or "-",
        limit=settings.PASSWORD_RESET_RATE_PER_ACCOUNT,
        window=window,
    )
    if not wanted:
        return
    request = {"ip": actor.ip, "user_agent": actor.user_agent[:300]}
    tenant = connection.tenant
    transaction.on_commit(
        lambda: send_task(request_password_reset, wanted, base_url, request, org=tenant)
    )


def do_request_reset(wanted: str, *, actor: audit.Actor, base_url: str) -> int:
    """The worker's half of `check_request_reset`: a link (or the SSO notice) for each
    active account with this username or e-mail address and an address to mail; returns
    how many were sent."""
    found = User.objects.filter(Q(username=wanted) | Q(email__iexact=wanted), is_active=True)
    sent = 0
    for user in found.exclude(email=""):
        do_send_reset(user, actor=actor, base_url=base_url)
        sent += 1
    return sent


def check_admin_reset(user: User, *, actor: audit.Actor, base_url: str) -> int:
    """An admin mails `user` a reset link: 403 when `user` holds a code the admin lacks,
    409 `no_email` without an address, 409 `inactive_user`, 409 `login_method_disabled`
    when the org's policy keeps them from using a password. Returns the link's lifetime
    in seconds. The current password keeps working until the link is used."""
    check_can_change(actor.user, user)
    if not user.is_active:
        raise ApiError(409, "inactive_user", "Reactivate this user first.")
    if not user.email:
        raise ApiError(409, "no_email", "This user has no e-mail address to send the link to.")
    if not policy.password_login_allowed(user):
        raise ApiError(
            409,
            "login_method_disabled",
            "Your organisation's policy signs this user in with single sign-on only.",
        )
    do_send_reset(user, actor=actor, base_url=base_url, by_admin=True)
    return settings.PASSWORD_RESET_TTL_SECONDS


def do_send_reset(user: User, *, actor: audit.Actor, base_url: str, by_admin: bool = False):
    """Issue a fresh reset link for `user` (earlier unused ones stop working) and mail it
    after commit; audited `member.password_reset_sent`. A user who may not use a password
    gets the SSO notice instead, and no link."""
    context = mail.addressee(user)
    with transaction.atomic():
        if not policy.password_login_allowed(user):
            audit.record(
                AuditEvent.MEMBER_PASSWORD_RESET_SENT,
                actor=actor,
                target_type="user",
                target_id=user.pk,
                data={"username": user.username, "link": False, "reason": "sso_only"},
            )
            mail.queue_mail("password_reset_sso", to=[user.email], context=context)
            return
        ttl = settings.PASSWORD_RESET_TTL_SECONDS
        token, token_hash = tokens.new_secret(RESET_PREFIX)
        expires_at = timezone.now() + timedelta(seconds=ttl)
        PasswordReset.objects.filter(user=user, used_at__isnull=True).delete()
        PasswordReset.objects.create(
            user=user,
            token_hash=token_hash,
            expires_at=expires_at,
            requested_by=actor.user.pk if by_admin and actor.user is not None else None,
        )
        audit.record(
            AuditEvent.MEMBER_PASSWORD_RESET_SENT,
            actor=actor,
            target_type="user",
            target_id=user.pk,
            data={"username": user.username, "link": True, "expires_at": expires_at.isoformat()},
        )
        mail.queue_mail(
            "password_reset",
            to=[user.email],
            context=context
            | {"link": reset_link(base_url, token), "minutes": ttl // 60, "by_admin": by_admin},
        )


def access_reset(token: str) -> PasswordReset:
    """The live reset link of an active user for this token, or 400 `invalid_token`."""
    token = token or ""
    row = None
    if token.startswith(RESET_PREFIX) and len(token) < 100:
        row = (
            PasswordReset.objects.select_related("user")
            .filter(token_hash=tokens.hash_secret(token), used_at__isnull=True)
            .first()
        )
    if row is None or row.expires_at <= timezone.now() or not row.user.is_active:
        raise ApiError(400, "invalid_token", _BAD_LINK)
    return row


def check_confirm_reset(token: str, password: str, *, actor: audit.Actor) -> User:
    """Set a new password with a reset link, once: 400 `invalid_token` for a link that is
    unknown, used, expired or of a deactivated user (a second use included), 400
    `weak_password`, 403 `login_method_disabled` when the org turned passwords off for
    the user since. Ends every session of the user (`do_set_password`); audited
    `member.password_reset`. A second factor stays required at the next sign-in."""
    reset = access_reset(token)
    user = reset.user
    _check_may_use_password(user)
    _check_password(password, user)
    with transaction.atomic():
        spent = PasswordReset.objects.filter(pk=reset.pk, used_at__isnull=True).update(
            used_at=timezone.now()
        )
        if spent != 1:  # lost a race with another use of the same link
            raise ApiError(400, "invalid_token", _BAD_LINK)
        do_set_password(
            user, password, actor=actor.with_user(user), event=AuditEvent.MEMBER_PASSWORD_RESET
        )
    return user
