"""Password login -> single-use login grant -> (device registration) device token."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.hashers import check_password, make_password
from django.db import connection, transaction
from django.utils import timezone

from orgs.accounts.models import Device, LoginGrant, User
from orgs.audit_events import AuditEvent
from orgs.roles import Perm, has_perm
from orgs.services import audit, mfa, policy, tokens
from orgs.services.users import normalize_username
from siphera import generations, ratelimit
from siphera.api_errors import ApiError

logger = logging.getLogger(__name__)

# Checked against when the username is unknown, so both paths cost one argon2 verify and
# the answer time does not reveal whether the user exists.
_DUMMY_HASH = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = make_password("not-a-real-password")
    return _DUMMY_HASH


def check_login(
    *, username: str, password: str, actor: audit.Actor, otp: str | None = None
) -> tuple[str, int]:
    """Verify credentials (and the second factor where needed) and issue a login grant:
    returns (grant, expires_in seconds).

    Failures are throttled per client IP and per (username, IP), with a per-username
    backoff (`login_attempt`: 429 + Retry-After), wrong second-factor codes included.
    Wrong password and unknown user get the same `invalid_credentials` answer.
    A user with MFA on, or whom the org's policy requires to use it, must send `otp` (a
    TOTP code or an unused recovery code): 401 `otp_required` / `invalid_otp` /
    `mfa_enrollment_required` otherwise (orgs.services.mfa).
    """
    with login_attempt(username, actor=actor):
        user = check_credentials(username=username, password=password, actor=actor)
        method = _password_second_factor(user, otp, actor=actor)
    return do_issue_grant(user, method=method, actor=actor.with_user(user))


def _password_second_factor(user: User, otp: str | None, *, actor: audit.Actor) -> str:
    """The second factor after a right password; a break-glass login (an owner while
    passwords are off) always needs one."""
    return mfa.check_login_second_factor(
        user, otp, actor=actor, require=policy.is_break_glass(user)
    )


def _record_break_glass(user: User, *, method: str, actor: audit.Actor, via: str) -> None:
    if method.startswith("password") and policy.is_break_glass(user):
        audit.record(
            AuditEvent.BREAK_GLASS_LOGIN,
            actor=actor.with_user(user),
            target_type="user",
            target_id=user.pk,
            data={"method": method, "via": via},
        )
        logger.warning(
            "break-glass password login by owner %s (%s) while password login is off",
            user.username,
            via,
            extra={"event": "break_glass_login", "user_id": str(user.pk)},
        )


# Answers after which a login attempt does not count as a failed guess: the password was
# right (the second factor is still to come, its code tries are spent, or this way of
# signing in is not for them).
_NOT_A_FAILURE = frozenset(
    {
        "otp_required",
        "mfa_enrollment_required",
        "rate_limited",
        "login_method_disabled",
        "portal_access_denied",
    }
)


@contextlib.contextmanager
def ip_attempt(actor: audit.Actor) -> Iterator[None]:
    """The per-client-IP part of `login_attempt`, for a login step that names no username
    (an app exchanging its SSO code): refused with 429 past LOGIN_RATE_PER_IP failures in
    the window; only failures count."""
    ip = actor.ip or "-"
    count, reset = ratelimit.reserve("login-ip", ip, window=settings.LOGIN_RATE_WINDOW_SECONDS)
    if count > settings.LOGIN_RATE_PER_IP:
        raise ratelimit.too_many(reset)
    try:
        yield
    except ApiError as exc:
        if exc.code in _NOT_A_FAILURE:
            ratelimit.release("login-ip", ip)
        raise
    ratelimit.release("login-ip", ip)


@contextlib.contextmanager
def login_attempt(username: str, *, actor: audit.Actor) -> Iterator[None]:
    """Throttle failed logins without letting anyone lock a user out (OWASP
    Authentication Cheat Sheet, "Account lockout"; Synapse's `rc_login`): wrap the check
    of a password and/or a second-factor code for `username` from `actor.ip`.

    Three failure counters per LOGIN_RATE_WINDOW_SECONDS, in the org's schema:
    - per client IP (LOGIN_RATE_PER_IP), whatever the username: password spraying;
    - per (username, client IP) (LOGIN_RATE_PER_USERNAME_IP): one address guessing;
    - per username from anywhere (LOGIN_RATE_PER_USERNAME): not a limit but a backoff.
      Past it, an address that has already failed for this username in the window waits
      (429), while an address that has not still gets its verdict: a botnet gets one
      guess per address, and the user, from an address that did not fail, signs in.
    An over-limit attempt is refused with 429 + Retry-After before anything is checked (so
    it costs no argon2 verify and says nothing about the user). The IP and (username, IP)
    counts are taken before the check, so parallel guesses cannot all slip under them, and
    given back when the attempt did not fail: only failures count; a success also clears
    its address's failures for this username. Unknown usernames count like known ones.
    """
    name = normalize_username(username)[:150] or "-"
    ip = actor.ip or "-"
    pair = f"{name}|{ip}"
    window = settings.LOGIN_RATE_WINDOW_SECONDS
    ip_count, ip_reset = ratelimit.reserve("login-ip", ip, window=window)
    pair_count, pair_reset = ratelimit.reserve("login-user-ip", pair, window=window)
    if ip_count > settings.LOGIN_RATE_PER_IP:
        raise ratelimit.too_many(ip_reset)
    if pair_count > settings.LOGIN_RATE_PER_USERNAME_IP:
        raise ratelimit.too_many(pair_reset)
    if pair_count > 1:  # this address failed (or is trying in parallel): is the name in backoff?
        name_failures, name_reset = ratelimit.peek("login-user", name)
        if name_failures >= settings.LOGIN_RATE_PER_USERNAME:
            raise ratelimit.too_many(min(name_reset, pair_reset))
    try:
        yield
    except ApiError as exc:
        if exc.code not in _NOT_A_FAILURE:
            ratelimit.reserve("login-user", name, window=window)
            raise
        ratelimit.release("login-ip", ip)
        ratelimit.reset("login-user-ip", pair)
        raise
    ratelimit.release("login-ip", ip)
    ratelimit.reset("login-user-ip", pair)


def check_credentials(*, username: str, password: str, actor: audit.Actor) -> User:
    """The active user these credentials belong to, or an ApiError; shared by every
    password login (API and portal). Callers run it inside `login_attempt`, which
    throttles failures (429 + Retry-After).

    Wrong password, inactive user and unknown user get the same 401 `invalid_credentials`
    and cost one argon2 verify each, so neither the answer nor its timing reveals whether
    the user exists. A failed attempt against a real user is audited. When the org's
    policy turned password logins off, the right password gets 403
    `login_method_disabled` (owners excepted: orgs.services.policy).
    """
    username = normalize_username(username)
    user = User.objects.filter(username=username).first()
    if user is None:
        check_password(password or "", _dummy_hash())
        raise ApiError(401, "invalid_credentials", "Wrong username or password.")
    if not user.check_password(password or "") or not user.is_active:
        audit.record(
            AuditEvent.MEMBER_LOGIN_FAILED,
            actor=actor,
            target_type="user",
            target_id=user.pk,
            data={"reason": "password" if user.is_active else "inactive"},
        )
        raise ApiError(401, "invalid_credentials", "Wrong username or password.")
    if not policy.password_login_allowed(user):
        audit.record(
            AuditEvent.MEMBER_LOGIN_FAILED,
            actor=actor,
            target_type="user",
            target_id=user.pk,
            data={"reason": "method_disabled"},
        )
        raise ApiError(
            403,
            "login_method_disabled",
            "Your organisation does not allow signing in with a password; use single sign-on.",
        )
    return user


def check_portal_login(
    *, username: str, password: str, actor: audit.Actor, otp: str | None = None
) -> User:
    """Verify credentials and the second factor for the admin portal and return the user
    to start a session for (audited `portal.logged_in` with the method).

    Same failure throttling, timing and `invalid_credentials` answer as `check_login`. A user
    whose role lacks `portal.access` gets a 403 `portal_access_denied` (audited), so the
    person is told why rather than shown a misleading "wrong password". Then the second
    factor, exactly as `check_login`: 401 `otp_required` (ask for the code and finish
    with `check_portal_second_factor`, so the password is not sent twice), `invalid_otp`,
    or `mfa_enrollment_required` (enrol first, then `do_record_portal_login`).
    """
    with login_attempt(username, actor=actor):
        user = check_credentials(username=username, password=password, actor=actor)
        check_portal_access(user, actor=actor)
        method = _password_second_factor(user, otp, actor=actor)
    do_record_portal_login(user, method=method, actor=actor)
    return user


def check_portal_second_factor(
    user_id, otp: str, *, actor: audit.Actor, first: str = "password"
) -> User:
    """The second step of a portal sign-in whose password was accepted moments ago (the
    view keeps who in the session): check the TOTP or recovery code and return the user.

    Wrong codes count as failed logins (`login_attempt`), exactly as at the password step;
    a user deactivated or stripped of portal access in between is refused like a wrong
    password.
    """
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None:
        raise ApiError(401, "invalid_credentials", "Sign in again.")
    with login_attempt(user.username, actor=actor):
        check_portal_access(user, actor=actor)
        if first == "password":
            method = _password_second_factor(user, otp, actor=actor)
        else:
            method = mfa.check_login_second_factor(user, otp, actor=actor, first=first)
    do_record_portal_login(user, method=method, actor=actor)
    return user


def check_portal_access(user: User, *, actor: audit.Actor) -> None:
    if not has_perm(user, Perm.PORTAL_ACCESS):
        audit.record(
            AuditEvent.PORTAL_ACCESS_DENIED,
            actor=actor.with_user(user),
            target_type="user",
            target_id=user.pk,
            data={"role": user.role},
        )
        raise ApiError(
            403,
            "portal_access_denied",
            "Your role does not include access to the admin portal. "
            "Ask an administrator of your organisation if you need it.",
        )


def do_record_portal_login(user: User, *, actor: audit.Actor, method: str = "password") -> None:
    """Audit the start of a portal session (the session itself is the view's job: it is
    tied to the request)."""
    with transaction.atomic():
        User.objects.filter(pk=user.pk).update(last_login=timezone.now())
        audit.record(
            AuditEvent.PORTAL_LOGGED_IN,
            actor=actor.with_user(user),
            target_type="user",
            target_id=user.pk,
            data={"method": method},
        )
        _record_break_glass(user, method=method, actor=actor, via="portal")


def do_issue_grant(user: User, *, method: str, actor: audit.Actor) -> tuple[str, int]:
    """Issue a single-use login grant for an authenticated user."""
    ttl = settings.LOGIN_GRANT_TTL_SECONDS
    grant, grant_hash = tokens.new_secret(tokens.LOGIN_GRANT_PREFIX)
    with transaction.atomic():
        LoginGrant.objects.create(
            user=user,
            grant_hash=grant_hash,
            method=method,
            expires_at=timezone.now() + timedelta(seconds=ttl),
        )
        User.objects.filter(pk=user.pk).update(last_login=timezone.now())
        audit.record(
            AuditEvent.MEMBER_LOGGED_IN,
            actor=actor,
            target_type="user",
            target_id=user.pk,
            data={"method": method},
        )
        _record_break_glass(user, method=method, actor=actor, via="app")
    return grant, ttl


def do_record_portal_logout(user: User, *, actor: audit.Actor) -> None:
    """Audit the end of a portal session the user ended themselves."""
    audit.record(
        AuditEvent.PORTAL_LOGGED_OUT,
        actor=actor.with_user(user),
        target_type="user",
        target_id=user.pk,
    )


def consume_grant(grant: str) -> User:
    """Mark a login grant used and return its user. Must run inside a transaction; a grant
    that is unknown, expired, already used or whose user is inactive -> 401."""
    row = (
        LoginGrant.objects.select_for_update()
        .select_related("user")
        .filter(grant_hash=tokens.hash_secret(grant or ""))
        .first()
    )
    now = timezone.now()
    if row is None or row.used_at is not None or row.expires_at <= now or not row.user.is_active:
        raise ApiError(401, "invalid_grant", "The login grant is unknown, used or expired.")
    row.used_at = now
    row.save(update_fields=["used_at"])
    return row.user


def authenticate_token(token: str) -> Device | None:
    """The live device a bearer token belongs to in the current org, or None.

    Asked on every API request, so each process caches the answer (by the token's hash)
    until the org's auth generation moves: any save or delete of a user, device or role
    of the org bumps it (`forget_cached_auth`, connected in orgs.apps), so a revoked
    device or a deactivated user is refused at once by the process that made the change
    and within GENERATION_CHECK_SECONDS by the others (siphera.generations). Each request
    gets its own copy of the device and its user."""
    if not token or not token.startswith(tokens.DEVICE_TOKEN_PREFIX):
        return None
    token_hash = tokens.hash_secret(token)
    schema = connection.schema_name

    def fetch() -> Device | None:
        return (
            Device.objects.select_related("user")
            .filter(token_hash=token_hash, revoked_at__isnull=True, user__is_active=True)
            .first()
        )

    return _devices_by_token.get_or_fetch((schema, token_hash), auth_generation(schema), fetch)


class PortalUserBackend(ModelBackend):
    """The user of a signed-in portal session, from the same per-process cache and auth
    generation as device tokens (`authenticate_token`): every portal page asked
    PostgreSQL for it. Django still checks the session's hash against this user (a new
    password or a deactivation saves the user, which drops the cached copy). It checks no
    credentials (`authenticate` is always None): sign-in goes through `check_login`, and
    a session started before this backend existed names Django's ModelBackend, which
    stays listed in AUTHENTICATION_BACKENDS."""

    def authenticate(self, request, **credentials):
        return None

    def get_user(self, user_id):
        schema = connection.schema_name
        user = _users_by_id.get_or_fetch(
            (schema, str(user_id)),
            auth_generation(schema),
            lambda: super(PortalUserBackend, self).get_user(user_id),
        )
        return user


_users_by_id = generations.GenerationCache()


def _copy_device(device: Device) -> Device:
    clone = generations.copy_model(device)
    clone.user = generations.copy_model(device.user)
    return clone


_devices_by_token = generations.GenerationCache(copy_value=_copy_device)


def auth_generation(schema: str) -> str:
    """The generation (siphera.generations) that moves whenever a user, device or role of
    the org `schema` is saved or deleted: cached tokens and users, and live sockets'
    rights (siphera.consumer), are checked again when it has."""
    return f"auth.{schema}"


def forget_cached_auth(**_signal_kwargs) -> None:
    """What any process cached about the current org's tokens, users and roles is stale
    (after the current transaction commits). Connected to every save and delete of a
    User, Device or Role (orgs.apps); a bulk `.update()` of those rows calls it itself."""
    generations.bump(auth_generation(connection.schema_name))


def do_purge_expired_grants(*, older_than: timedelta = timedelta(0)) -> int:
    """Delete login grants that expired (used or not) before now - older_than."""
    deleted, _ = LoginGrant.objects.filter(expires_at__lt=timezone.now() - older_than).delete()
    return deleted
