"""The org's compliance-recording policy: which 1:1 calls the org's recorder must join.

Off by default. A call is recorded when its caller or its callee is covered: everyone, a
role named in the policy, or a user listed in it. Changes are audited
`call.recording_policy_changed` (one entry per field, before/after) in the same
transaction, like the other policies.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction

from calls.models import RecordingPolicy
from orgs.accounts.models import Role, User
from orgs.audit_events import AuditEvent
from orgs.roles import BUILTIN_ROLES
from orgs.services import audit
from siphera.api_errors import ApiError

MAX_USERS = 1000
FIELDS = ("everyone", "roles", "user_ids")


def get_policy() -> RecordingPolicy:
    policy, _ = RecordingPolicy.objects.get_or_create(pk=1)
    return policy


def policy_payload(policy: RecordingPolicy | None = None) -> dict:
    policy = policy or get_policy()
    return {"everyone": policy.everyone, "roles": policy.roles, "user_ids": policy.user_ids}


def covers(policy: RecordingPolicy, user: User) -> bool:
    return policy.everyone or user.role in policy.roles or str(user.pk) in policy.user_ids


def recording_required(*users: User) -> bool:
    """Whether a call between `users` must be recorded (any one of them is covered)."""
    policy = RecordingPolicy.objects.filter(pk=1).first()
    if policy is None:
        return False
    return any(covers(policy, user) for user in users)


def _invalid(message: str) -> ApiError:
    return ApiError(400, "invalid_policy", message)


def _clean(changes: Any) -> dict:
    if not isinstance(changes, dict):
        raise _invalid("The body is an object.")
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise _invalid(f"Unknown policy fields: {', '.join(unknown)}.")
    clean: dict[str, Any] = {}
    if "everyone" in changes:
        if not isinstance(changes["everyone"], bool):
            raise _invalid("everyone is true or false.")
        clean["everyone"] = changes["everyone"]
    if "roles" in changes:
        roles = changes["roles"]
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise _invalid("roles is a list of role names.")
        known = set(BUILTIN_ROLES) | set(Role.objects.values_list("slug", flat=True))
        unknown_roles = sorted(set(roles) - known)
        if unknown_roles:
            raise _invalid(f"Unknown roles: {', '.join(unknown_roles)}.")
        clean["roles"] = sorted(set(roles))
    if "user_ids" in changes:
        ids = changes["user_ids"]
        if not isinstance(ids, list) or len(ids) > MAX_USERS:
            raise _invalid(f"user_ids is a list of at most {MAX_USERS} user ids.")
        try:
            parsed = sorted({str(uuid.UUID(str(i))) for i in ids})
        except ValueError:
            raise _invalid("user_ids holds user ids.") from None
        found = {str(pk) for pk in User.objects.filter(pk__in=parsed).values_list("pk", flat=True)}
        if found != set(parsed):
            # The same answer for another org's id and one that exists nowhere.
            raise _invalid("user_ids names users this org does not have.")
        clean["user_ids"] = parsed
    return clean


def check_update_policy(changes: Any, *, actor: audit.Actor) -> RecordingPolicy:
    """Validate, then apply; 400 `invalid_policy` for an unknown field, role or user."""
    clean = _clean(changes)
    with transaction.atomic():
        get_policy()
        policy = RecordingPolicy.objects.select_for_update().get(pk=1)
        changed = [name for name, value in clean.items() if getattr(policy, name) != value]
        for name in changed:
            audit.record(
                AuditEvent.CALL_RECORDING_POLICY_CHANGED,
                actor=actor,
                target_type="recording_policy",
                target_id=name,
                data={"field": name, "before": getattr(policy, name), "after": clean[name]},
            )
            setattr(policy, name, clean[name])
        if changed:
            policy.save()
    return policy
