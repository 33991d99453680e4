"""The org's policies (`accounts.OrgPolicy`, one row per org): MFA, portal session
lifetime, allowed login methods, read receipts, hidden presence, the minimum password
length (applied by orgs.accounts.passwords), the largest group conversation (applied by
messaging.services.conversations).

Every change is audited `org.policy_changed`, one entry per field with before/after, in
the same transaction. Readers call the small functions below rather than the model.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction

from orgs.accounts.models import OrgPolicy
from orgs.accounts.passwords import MIN_LENGTH_CEILING, MIN_LENGTH_FLOOR
from orgs.audit_events import AuditEvent
from orgs.services import audit
from orgs.services.mfa import MFA_POLICIES, get_org_policy
from siphera.api_errors import ApiError

SESSION_MINUTES_MIN = 5
SESSION_MINUTES_MAX = 30 * 24 * 60  # 30 days
# A group's size bounds what one message fans out to (a queue row per member device).
GROUP_MEMBERS_MIN = 2
GROUP_MEMBERS_MAX = 5000
FIELDS = (
    "mfa_policy",
    "session_lifetime_minutes",
    "password_login",
    "sso_login",
    "read_receipts",
    "presence_hidden",
    "password_min_length",
    "group_max_members",
)

__all__ = [
    "FIELDS",
    "check_update_policy",
    "get_org_policy",
    "group_max_members",
    "password_login_allowed",
    "read_receipts_enabled",
    "session_lifetime_seconds",
]


def session_lifetime_seconds(policy: OrgPolicy | None = None) -> int:
    """How long a portal session lasts after sign-in in this org."""
    minutes = (policy or get_org_policy()).session_lifetime_minutes
    return minutes * 60 if minutes else settings.SESSION_COOKIE_AGE


def password_login_allowed(user, policy: OrgPolicy | None = None) -> bool:
    """Whether `user` may log in with a password. Owners always may (break-glass): an
    org that turned passwords off for SSO can still be reached if its IdP fails."""
    return (policy or get_org_policy()).password_login or getattr(user, "is_owner", False)


def is_break_glass(user, policy: OrgPolicy | None = None) -> bool:
    """Whether a password login of `user` is the owners' break-glass way in: the org
    turned passwords off. Such a login always needs TOTP (orgs.services.auth) and is
    audited `member.break_glass_login` and logged as a warning."""
    return not (policy or get_org_policy()).password_login and getattr(user, "is_owner", False)


def read_receipts_enabled() -> bool:
    """Whether read markers are relayed to the other members of a conversation."""
    return get_org_policy().read_receipts


def group_max_members() -> int:
    """The most members a group conversation of this org may have."""
    return get_org_policy().group_max_members


def _clean(changes: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise ApiError(400, "invalid_policy", f"Unknown policy fields: {', '.join(unknown)}.")
    clean: dict[str, Any] = {}
    if "mfa_policy" in changes:
        if changes["mfa_policy"] not in MFA_POLICIES:
            raise ApiError(
                400, "invalid_policy", f"mfa_policy must be one of: {', '.join(MFA_POLICIES)}."
            )
        clean["mfa_policy"] = changes["mfa_policy"]
    if "session_lifetime_minutes" in changes:
        minutes = changes["session_lifetime_minutes"]
        if minutes is not None and (
            isinstance(minutes, bool)
            or not isinstance(minutes, int)
            or not SESSION_MINUTES_MIN <= minutes <= SESSION_MINUTES_MAX
        ):
            raise ApiError(
                400,
                "invalid_policy",
                f"session_lifetime_minutes is {SESSION_MINUTES_MIN}-{SESSION_MINUTES_MAX} "
                "(or null for the server default).",
            )
        clean["session_lifetime_minutes"] = minutes
    if "password_min_length" in changes:
        length = changes["password_min_length"]
        if (
            isinstance(length, bool)
            or not isinstance(length, int)
            or not MIN_LENGTH_FLOOR <= length <= MIN_LENGTH_CEILING
        ):
            raise ApiError(
                400,
                "invalid_policy",
                f"password_min_length is {MIN_LENGTH_FLOOR}-{MIN_LENGTH_CEILING}.",
            )
        clean["password_min_length"] = length
    if "group_max_members" in changes:
        size = changes["group_max_members"]
        if (
            isinstance(size, bool)
            or not isinstance(size, int)
            or not GROUP_MEMBERS_MIN <= size <= GROUP_MEMBERS_MAX
        ):
            raise ApiError(
                400,
                "invalid_policy",
                f"group_max_members is {GROUP_MEMBERS_MIN}-{GROUP_MEMBERS_MAX}.",
            )
        clean["group_max_members"] = size
    for name in ("password_login", "sso_login", "read_receipts", "presence_hidden"):
        if name in changes:
            if not isinstance(changes[name], bool):
                raise ApiError(400, "invalid_policy", f"{name} is true or false.")
            clean[name] = changes[name]
    return clean


def check_update_policy(changes: dict[str, Any], *, actor: audit.Actor) -> OrgPolicy:
    """Validate, then apply policy changes. 400 `invalid_policy` for an unknown field or
    value, 409 `no_login_method` when no login method would be left."""
    clean = _clean(changes)
    return do_update_policy(clean, actor=actor)


def _check_sso_ready(changed: dict[str, Any], after: dict[str, Any]) -> None:
    """SSO sign-in needs an IdP; turning passwords off needs a successful test sign-in
    through it (orgs.sso.provider), so nobody but the owners is locked out by a typo."""
    from orgs.sso import provider

    if changed.get("sso_login") and provider.get_provider() is None:
        raise ApiError(
            409, "sso_not_configured", "Set up an identity provider before turning on SSO."
        )
    if "password_login" in changed and not after["password_login"]:
        if not after["sso_login"]:
            raise ApiError(409, "no_login_method", "Turn single sign-on on first.")
        if not provider.is_tested():
            raise ApiError(
                409,
                "sso_not_tested",
                "Sign in once with the identity provider's test sign-in before turning "
                "passwords off.",
            )


def do_update_policy(changes: dict[str, Any], *, actor: audit.Actor) -> OrgPolicy:
    with transaction.atomic():
        get_org_policy()
        policy = OrgPolicy.objects.select_for_update().get(pk=1)
        changed = {k: v for k, v in changes.items() if getattr(policy, k) != v}
        after = {k: changed.get(k, getattr(policy, k)) for k in ("password_login", "sso_login")}
        if changed and not (after["password_login"] or after["sso_login"]):
            raise ApiError(
                409, "no_login_method", "At least one login method (password or SSO) must stay on."
            )
        _check_sso_ready(changed, after)
        for name, value in changed.items():
            before = getattr(policy, name)
            setattr(policy, name, value)
            audit.record(
                AuditEvent.ORG_POLICY_CHANGED,
                actor=actor,
                target_type="org_policy",
                target_id=name,
                data={"field": name, "before": before, "after": value},
            )
        if changed:
            policy.save()
    return policy
