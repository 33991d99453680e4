"""SCIM Groups: the IdP's groups and their members (users of this org).

A group's name is what orgs.sso's group -> role map (GroupRole) matches: after every
membership change, rename or delete, each affected member gets the role of their groups
through `orgs.sso.provisioning.do_apply_group_role` (nothing happens when the org maps no
groups). Names are unique regardless of case. Every change is audited with the IdP as the
actor.
"""

from __future__ import annotations

import uuid

from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from orgs.accounts.models import User
from orgs.audit_events import AuditEvent
from orgs.scim import documents, schema
from orgs.scim.errors import invalid_value, not_found, uniqueness
from orgs.scim.filters import matches, narrowing
from orgs.scim.models import ScimGroup
from orgs.scim.users import check_if_match, etag, users_by_ids
from orgs.services import audit
from orgs.sso.models import GroupRole
from orgs.sso.provisioning import do_apply_group_role

AUDIT_NAMES = 50  # usernames listed per audit entry (the counts are always complete)


def all_groups() -> QuerySet:
    return ScimGroup.objects.all().order_by("created_at", "pk")


def access_group(group_id: str) -> ScimGroup:
    try:
        pk = uuid.UUID(str(group_id))
    except ValueError:
        raise not_found(f"No Group {group_id}.") from None
    group = ScimGroup.objects.filter(pk=pk).first()
    if group is None:
        raise not_found(f"No Group {group_id}.")
    return group


def _members(group: ScimGroup) -> list[tuple[str, str]]:
    return list(group.members.order_by("username").values_list("pk", "username"))


def writable_doc(group: ScimGroup) -> dict:
    doc: dict = {"displayName": group.display_name}
    if group.external_id:
        doc["externalId"] = group.external_id
    members = [{"value": str(pk)} for pk, _ in _members(group)]
    if members:
        doc["members"] = members
    return doc


def render(group: ScimGroup, base: str, *, with_members: bool = True) -> dict:
    doc: dict = {"schemas": [schema.GROUP], "id": str(group.pk), "displayName": group.display_name}
    if group.external_id:
        doc["externalId"] = group.external_id
    if with_members:
        members = [
            {"value": str(pk), "$ref": f"{base}/Users/{pk}", "type": "User"}
            for pk, _ in _members(group)
        ]
        if members:
            doc["members"] = members
    doc["meta"] = {
        "resourceType": "Group",
        "created": group.created_at.isoformat(),
        "lastModified": group.updated_at.isoformat(),
        "location": f"{base}/Groups/{group.pk}",
        "version": etag(group.version),
    }
    return doc


# --- list and filter -------------------------------------------------------------------------

_LOOKUPS = {"eq": "exact", "co": "contains", "sw": "startswith", "ew": "endswith"}


def _member_q(value) -> Q:
    try:
        return Q(members__pk=uuid.UUID(str(value)))
    except ValueError:
        return Q(pk__in=[])


def _q(node) -> Q | None:
    kind = node[0]
    if kind in ("and", "or"):
        left, right = _q(node[1]), _q(node[2])
        if left is None or right is None:
            return None
        return left & right if kind == "and" else left | right
    if kind == "not":
        inner = _q(node[1])
        return None if inner is None else ~inner
    if kind == "vp" and [p.lower() for p in node[1]] == ["members"]:
        inner = node[2]
        if inner[0] == "cmp" and inner[1] == ("value",) and inner[2] == "eq":
            return Q(pk__in=ScimGroup.objects.filter(_member_q(inner[3])).values("pk"))
        return None
    if kind != "cmp":
        return None
    _, path, op, value = node
    name = ".".join(path).lower()
    if name == "displayname" and isinstance(value, str) and op in _LOOKUPS:
        return Q(**{f"name_key__{_LOOKUPS[op]}": value.casefold()})
    if name == "externalid" and isinstance(value, str) and op == "eq":
        return Q(external_id=value)
    if name == "id" and isinstance(value, str) and op == "eq":
        try:
            return Q(pk=uuid.UUID(value))
        except ValueError:
            return Q(pk__in=[])
    if name in ("members.value", "members") and isinstance(value, str) and op == "eq":
        return Q(pk__in=ScimGroup.objects.filter(_member_q(value)).values("pk"))
    return None


def search(node, start: int, count: int, base: str, *, with_members: bool) -> tuple[int, list]:
    groups = all_groups()
    q = _q(node) if node is not None else Q()
    if q is not None:
        groups = groups.filter(q).distinct()
        total = groups.count()
        page = list(groups[start - 1 : start - 1 + count]) if count else []
        return total, [render(g, base, with_members=with_members) for g in page]
    narrowed = narrowing(node, _q)
    if narrowed is not None:
        groups = groups.filter(narrowed).distinct()
    hits = [doc for g in groups.iterator(chunk_size=200) if matches(node, doc := render(g, base))]
    if not with_members:
        for doc in hits:
            doc.pop("members", None)
    return len(hits), hits[start - 1 : start - 1 + count] if count else []


# --- writes ----------------------------------------------------------------------------------


def _clean_group(doc: dict) -> tuple[str, str | None, dict[str, User]]:
    name = (doc.get("displayName") or "").strip()
    if not name:
        raise invalid_value("displayName is required.")
    if len(name) > 255:
        raise invalid_value("displayName is at most 255 characters.")
    external_id = doc.get("externalId") or None
    if external_id is not None and len(external_id) > 255:
        raise invalid_value("externalId is at most 255 characters.")
    for member in doc.get("members") or []:
        if str(member.get("type") or "User").lower() != "user":
            raise invalid_value("Members are users (nested groups are not supported).")
        if not member.get("value"):
            raise invalid_value("Each member has a value (a User id).")
    members = users_by_ids(str(m["value"]).lower() for m in doc.get("members") or [])
    return name, external_id, members


def _check_unique(name: str, external_id: str | None, pk=None) -> None:
    others = ScimGroup.objects.exclude(pk=pk) if pk else ScimGroup.objects.all()
    if others.filter(name_key=name.casefold()).exists():
        raise uniqueness(f"A group named {name!r} exists already.")
    if external_id and others.filter(external_id=external_id).exists():
        raise uniqueness(f"externalId {external_id!r} belongs to another group.")


def _apply_roles(user_ids, *, actor: audit.Actor) -> None:
    """Each user's role from the names of all their groups (GroupRole), if the org maps
    groups to roles at all."""
    if not user_ids or not GroupRole.objects.exists():
        return
    for user in User.objects.filter(pk__in=user_ids, is_active=True).prefetch_related(
        "scim_groups"
    ):
        do_apply_group_role(user, [g.display_name for g in user.scim_groups.all()], actor=actor)


def _names(users) -> list[str]:
    return sorted(u.username for u in users)[:AUDIT_NAMES]


def check_create_group(body: dict, *, actor: audit.Actor) -> ScimGroup:
    """Create a group (with its members) from a SCIM POST body; 400 on bad input or an
    unknown member, 409 uniqueness for a taken name or externalId."""
    name, external_id, members = _clean_group(documents.clean(schema.GROUPS, body))
    _check_unique(name, external_id)
    try:
        with transaction.atomic():
            group = ScimGroup.objects.create(
                display_name=name,
                name_key=name.casefold(),
                external_id=external_id,
                updated_at=timezone.now(),
            )
            group.members.add(*members.values())
            audit.record(
                AuditEvent.SCIM_GROUP_CREATED,
                actor=actor,
                target_type="scim_group",
                target_id=group.pk,
                data={
                    "display_name": name,
                    "external_id": external_id,
                    "members": len(members),
                    "added": _names(members.values()),
                },
            )
            _apply_roles([u.pk for u in members.values()], actor=actor)
    except IntegrityError:
        raise uniqueness(f"A group named {name!r} exists already.") from None
    return group


def check_update_group(
    group: ScimGroup, new_doc: dict, *, actor: audit.Actor, if_match: str | None = None
) -> ScimGroup:
    """Make the group match `new_doc` (a PUT body or a patched document)."""
    name, external_id, members = _clean_group(documents.clean(schema.GROUPS, new_doc))
    try:
        with transaction.atomic():
            locked = ScimGroup.objects.select_for_update().get(pk=group.pk)
            check_if_match(if_match, locked.version)
            _check_unique(name, external_id, pk=locked.pk)
            before = set(locked.members.values_list("pk", flat=True))
            after = {u.pk for u in members.values()}
            added = [u for u in members.values() if u.pk not in before]
            removed_ids = before - after
            renamed = name != locked.display_name
            if not (added or removed_ids or renamed or external_id != locked.external_id):
                return locked
            removed = list(User.objects.filter(pk__in=removed_ids))
            data = {"display_name": name}
            if renamed:
                data["renamed_from"] = locked.display_name
            if external_id != locked.external_id:
                data["external_id"] = external_id
            locked.display_name, locked.name_key = name, name.casefold()
            locked.external_id = external_id
            locked.version += 1
            locked.updated_at = timezone.now()
            locked.save()
            if added:
                locked.members.add(*added)
            if removed_ids:
                locked.members.remove(*removed_ids)
            data.update(
                added_count=len(added),
                removed_count=len(removed),
                added=_names(added),
                removed=_names(removed),
            )
            audit.record(
                AuditEvent.SCIM_GROUP_UPDATED,
                actor=actor,
                target_type="scim_group",
                target_id=locked.pk,
                data=data,
            )
            affected = after | removed_ids if renamed else {u.pk for u in added} | removed_ids
            _apply_roles(affected, actor=actor)
    except IntegrityError:
        raise uniqueness(f"A group named {name!r} exists already.") from None
    return locked


def check_patch_group(group: ScimGroup, body: dict, *, actor: audit.Actor, if_match=None):
    """Apply a PatchOp to the group as it is under the row lock: IdPs send membership
    changes of one group in parallel, and none may undo another."""
    with transaction.atomic():
        locked = ScimGroup.objects.select_for_update().get(pk=group.pk)
        doc = documents.apply_patch(schema.GROUPS, writable_doc(locked), body)
        return check_update_group(locked, doc, actor=actor, if_match=if_match)


def check_delete_group(group: ScimGroup, *, actor: audit.Actor, if_match: str | None = None):
    with transaction.atomic():
        locked = ScimGroup.objects.select_for_update().get(pk=group.pk)
        check_if_match(if_match, locked.version)
        member_ids = list(locked.members.values_list("pk", flat=True))
        audit.record(
            AuditEvent.SCIM_GROUP_DELETED,
            actor=actor,
            target_type="scim_group",
            target_id=locked.pk,
            data={"display_name": locked.display_name, "members": len(member_ids)},
        )
        locked.delete()
        _apply_roles(member_ids, actor=actor)
