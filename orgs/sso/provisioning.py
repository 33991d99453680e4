"""Who a person the IdP vouched for is in this org: shared by SAML, OIDC and SCIM.

An SSO sign-in hands over an `Assertion` (protocol-neutral: the immutable subject and every
attribute received). `check_sso_user` finds the user bound to that subject
(`User.external_id`), or binds an existing user by username where the org opted in, or
creates one (just-in-time) where the org allows it; it refuses everything else. It never
binds by e-mail address: whoever controls an address at the IdP would otherwise take over
the Siphera account that happens to share it.

Roles follow the IdP's groups where the org mapped groups to roles (`GroupRole`);
`role_for_groups` is the one rule, used by SSO sign-ins and SCIM group membership alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from django.db import IntegrityError, transaction

from orgs.accounts.models import User
from orgs.audit_events import AuditEvent
from orgs.roles import MEMBER, role_codes
from orgs.services import audit
from orgs.services import roles as role_service
from orgs.services import users as user_service
from orgs.services.auth import forget_cached_auth
from orgs.sso.models import GroupRole, IdentityProvider
from siphera.api_errors import ApiError

MAX_SUBJECT = 255


@dataclass(frozen=True)
class Assertion:
    """What the IdP told us about one person in one sign-in."""

    # The IdP's immutable id of the person (NameID, `sub` or the configured attribute).
    subject: str
    # Everything received, as lists of strings (SAML attributes, OIDC claims flattened).
    attributes: Mapping[str, list[str]] = field(default_factory=dict)
    # The IdP says it did multi-factor authentication (SAML AuthnContextClassRef, OIDC
    # `amr`/`acr`); counts only where the org trusts it (IdentityProvider.trust_idp_mfa).
    mfa: bool = False
    # SAML SessionIndex (for single logout); empty for OIDC.
    session_index: str = ""

    def first(self, name: str) -> str:
        """The first value of attribute `name` ("" when absent or not mapped)."""
        if not name:
            return ""
        values = self.attributes.get(name) or []
        return str(values[0]).strip() if values else ""

    def all(self, name: str) -> list[str]:
        return [str(v) for v in (self.attributes.get(name) or [])] if name else []


# --- group -> role ---------------------------------------------------------------------------


def group_roles() -> list[GroupRole]:
    return list(GroupRole.objects.all())


def role_for_groups(groups: Iterable[str], mapping: list[GroupRole] | None = None) -> str | None:
    """The role the IdP's groups give: the first mapping row (by position) whose group is
    among `groups` (case-insensitive), "member" when rows exist and none matches, None
    when the org maps no groups (roles are managed in Siphera)."""
    rows = group_roles() if mapping is None else mapping
    if not rows:
        return None
    have = {g.strip().casefold() for g in groups}
    for row in rows:
        if row.group.casefold() in have:
            return row.role
    return MEMBER


def check_set_group_roles(entries: list, *, actor: audit.Actor) -> list[GroupRole]:
    """Replace the group -> role mapping with `entries` ([{"group", "role"}, ...], first
    match wins). 400 `invalid_group_roles` for a malformed entry, an unknown role or a
    group named twice; 403 when the acting user could not grant a role named. Audited
    `sso.group_roles_changed` with before/after."""
    if not isinstance(entries, list) or len(entries) > 200:
        raise ApiError(400, "invalid_group_roles", "group_roles is a list of at most 200 entries.")
    clean: list[tuple[str, str]] = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"group", "role"}:
            raise ApiError(
                400, "invalid_group_roles", 'Each entry is {"group": "...", "role": "..."}.'
            )
        group, role = entry["group"], entry["role"]
        if not isinstance(group, str) or not group.strip() or len(group) > 255:
            raise ApiError(400, "invalid_group_roles", "A group name is 1-255 characters.")
        if not isinstance(role, str):
            raise ApiError(400, "invalid_group_roles", "A role is a role's name.")
        group = group.strip()
        if group.casefold() in seen:
            raise ApiError(400, "invalid_group_roles", f"Group {group!r} is named twice.")
        seen.add(group.casefold())
        try:
            role = role_service.check_role_name(role)
        except ApiError as exc:
            raise ApiError(400, "invalid_group_roles", exc.message) from None
        role_service.check_can_grant(actor.user, role_codes(role))
        clean.append((group, role))
    with transaction.atomic():
        before = [{"group": r.group, "role": r.role} for r in GroupRole.objects.all()]
        GroupRole.objects.all().delete()
        rows = GroupRole.objects.bulk_create(
            GroupRole(position=i, group=g, role=r) for i, (g, r) in enumerate(clean)
        )
        after = [{"group": g, "role": r} for g, r in clean]
        if before != after:
            audit.record(
                AuditEvent.SSO_GROUP_ROLES_CHANGED,
                actor=actor,
                target_type="group_roles",
                data={"before": before, "after": after},
            )
    return rows


def do_apply_group_role(user: User, groups: Iterable[str], *, actor: audit.Actor) -> User:
    """Give `user` the role their IdP groups map to (nothing when the org maps no groups or
    the role is already right). The org's last owner keeps the owner role (audited
    `sso.role_not_applied`) rather than the org losing its owner to an IdP change."""
    role = role_for_groups(groups)
    if role is None or role == user.role:
        return user
    if not role_service.role_exists(role):
        # A mapped custom role was deleted since: leave the role alone, say so.
        return _role_not_applied(user, role, "unknown_role", actor)
    try:
        return user_service.do_change_role(user, role, actor=actor)
    except ApiError as exc:
        if exc.code != "last_owner":
            raise
        return _role_not_applied(user, role, "last_owner", actor)


def _role_not_applied(user: User, role: str, reason: str, actor: audit.Actor) -> User:
    audit.record(
        AuditEvent.SSO_ROLE_NOT_APPLIED,
        actor=actor,
        target_type="user",
        target_id=user.pk,
        data={"role": role, "reason": reason},
    )
    return user


# --- the person behind an SSO sign-in ----------------------------------------------------------

_USERNAME_STRIP = re.compile(r"[^a-z0-9_.@+\-]")


def _username_from(assertion: Assertion, idp: IdentityProvider) -> str:
    mapping = idp.attribute_map or {}
    raw = assertion.first(mapping.get("username", "")) or assertion.subject
    name = _USERNAME_STRIP.sub("", user_service.normalize_username(raw))[:150]
    return name.lstrip("_.@+-")


def preview(idp: IdentityProvider, assertion: Assertion) -> dict:
    """What a sign-in with this assertion would do, without doing it (the test page)."""
    mapping = idp.attribute_map or {}
    subject = (assertion.subject or "").strip()
    bound = User.objects.filter(external_id=subject).first() if subject else None
    username = _username_from(assertion, idp)
    if bound is not None:
        outcome = "signs in as " + bound.username + ("" if bound.is_active else " (deactivated)")
    elif (
        idp.link_by_username
        and User.objects.filter(username=username, external_id__isnull=True).exists()
    ):
        outcome = f"binds the existing user {username}"
    elif not idp.jit_provisioning:
        outcome = "refused: nobody is bound to this id and just-in-time creation is off"
    elif User.objects.filter(username=username).exists():
        outcome = f"refused: the username {username} belongs to another account"
    else:
        outcome = f"creates the user {username}"
    return {
        "subject": subject,
        "username": username,
        "email": assertion.first(mapping.get("email", "")),
        "display_name": assertion.first(mapping.get("display_name", "")),
        "groups": assertion.all(mapping.get("groups", "")),
        "role": role_for_groups(assertion.all(mapping.get("groups", ""))),
        "mfa": assertion.mfa,
        "outcome": outcome,
    }


def check_sso_user(idp: IdentityProvider, assertion: Assertion, *, actor: audit.Actor) -> User:
    """The active user this sign-in is for, bound, created or updated as the org's settings
    say. Refusals are 403 with a code the sign-in page shows, each audited
    `member.login_failed` (reason `sso_*`) where a user is known:

    - `sso_no_subject`: the IdP sent no usable subject;
    - `sso_user_unknown`: nobody is bound to the subject and JIT provisioning is off;
    - `sso_username_taken`: JIT would create a username an unbound user already has
      (the admin binds them, or turns on `link_by_username`);
    - `user_inactive`: the bound user is deactivated (an IdP cannot reactivate anyone
      at sign-in; SCIM can).
    """
    subject = (assertion.subject or "").strip()
    if not subject or len(subject) > MAX_SUBJECT:
        raise ApiError(403, "sso_no_subject", "The identity provider sent no usable user id.")
    mapping = idp.attribute_map or {}
    groups = assertion.all(mapping.get("groups", ""))
    email = assertion.first(mapping.get("email", ""))[:254]
    display_name = assertion.first(mapping.get("display_name", ""))[:200]

    user = User.objects.filter(external_id=subject).first()
    if user is None:
        user = _bind_or_create(idp, assertion, subject, email, display_name, groups, actor)
    if not user.is_active:
        audit.record(
            AuditEvent.MEMBER_LOGIN_FAILED,
            actor=actor.with_user(user),
            target_type="user",
            target_id=user.pk,
            data={"reason": "inactive", "method": idp.kind},
        )
        raise ApiError(403, "user_inactive", "Your account in this organisation is deactivated.")
    changes = {}
    if email and email != user.email:
        changes["email"] = email
    if display_name and display_name != user.display_name:
        changes["display_name"] = display_name
    if changes:
        User.objects.filter(pk=user.pk).update(**changes)
        forget_cached_auth()  # a bulk update sends no post_save (orgs.apps)
        for name, value in changes.items():
            setattr(user, name, value)
    return do_apply_group_role(user, groups, actor=actor.with_user(user))


def _bind_or_create(idp, assertion, subject, email, display_name, groups, actor) -> User:
    username = _username_from(assertion, idp)
    if idp.link_by_username and username:
        with transaction.atomic():
            user = (
                User.objects.select_for_update()
                .filter(username=username, external_id__isnull=True)
                .first()
            )
            if user is not None:
                user.external_id = subject
                user.save(update_fields=["external_id"])
                audit.record(
                    AuditEvent.SSO_USER_LINKED,
                    actor=actor.with_user(user),
                    target_type="user",
                    target_id=user.pk,
                    data={"username": user.username, "subject": subject, "method": idp.kind},
                )
                return user
    if not idp.jit_provisioning:
        raise ApiError(
            403,
            "sso_user_unknown",
            "You have no account in this organisation yet; ask an administrator for one.",
        )
    if not username or not user_service.USERNAME_RE.match(username):
        raise ApiError(
            403, "sso_no_subject", "The identity provider sent no usable username for you."
        )
    role = role_for_groups(groups) or MEMBER
    if not role_service.role_exists(role):  # a mapped custom role was deleted since
        role = MEMBER
    try:
        user = user_service.do_create_user(
            username=username,
            password=None,
            role=role,
            display_name=display_name,
            email=email,
            actor=actor if actor.user or actor.label else replace(actor, label=f"sso:{idp.kind}"),
            external_id=subject,
            source=User.SSO,
        )
    except IntegrityError:
        # Either the username belongs to an unbound user, or a concurrent sign-in of the
        # same person bound it first.
        bound = User.objects.filter(external_id=subject).first()
        if bound is not None:
            return bound
        raise ApiError(
            403,
            "sso_username_taken",
            f"The username {username!r} belongs to another account; an administrator must "
            "link it to your single sign-on identity.",
        ) from None
    return user
