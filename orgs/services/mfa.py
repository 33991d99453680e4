"""Multi-factor authentication: TOTP (RFC 6238) authenticators, one-time recovery codes,
the org's MFA policy, and the second step of a password login.

TOTP: HMAC-SHA1, 6 digits, 30-second steps, a 160-bit seed (RFC 4226 §4), accepted within
`MFA_TOTP_DRIFT_STEPS` steps of now. Each accepted code moves the factor's `last_step`
forward, so a code (or any older one) is never accepted twice. Seeds are stored encrypted
with the key ring (siphera.crypto); recovery codes as sha256 (80 random bits each).

Policy (`OrgPolicy.mfa_policy`): `off`, `required_for_admins` (users whose role grants
`portal.access`) or `required_for_all`. A user who must use MFA but has none set up gets a
401 `mfa_enrollment_required` at login with a short-lived enrolment token that can only
enrol (and, once confirmed, logs the user in).

The MFA policy's functions stay here; the org's other policies (and a combined update of
all of them) are in orgs.services.policy.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import time
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from orgs.accounts.models import OrgPolicy, RecoveryCode, TotpFactor, User
from orgs.audit_events import AuditEvent
from orgs.roles import Perm, has_perm
from orgs.services import audit, tokens
from siphera import crypto, generations, ratelimit
from siphera.api_errors import ApiError

TOTP_DIGITS = 6
TOTP_PERIOD = 30
TOTP_SECRET_BYTES = 20
RECOVERY_CODE_COUNT = 10
# 31 letters and digits without look-alikes (no i, l, o, 0, 1): 16 of them ≈ 79 bits.
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
_RECOVERY_LENGTH = 16
ENROLLMENT_TOKEN_PREFIX = "sph_e_"  # noqa: S105 (a prefix, not a secret)

MFA_POLICIES = tuple(choice for choice, _ in OrgPolicy.MFA_CHOICES)


# --- TOTP (RFC 6238 over RFC 4226) ---------------------------------------------------------


def totp_code(secret: bytes, step: int) -> str:
    """The code for one time step (HOTP with the step as counter, dynamic truncation)."""
    digest = hmac.new(secret, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**TOTP_DIGITS).zfill(TOTP_DIGITS)


def time_step(at: float | None = None) -> int:
    return int((time.time() if at is None else at) // TOTP_PERIOD)


def b32(secret: bytes) -> str:
    return base64.b32encode(secret).decode("ascii").rstrip("=")


def otpauth_uri(secret: bytes, account: str) -> str:
    """The `otpauth://totp/...` URI authenticator apps read from a QR code."""
    issuer = settings.MFA_TOTP_ISSUER
    label = quote(f"{issuer}:{account}", safe="@:")
    query = urlencode(
        {
            "secret": b32(secret),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": TOTP_DIGITS,
            "period": TOTP_PERIOD,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


def _seal(user: User, secret: bytes) -> str:
    # The user id rides inside the ciphertext: a seed copied onto another user's row in
    # the database does not decrypt as theirs.
    return crypto.encrypt(f"{user.pk}:{b32(secret)}")


def _unseal(factor: TotpFactor) -> bytes:
    owner, _, encoded = crypto.decrypt(factor.secret_encrypted).decode().partition(":")
    if owner != str(factor.user_id):
        raise crypto.DecryptionError("TOTP seed belongs to another user")
    return base64.b32decode(encoded + "=" * (-len(encoded) % 8))


def _accept_totp(factor: TotpFactor, code: str) -> bool:
    """Accept `code` if it matches a step near now newer than the last accepted one, and
    record that step atomically (two requests racing with one code: one wins)."""
    secret = _unseal(factor)
    now = time_step()
    drift = settings.MFA_TOTP_DRIFT_STEPS
    for step in range(now - drift, now + drift + 1):
        if factor.last_step is not None and step <= factor.last_step:
            continue
        if hmac.compare_digest(totp_code(secret, step), code):
            newer = Q(last_step__isnull=True) | Q(last_step__lt=step)
            return TotpFactor.objects.filter(newer, pk=factor.pk).update(last_step=step) == 1
    return False


# --- recovery codes ----------------------------------------------------------------------


def _normalize_code(code: str) -> str:
    return "".join(ch for ch in (code or "").lower() if ch.isalnum())


def _hash_code(code: str) -> str:
    return hashlib.sha256(_normalize_code(code).encode()).hexdigest()


def _new_recovery_codes(user: User) -> list[str]:
    """Replace the user's recovery codes with RECOVERY_CODE_COUNT fresh ones (returned
    once, formatted xxxx-xxxx-xxxx-xxxx; only their hashes are kept)."""
    codes = []
    for _ in range(RECOVERY_CODE_COUNT):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_LENGTH))
        codes.append("-".join(raw[i : i + 4] for i in range(0, _RECOVERY_LENGTH, 4)))
    RecoveryCode.objects.filter(user=user).delete()
    RecoveryCode.objects.bulk_create(
        RecoveryCode(user=user, code_hash=_hash_code(code)) for code in codes
    )
    return codes


def recovery_codes_left(user: User) -> int:
    return RecoveryCode.objects.filter(user=user, used_at__isnull=True).count()


def _use_recovery_code(user: User, code: str, *, actor: audit.Actor) -> bool:
    with transaction.atomic():
        used = (
            RecoveryCode.objects.filter(
                user=user, code_hash=_hash_code(code), used_at__isnull=True
            ).update(used_at=timezone.now())
            == 1
        )
        if used:
            audit.record(
                AuditEvent.MFA_RECOVERY_CODE_USED,
                actor=actor.with_user(user),
                target_type="user",
                target_id=user.pk,
                data={"remaining": recovery_codes_left(user)},
            )
    return used


# --- policy ------------------------------------------------------------------------------


def get_org_policy() -> OrgPolicy:
    """The current org's policy row (created with defaults on first use).

    Read on most requests (sign-in rules, the portal session's lifetime), so each process
    caches it until a save or delete of the row bumps the org's policy generation
    (`forget_cached_policy`; siphera.generations). Each caller gets its own copy; a change
    locks the row itself (`select_for_update`)."""
    schema = connection.schema_name
    return _policies.get_or_fetch(schema, f"policy.{schema}", _fetch_policy)


def _fetch_policy() -> OrgPolicy:
    policy, _ = OrgPolicy.objects.get_or_create(pk=1)
    return policy


_policies = generations.GenerationCache()


def forget_cached_policy(**_signal_kwargs) -> None:
    """The current org's policy changed: every process drops its copy (after the
    transaction commits). Connected to OrgPolicy's signals (orgs.apps); a bulk `.update()`
    of the row calls it itself."""
    generations.bump(f"policy.{connection.schema_name}")


def check_set_mfa_policy(mfa_policy: str, *, actor: audit.Actor) -> OrgPolicy:
    """Validate, then set the org's MFA policy (audited `org.policy_changed`)."""
    if mfa_policy not in MFA_POLICIES:
        raise ApiError(
            400, "invalid_policy", f"mfa_policy must be one of: {', '.join(MFA_POLICIES)}."
        )
    return do_set_mfa_policy(mfa_policy, actor=actor)


def do_set_mfa_policy(mfa_policy: str, *, actor: audit.Actor) -> OrgPolicy:
    with transaction.atomic():
        get_org_policy()
        policy = OrgPolicy.objects.select_for_update().get(pk=1)
        before = policy.mfa_policy
        if before != mfa_policy:
            policy.mfa_policy = mfa_policy
            policy.save(update_fields=["mfa_policy", "updated_at"])
            audit.record(
                AuditEvent.ORG_POLICY_CHANGED,
                actor=actor,
                target_type="org_policy",
                target_id="mfa_policy",
                data={"field": "mfa_policy", "before": before, "after": mfa_policy},
            )
    return policy


def required_by_policy(user: User, policy: OrgPolicy | None = None) -> bool:
    """Whether the org's policy makes MFA mandatory for this user."""
    mode = (policy or get_org_policy()).mfa_policy
    if mode == OrgPolicy.MFA_REQUIRED_FOR_ALL:
        return True
    return mode == OrgPolicy.MFA_REQUIRED_FOR_ADMINS and has_perm(user, Perm.PORTAL_ACCESS)


def confirmed_factor(user: User) -> TotpFactor | None:
    return TotpFactor.objects.filter(user=user, confirmed_at__isnull=False).first()


@dataclass(frozen=True)
class MfaStatus:
    enabled: bool
    pending: bool  # enrolment started, not confirmed yet
    confirmed_at: object
    recovery_codes_left: int
    required: bool


def mfa_status(user: User) -> MfaStatus:
    factor = TotpFactor.objects.filter(user=user).first()
    enabled = bool(factor and factor.confirmed_at)
    return MfaStatus(
        enabled=enabled,
        pending=bool(factor and not factor.confirmed_at),
        confirmed_at=factor.confirmed_at if enabled else None,
        recovery_codes_left=recovery_codes_left(user) if enabled else 0,
        required=required_by_policy(user),
    )


# --- login -------------------------------------------------------------------------------


def verify_second_factor(user: User, otp: str, *, actor: audit.Actor) -> str | None:
    """Check a TOTP code or a recovery code of a user with MFA enabled and spend it.

    Returns "totp" or "recovery_code", or None when it is wrong, already used or the
    user has no confirmed authenticator.
    """
    factor = confirmed_factor(user)
    if factor is None:
        return None
    otp = "".join((otp or "").split())
    if len(otp) == TOTP_DIGITS and otp.isdigit():
        return "totp" if _accept_totp(factor, otp) else None
    return "recovery_code" if _use_recovery_code(user, otp, actor=actor) else None


def check_login_second_factor(
    user: User,
    otp: str | None,
    *,
    actor: audit.Actor,
    first: str = "password",
    require: bool = False,
) -> str:
    """The second step of a login whose first factor (`first`: a password, or an SSO
    sign-in "saml"/"oidc") was right.

    Returns the login method for the grant ("password", "password+totp",
    "password+recovery"; "saml+totp"...), or raises a 401: `mfa_enrollment_required` (policy needs
    MFA, the user has none; the body carries `enrollment_token`), `otp_required` (no code
    sent) or `invalid_otp` (wrong or reused code; audited as a failed login), or a 429
    once the user's wrong codes reach MFA_VERIFY_RATE_PER_USER in the window.
    """
    enabled = confirmed_factor(user) is not None
    if not enabled and not (require or required_by_policy(user)):
        return first
    if not enabled:
        token, ttl = issue_enrollment_token(user)
        raise ApiError(
            401,
            "mfa_enrollment_required",
            "Your organisation requires two-factor authentication: set up an authenticator "
            "app with the enrollment_token, then log in with its code.",
            extra={"enrollment_token": token, "expires_in": ttl},
        )
    if not (otp or "").strip():
        raise ApiError(401, "otp_required", "Enter the code from your authenticator app.")
    # Whoever sends a code here knows the first factor, so wrong codes count per user from
    # every address (the password step's backoff is for guessers, orgs.services.auth): the
    # code is the last barrier. One budget with the MFA endpoints' code tries; a code is
    # counted before it is judged (parallel tries cannot slip under) and given back if right.
    tries, reset = ratelimit.reserve(
        "mfa-verify", str(user.pk), window=settings.LOGIN_RATE_WINDOW_SECONDS
    )
    if tries > settings.MFA_VERIFY_RATE_PER_USER:
        raise ratelimit.too_many(reset)
    kind = verify_second_factor(user, otp, actor=actor)
    if kind is None:
        audit.record(
            AuditEvent.MEMBER_LOGIN_FAILED,
            actor=actor,
            target_type="user",
            target_id=user.pk,
            data={"reason": "otp"},
        )
        raise ApiError(401, "invalid_otp", "The code is wrong or was already used.")
    ratelimit.release("mfa-verify", str(user.pk))
    return f"{first}+totp" if kind == "totp" else f"{first}+recovery"


# --- enrolment tokens (login under a policy, before any authenticator exists) ---------------


def _token_key(token_hash: str) -> str:
    return f"mfa-enroll:{connection.schema_name}:{token_hash}"


def issue_enrollment_token(user: User) -> tuple[str, int]:
    """A bearer token that only lets `user` enrol TOTP, valid for minutes (kept in Redis,
    under its hash and the org's schema). It dies with the password it was earned with:
    a new password (or a raised session epoch) makes it unknown."""
    ttl = settings.MFA_ENROLLMENT_TOKEN_TTL_SECONDS
    token, token_hash = tokens.new_secret(ENROLLMENT_TOKEN_PREFIX)
    cache.set(_token_key(token_hash), f"{user.pk}:{user.get_session_auth_hash()}", timeout=ttl)
    return token, ttl


def authenticate_enrollment_token(token: str) -> User | None:
    """The active user of a live enrolment token in the current org, or None."""
    if not token.startswith(ENROLLMENT_TOKEN_PREFIX):
        return None
    stored = cache.get(_token_key(tokens.hash_secret(token)))
    if not stored or ":" not in stored:
        return None
    user_id, auth_hash = stored.split(":", 1)
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None or not constant_time_compare(user.get_session_auth_hash(), auth_hash):
        return None
    return user


# --- enrolment, confirmation, disabling, reset -----------------------------------------------


@dataclass(frozen=True)
class Enrollment:
    secret: str  # base32, for manual entry
    otpauth_uri: str  # for the QR code


def _limit_attempts(user: User) -> None:
    ratelimit.enforce(
        "mfa-verify",
        str(user.pk),
        limit=settings.MFA_VERIFY_RATE_PER_USER,
        window=settings.LOGIN_RATE_WINDOW_SECONDS,
    )


def _lock(user: User) -> None:
    # Enrolment, confirmation, disabling and reset of one user run one at a time, so a
    # restart of enrolment can never overwrite an authenticator confirmed meanwhile.
    User.objects.select_for_update().filter(pk=user.pk).first()


def check_start_enrollment(user: User, *, actor: audit.Actor) -> Enrollment:
    """Start (or restart) TOTP enrolment with a fresh seed. Refused with 409
    `mfa_already_enabled` while a confirmed authenticator exists (disable it first)."""
    secret = secrets.token_bytes(TOTP_SECRET_BYTES)
    with transaction.atomic():
        _lock(user)
        if confirmed_factor(user) is not None:
            raise ApiError(
                409,
                "mfa_already_enabled",
                "Two-factor authentication is already on; disable it first.",
            )
        TotpFactor.objects.update_or_create(
            user=user,
            defaults={
                "secret_encrypted": _seal(user, secret),
                "confirmed_at": None,
                "last_step": None,
            },
        )
        audit.record(
            AuditEvent.MFA_ENROLLMENT_STARTED,
            actor=actor.with_user(user),
            target_type="user",
            target_id=user.pk,
            data={"method": "totp"},
        )
    return Enrollment(secret=b32(secret), otpauth_uri=otpauth_uri(secret, _account(user)))


def pending_enrollment(user: User) -> Enrollment | None:
    """The enrolment `user` started and has not confirmed yet (to show its QR code again,
    e.g. after a mistyped code), or None."""
    factor = TotpFactor.objects.filter(user=user, confirmed_at__isnull=True).first()
    if factor is None:
        return None
    secret = _unseal(factor)
    return Enrollment(secret=b32(secret), otpauth_uri=otpauth_uri(secret, _account(user)))


def _account(user: User) -> str:
    org = getattr(connection, "tenant", None)
    return f"{user.username}@{org.slug}" if getattr(org, "slug", "") else user.username


@dataclass(frozen=True)
class Confirmed:
    recovery_codes: list[str]
    grant: str | None = None  # when enrolled with an enrolment token: the login grant
    expires_in: int | None = None


def check_confirm_enrollment(
    user: User, otp: str, *, actor: audit.Actor, enrollment_token: str | None = None
) -> Confirmed:
    """Activate the pending authenticator with a code from it; returns the recovery codes
    (shown once). 409 `mfa_not_enrolled` without a pending enrolment, 400 `invalid_otp`
    for a wrong code, 429 after too many attempts. Enrolled with an enrolment token (a
    login under an MFA policy), the token is spent and a login grant is issued too."""
    _limit_attempts(user)
    code = "".join((otp or "").split())
    with transaction.atomic():
        _lock(user)
        factor = TotpFactor.objects.filter(user=user, confirmed_at__isnull=True).first()
        if factor is None:
            raise ApiError(409, "mfa_not_enrolled", "Start enrolment first (POST .../enroll).")
        if not (len(code) == TOTP_DIGITS and code.isdigit() and _accept_totp(factor, code)):
            raise ApiError(400, "invalid_otp", "The code is wrong or was already used.")
        TotpFactor.objects.filter(pk=factor.pk).update(confirmed_at=timezone.now())
        codes = _new_recovery_codes(user)
        audit.record(
            AuditEvent.MFA_ENABLED,
            actor=actor.with_user(user),
            target_type="user",
            target_id=user.pk,
            data={"method": "totp", "recovery_codes": len(codes)},
        )
    if enrollment_token is None:
        return Confirmed(recovery_codes=codes)
    from orgs.services.auth import do_issue_grant

    cache.delete(_token_key(tokens.hash_secret(enrollment_token)))
    grant, ttl = do_issue_grant(user, method="password+totp", actor=actor.with_user(user))
    return Confirmed(recovery_codes=codes, grant=grant, expires_in=ttl)


def _require_current_code(user: User, otp: str, *, actor: audit.Actor) -> str:
    _limit_attempts(user)
    if confirmed_factor(user) is None:
        raise ApiError(409, "mfa_not_enabled", "Two-factor authentication is not on.")
    kind = verify_second_factor(user, otp, actor=actor)
    if kind is None:
        raise ApiError(400, "invalid_otp", "The code is wrong or was already used.")
    return kind


def check_disable(user: User, otp: str, *, actor: audit.Actor) -> None:
    """Turn the user's own MFA off, proven with a current TOTP or recovery code. Refused
    (409 `mfa_required_by_policy`) when the org's policy requires MFA for the user."""
    if required_by_policy(user):
        raise ApiError(
            409,
            "mfa_required_by_policy",
            "Your organisation requires two-factor authentication; ask an admin to reset it.",
        )
    kind = _require_current_code(user, otp, actor=actor)
    with transaction.atomic():
        _lock(user)
        TotpFactor.objects.filter(user=user).delete()
        RecoveryCode.objects.filter(user=user).delete()
        audit.record(
            AuditEvent.MFA_DISABLED,
            actor=actor.with_user(user),
            target_type="user",
            target_id=user.pk,
            data={"proof": kind},
        )


def check_regenerate_recovery_codes(user: User, otp: str, *, actor: audit.Actor) -> list[str]:
    """Replace the user's recovery codes (proven with a current code); returns the new
    ones, shown once. The old ones stop working."""
    kind = _require_current_code(user, otp, actor=actor)
    with transaction.atomic():
        codes = _new_recovery_codes(user)
        audit.record(
            AuditEvent.MFA_RECOVERY_CODES_REGENERATED,
            actor=actor.with_user(user),
            target_type="user",
            target_id=user.pk,
            data={"proof": kind, "recovery_codes": len(codes)},
        )
    return codes


def check_reset_mfa(user: User, *, actor: audit.Actor) -> None:
    """An admin resets another user's MFA. Refused (403 `forbidden`) when the user holds
    a permission the acting admin lacks: resetting a more powerful account's second factor
    would be a step towards taking it over. Refused too for the admin's own account: that
    goes through `check_disable`, which asks for a current code, so a stolen session
    cannot drop its user's second factor."""
    acting = actor.user
    if acting is not None and acting.pk == user.pk:
        raise ApiError(
            403,
            "forbidden",
            "Reset your own MFA in your account settings (it asks for a current code).",
        )
    if acting is not None and any(
        has_perm(user, perm) and not has_perm(acting, perm) for perm in Perm
    ):
        raise ApiError(
            403, "forbidden", "You cannot reset MFA of a user with permissions you lack."
        )
    do_reset_mfa(user, actor=actor)


def do_reset_mfa(user: User, *, actor: audit.Actor) -> None:
    """An admin removes a user's authenticator and recovery codes (e.g. a lost phone);
    audited `mfa.reset`. Under an MFA policy the user enrols again at the next login."""
    with transaction.atomic():
        _lock(user)
        had_totp = TotpFactor.objects.filter(user=user, confirmed_at__isnull=False).exists()
        TotpFactor.objects.filter(user=user).delete()
        codes, _ = RecoveryCode.objects.filter(user=user).delete()
        audit.record(
            AuditEvent.MFA_RESET,
            actor=actor,
            target_type="user",
            target_id=user.pk,
            data={"username": user.username, "had_totp": had_totp, "recovery_codes": codes},
        )
