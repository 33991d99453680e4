"""Roles of an org: the built-in ones (orgs.roles) and the org's custom roles.

Who may hand out what: an acting user can only create, change or assign a role whose
codes they hold themselves, and only change a user who holds no code they lack — so no
one can raise anyone (themselves included) above their own permissions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from django.db import IntegrityError, connection, transaction

from orgs.accounts.models import Role, User
from orgs.audit_events import AuditEvent
from orgs.roles import BUILTIN_LABELS, BUILTIN_ROLES, Perm, codes_for, parse_codes
from orgs.services import audit
from siphera.api_errors import ApiError, not_found
from siphera.events import notify_on_commit
from siphera.tenancy import group_name

SLUG_RE = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
_VALID = {str(p) for p in Perm}


@dataclass(frozen=True)
class RoleInfo:
    """A role as the API and portal list it."""

    slug: str
    name: str
    description: str
    codes: tuple[str, ...]
    builtin: bool
    users: int = 0


def list_roles(*, with_counts: bool = False) -> list[RoleInfo]:
    """Built-in roles first (in their fixed order), then custom roles by name."""
    counts: dict[str, int] = {}
    if with_counts:
        from django.db.models import Count

        rows = User.objects.filter(is_active=True).values("role").annotate(n=Count("pk"))
        counts = {row["role"]: row["n"] for row in rows}
    out = [
        RoleInfo(
            slug=slug,
            name=BUILTIN_LABELS[slug],
            description="",
            codes=tuple(sorted(codes)),
            builtin=True,
            users=counts.get(slug, 0),
        )
        for slug, codes in BUILTIN_ROLES.items()
    ]
    for role in Role.objects.order_by("name"):
        out.append(role_info(role, counts.get(role.slug, 0)))
    return out


def role_info(role: Role, users: int = 0) -> RoleInfo:
    return RoleInfo(
        slug=role.slug,
        name=role.name,
        description=role.description,
        codes=tuple(sorted(parse_codes(role.codes))),
        builtin=False,
        users=users,
    )


def role_exists(slug: str) -> bool:
    return slug in BUILTIN_ROLES or Role.objects.filter(slug=slug).exists()


def check_role_name(slug: str) -> str:
    """A role name users can be given (built-in or custom), or 400 `invalid_role`."""
    slug = (slug or "").strip()
    if not role_exists(slug):
        known = ", ".join([*BUILTIN_ROLES, *Role.objects.values_list("slug", flat=True)])
        raise ApiError(400, "invalid_role", f"Unknown role {slug!r}; one of: {known}.")
    return slug


def access_custom_role(slug: str) -> Role:
    """A custom role of this org, or 404 (built-in roles cannot be edited)."""
    role = Role.objects.filter(slug=slug).first()
    if role is None:
        raise not_found("No such custom role.")
    return role


def check_can_grant(acting_user, codes) -> None:
    """403 `forbidden` unless `acting_user` (None: the platform) holds every code."""
    if acting_user is None:
        return
    lacking = sorted(set(codes) - codes_for(acting_user))
    if lacking:
        raise ApiError(
            403,
            "forbidden",
            "You cannot grant or change permissions you do not hold yourself.",
            extra={"lacking": lacking},
        )


def _clean_codes(codes) -> list[str]:
    if not isinstance(codes, (list, tuple, set, frozenset)):
        raise ApiError(400, "invalid_codes", "codes is a list of permission codes.")
    unknown = sorted({str(c) for c in codes} - _VALID)
    if unknown:
        raise ApiError(
            400,
            "invalid_codes",
            f"Unknown permission codes: {', '.join(unknown)}.",
            extra={"unknown": unknown},
        )
    return sorted({str(c) for c in codes})


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not 1 <= len(name) <= 100:
        raise ApiError(400, "invalid_name", "A role name is 1-100 characters.")
    return name


MAX_CUSTOM_ROLES = 100


def check_create_role(
    *, slug: str, name: str, codes, description: str = "", actor: audit.Actor
) -> Role:
    """Validate, then create a custom role. 400 on a bad slug/name/code, 409
    `role_exists` for a taken slug (built-in names are taken), 403 when the acting user
    lacks a code the role would grant."""
    slug = (slug or "").strip().lower()
    if not SLUG_RE.match(slug):
        raise ApiError(
            400,
            "invalid_slug",
            "A role id is 2-40 of a-z, 0-9 and _, starting with a letter.",
        )
    name = _clean_name(name)
    clean = _clean_codes(codes)
    check_can_grant(actor.user, clean)
    if slug in BUILTIN_ROLES or Role.objects.filter(slug=slug).exists():
        raise ApiError(409, "role_exists", f"A role {slug!r} already exists.")
    # GET /roles lists every role in one answer: the list stays bounded.
    if Role.objects.count() >= MAX_CUSTOM_ROLES:
        raise ApiError(
            409, "too_many_roles", f"An org has at most {MAX_CUSTOM_ROLES} custom roles."
        )
    try:
        return do_create_role(
            slug=slug, name=name, codes=clean, description=(description or "")[:300], actor=actor
        )
    except IntegrityError:
        raise ApiError(409, "role_exists", f"A role {slug!r} already exists.") from None


def do_create_role(
    *, slug: str, name: str, codes: list[str], description: str, actor: audit.Actor
) -> Role:
    with transaction.atomic():
        role = Role.objects.create(slug=slug, name=name, codes=codes, description=description)
        audit.record(
            AuditEvent.ROLE_CREATED,
            actor=actor,
            target_type="role",
            target_id=slug,
            data={"name": name, "codes": codes},
        )
    return role


def check_update_role(
    role: Role,
    *,
    name: str | None = None,
    codes=None,
    description: str | None = None,
    actor: audit.Actor,
) -> Role:
    """Change a custom role's name, description or codes (audited with before/after).
    The acting user must hold both the old and the new codes. Users holding the role get
    the new codes at once (their live sockets are told)."""
    changes: dict = {}
    if name is not None:
        changes["name"] = _clean_name(name)
    if description is not None:
        changes["description"] = description.strip()[:300]
    if codes is not None:
        changes["codes"] = _clean_codes(codes)
        check_can_grant(actor.user, set(changes["codes"]) | set(parse_codes(role.codes)))
    return do_update_role(role, changes=changes, actor=actor)


def do_update_role(role: Role, *, changes: dict, actor: audit.Actor) -> Role:
    with transaction.atomic():
        role = Role.objects.select_for_update().get(pk=role.pk)
        before = {k: getattr(role, k) for k in changes}
        changed = {k: v for k, v in changes.items() if before[k] != v}
        if not changed:
            return role
        for key, value in changed.items():
            setattr(role, key, value)
        role.save()
        audit.record(
            AuditEvent.ROLE_UPDATED,
            actor=actor,
            target_type="role",
            target_id=role.slug,
            data={"before": {k: before[k] for k in changed}, "after": changed},
        )
        if "codes" in changed:
            notify_permissions_changed(
                User.objects.filter(role=role.slug).values_list("pk", flat=True)
            )
    return role


def check_delete_role(role: Role, *, actor: audit.Actor) -> None:
    """Delete a custom role nobody holds (409 `role_in_use` otherwise, with the count:
    move its users to another role first)."""
    check_can_grant(actor.user, parse_codes(role.codes))
    with transaction.atomic():
        role = Role.objects.select_for_update().get(pk=role.pk)
        holders = User.objects.filter(role=role.slug).count()
        if holders:
            raise ApiError(
                409,
                "role_in_use",
                f"{holders} user(s) still have this role; give them another role first.",
                extra={"users": holders},
            )
        do_delete_role(role, actor=actor)


def do_delete_role(role: Role, *, actor: audit.Actor) -> None:
    with transaction.atomic():
        audit.record(
            AuditEvent.ROLE_DELETED,
            actor=actor,
            target_type="role",
            target_id=role.slug,
            data={"name": role.name, "codes": list(role.codes)},
        )
        role.delete()


def notify_permissions_changed(user_ids) -> None:
    """After commit, tell the live sockets of these users to reload their permissions."""
    schema = connection.schema_name
    for user_id in user_ids:
        notify_on_commit(group_name(schema, "u", user_id), {"type": "user.permissions_changed"})
