"""SCIM Users: the org's accounts.User rows as the IdP sees and changes them.

Binding rules (shared with SAML/OIDC, docs/scim.md): `userName` is `User.username`
(lower-cased, matched case-insensitively); `externalId` is `User.external_id`, which SSO
sign-ins bind to; with no externalId the username is bound there instead, so an SSO
subject equal to the userName finds the same person. Users SCIM creates have
`source="scim"` and no usable password. `active: false` deactivates through
orgs.services.users (devices revoked, grants and portal sessions dead, sockets closed).
DELETE deactivates too, frees the username and external id, and hides the user from SCIM
(404 from then on); the account and its history stay for the org's records.

Every change is audited with the IdP as the actor (`scim:<token label>`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from orgs.accounts.models import User
from orgs.audit_events import AuditEvent
from orgs.roles import MEMBER
from orgs.scim import documents, schema
from orgs.scim.errors import ScimError, invalid_value, not_found, uniqueness
from orgs.scim.filters import matches, narrowing
from orgs.scim.models import ScimGroup, ScimUser
from orgs.services import audit
from orgs.services import roles as role_service
from orgs.services import users as user_service
from orgs.services.auth import forget_cached_auth
from orgs.sso.provisioning import role_for_groups
from siphera.api_errors import ApiError

CORE_KEYS = ("userName", "externalId", "active")
KEPT_AFTER_DELETE = ("displayName", "name")


def etag(version: int) -> str:
    return f'W/"{version}"'


def visible_users() -> QuerySet:
    """Every user SCIM shows: all of the org's users except those a SCIM DELETE removed."""
    return (
        User.objects.filter(Q(scim__isnull=True) | Q(scim__deleted_at__isnull=True))
        .select_related("scim")
        .prefetch_related("scim_groups")
        .order_by("created_at", "pk")
    )


def access_user(user_id: str) -> User:
    """The visible user with this SCIM id, or a SCIM 404 (also for malformed ids)."""
    try:
        pk = uuid.UUID(str(user_id))
    except ValueError:
        raise not_found(f"No User {user_id}.") from None
    user = visible_users().filter(pk=pk).first()
    if user is None:
        raise not_found(f"No User {user_id}.")
    return user


def _scim_row(user: User) -> ScimUser | None:
    try:
        return user.scim
    except ScimUser.DoesNotExist:
        return None


def _data(user: User, row: ScimUser | None) -> dict:
    if row is not None:
        return dict(row.data)
    data: dict = {}  # a user SCIM never wrote: what Siphera knows
    if user.display_name:
        data["displayName"] = user.display_name
    if user.email:
        data["emails"] = [{"value": user.email, "type": "work", "primary": True}]
    return data


def writable_doc(user: User) -> dict:
    """The user's SCIM attributes an IdP may write (input of PUT/PATCH)."""
    row = _scim_row(user)
    doc = {"userName": user.username, "active": user.is_active}
    if user.external_id and not (row is not None and row.external_id_from_username):
        doc["externalId"] = user.external_id
    doc.update(_data(user, row))
    return doc


def render(user: User, base: str) -> dict:
    """The full SCIM User resource."""
    row = _scim_row(user)
    doc = writable_doc(user)
    groups = [
        {
            "value": str(g.pk),
            "$ref": f"{base}/Groups/{g.pk}",
            "display": g.display_name,
            "type": "direct",
        }
        for g in user.scim_groups.all()
    ]
    if groups:
        doc["groups"] = groups
    version = row.version if row is not None else 1
    modified = row.updated_at if row is not None else user.created_at
    schemas = [schema.USER] + ([schema.ENTERPRISE] if schema.ENTERPRISE in doc else [])
    return {
        "schemas": schemas,
        "id": str(user.pk),
        **doc,
        "meta": {
            "resourceType": "User",
            "created": user.created_at.isoformat(),
            "lastModified": modified.isoformat(),
            "location": f"{base}/Users/{user.pk}",
            "version": etag(version),
        },
    }


def version_of(user: User) -> int:
    row = _scim_row(user)
    return row.version if row is not None else 1


# --- list and filter -------------------------------------------------------------------------

_STRING_LOOKUPS = {"eq": "exact", "co": "contains", "sw": "startswith", "ew": "endswith"}


def _q(node) -> Q | None:
    """The filter as SQL where it only names columns (userName, id, externalId, active),
    else None (evaluated in Python)."""
    kind = node[0]
    if kind in ("and", "or"):
        left, right = _q(node[1]), _q(node[2])
        if left is None or right is None:
            return None
        return left & right if kind == "and" else left | right
    if kind == "not":
        inner = _q(node[1])
        return None if inner is None else ~inner
    if kind not in ("cmp", "pr") or len(node[1]) != 1:
        return None
    name = node[1][0].lower()
    derived = Q(scim__external_id_from_username=True)
    if kind == "pr":
        # Not Q(): an empty Q vanishes when combined (Q() | x is x), `pr` must match all.
        return {
            "username": Q(pk__isnull=False),
            "id": Q(pk__isnull=False),
            "externalid": Q(external_id__isnull=False) & ~derived,
        }.get(name)
    _, _, op, value = node
    if name == "username" and isinstance(value, str) and op in _STRING_LOOKUPS:
        return Q(**{f"username__{_STRING_LOOKUPS[op]}": user_service.normalize_username(value)})
    if name == "username" and isinstance(value, str) and op == "ne":
        return ~Q(username=user_service.normalize_username(value))
    if name == "externalid" and isinstance(value, str) and op == "eq":
        return Q(external_id=value) & ~derived
    if name == "id" and isinstance(value, str) and op in ("eq", "ne"):
        try:
            q = Q(pk=uuid.UUID(value))
        except ValueError:
            q = Q(pk__in=[])
        return q if op == "eq" else ~q
    if name == "active" and isinstance(value, bool) and op in ("eq", "ne"):
        return Q(is_active=value == (op == "eq"))
    return None


def search(node, start: int, count: int, base: str) -> tuple[int, list[dict]]:
    """(totalResults, the page of rendered users) for a parsed filter (or None)."""
    users = visible_users()
    q = _q(node) if node is not None else Q()
    if q is not None:
        users = users.filter(q)
        total = users.count()
        page = list(users[start - 1 : start - 1 + count]) if count else []
        return total, [render(u, base) for u in page]
    narrowed = narrowing(node, _q)
    if narrowed is not None:
        users = users.filter(narrowed).distinct()
    hits = [doc for u in users.iterator(chunk_size=500) if matches(node, doc := render(u, base))]
    return len(hits), hits[start - 1 : start - 1 + count] if count else []


# --- writes ----------------------------------------------------------------------------------


def _display_name(data: dict) -> str:
    if data.get("displayName"):
        return data["displayName"]
    name = data.get("name") or {}
    if name.get("formatted"):
        return name["formatted"]
    return " ".join(p for p in (name.get("givenName"), name.get("familyName")) if p)


def _email(data: dict) -> str:
    emails = [e for e in data.get("emails") or [] if e.get("value")]
    primary = next((e for e in emails if e.get("primary") is True), emails[0] if emails else None)
    return (primary or {}).get("value", "")[:254]


def _clean_user(doc: dict) -> tuple[str, str | None, bool, dict]:
    """(username, externalId or None, active, the rest) of a cleaned document; 400/409
    for a missing or malformed userName."""
    raw = doc.get("userName")
    if not isinstance(raw, str) or not raw.strip():
        raise ScimError(400, "invalidValue", "userName is required.")
    username = user_service.normalize_username(raw)
    if not user_service.USERNAME_RE.match(username):
        raise invalid_value(
            "userName is 1-150 of a-z, 0-9 and . _ @ + - (case-insensitive), starting with a "
            "letter or digit."
        )
    external_id = doc.get("externalId") or None
    if external_id is not None and len(external_id) > 255:
        raise invalid_value("externalId is at most 255 characters.")
    active = doc.get("active")  # None: not given (a create makes the user active)
    data = {k: v for k, v in doc.items() if k not in CORE_KEYS}
    if len(_display_name(data)) > 200:
        raise invalid_value("displayName is at most 200 characters.")
    return username, external_id, active, data


def _check_unique(username: str, external_id: str, pk=None) -> None:
    """409 uniqueness when another user has the username or the external id (one query)."""
    others = User.objects.exclude(pk=pk) if pk else User.objects.all()
    taken = list(
        others.filter(Q(username=username) | Q(external_id=external_id)).values_list(
            "username", flat=True
        )[:2]
    )
    if username in taken:
        raise uniqueness(f"userName {username!r} is already taken.")
    if taken:
        raise uniqueness(f"externalId {external_id!r} belongs to another user.")


def check_create_user(body: dict, *, actor: audit.Actor) -> User:
    """Create a user from a SCIM POST body. 400 on bad input, 409 uniqueness when the
    userName or externalId is taken. Audited `scim.user_provisioned`."""
    username, external_id, active, data = _clean_user(documents.clean(schema.USERS, body))
    bound = external_id or username
    _check_unique(username, bound)
    active = True if active is None else active
    role = role_for_groups([]) or MEMBER
    if not role_service.role_exists(role):
        role = MEMBER
    now = timezone.now()
    try:
        with transaction.atomic():
            user = User(
                username=username,
                role=role,
                display_name=_display_name(data)[:200],
                email=_email(data),
                external_id=bound,
                source=User.SCIM,
                is_active=bool(active),
            )
            user.set_unusable_password()
            user.save()
            user.scim = ScimUser.objects.create(
                user=user,
                data=data,
                external_id_from_username=external_id is None,
                updated_at=now,
            )
            audit.record(
                AuditEvent.SCIM_USER_PROVISIONED,
                actor=actor,
                target_type="user",
                target_id=user.pk,
                data={
                    "username": username,
                    "external_id": external_id,
                    "role": role,
                    "active": bool(active),
                },
            )
    except IntegrityError:  # a concurrent create of the same person won
        raise uniqueness(f"userName {username!r} or its externalId is already taken.") from None
    # Rendered as it is: a new user is in no group (saves reading it back, 1/6 of a create).
    user._prefetched_objects_cache = {"scim_groups": ScimGroup.objects.none()}
    return user


def check_if_match(if_match: str | None, version: int) -> None:
    """412 when the client's If-Match names another version (RFC 7644 3.14)."""
    if not if_match:
        return
    tags = {t.strip() for t in if_match.split(",")}
    if "*" in tags:
        return
    wanted = {etag(version), etag(version).removeprefix("W/")}
    if not tags & wanted:
        raise ScimError(412, "", "The resource changed since that version (If-Match).")


def check_update_user(
    user: User, new_doc: dict, *, actor: audit.Actor, if_match: str | None = None
) -> User:
    """Make the user match the writable document `new_doc` (a PUT body, or the result of
    a PATCH): 400/409/412 with nothing written. `active` changes deactivate or reactivate
    through orgs.services.users; the org's last owner cannot be deactivated (409)."""
    username, external_id, active, data = _clean_user(documents.clean(schema.USERS, new_doc))
    bound = external_id or username
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        row = ScimUser.objects.select_for_update().filter(user=locked).first()
        check_if_match(if_match, row.version if row is not None else 1)
        _check_unique(username, bound, pk=locked.pk)
        before = writable_doc(locked)
        before_active = locked.is_active
        if active is None:  # a PUT without `active` leaves the account as it is
            active = before_active
        if row is None:
            row = ScimUser(user=locked, data=_data(locked, None), updated_at=timezone.now())
        after_core = {"userName": username, "active": bool(active)}
        if external_id:
            after_core["externalId"] = external_id
        changed = sorted(
            k
            for k in set(before) | set(data) | set(after_core)
            if k != "active" and {**data, **after_core}.get(k) != before.get(k)
        )
        if changed or row.pk is None or row._state.adding:
            locked.username = username
            locked.external_id = bound
            locked.display_name = _display_name(data)[:200]
            locked.email = _email(data)
            locked.save(update_fields=["username", "external_id", "display_name", "email"])
            row.data = data
            row.external_id_from_username = external_id is None
        if changed or bool(active) != before_active:
            row.version += 1
            row.updated_at = timezone.now()
        row.save()
        if changed:
            audit.record(
                AuditEvent.SCIM_USER_UPDATED,
                actor=actor,
                target_type="user",
                target_id=locked.pk,
                data={"username": username, "changed": changed},
            )
        if bool(active) != before_active:
            _set_active(locked, bool(active), actor=actor)
    return access_user(user.pk)


def _set_active(user: User, active: bool, *, actor: audit.Actor) -> None:
    event = AuditEvent.SCIM_USER_REACTIVATED if active else AuditEvent.SCIM_USER_DEPROVISIONED
    audit.record(
        event, actor=actor, target_type="user", target_id=user.pk, data={"username": user.username}
    )
    try:
        if active:
            user_service.do_reactivate_user(user, actor=actor)
        else:
            user_service.do_deactivate_user(user, actor=actor)
    except ApiError as exc:
        raise ScimError(exc.status_code, "", exc.message) from None


def check_patch_user(user: User, body: dict, *, actor: audit.Actor, if_match=None) -> User:
    """Apply a PatchOp to the user as it is under the row lock (two IdP requests at once
    never undo each other's change)."""
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        doc = documents.apply_patch(schema.USERS, writable_doc(locked), body)
        return check_update_user(locked, doc, actor=actor, if_match=if_match)


def check_delete_user(user: User, *, actor: audit.Actor, if_match: str | None = None) -> None:
    """SCIM DELETE: deactivate (409 for the org's last owner), leave every SCIM group,
    free the username (renamed `deleted.<id>`) and external id, and hide the user from
    SCIM, erasing the profile but the name. Audited `scim.user_deleted` (with the old
    username) and `member.deactivated`."""
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        row = ScimUser.objects.select_for_update().filter(user=locked).first()
        check_if_match(if_match, row.version if row is not None else 1)
        if locked.is_active:
            _set_active(locked, False, actor=actor)
        old = {"username": locked.username, "external_id": locked.external_id}
        groups = list(locked.scim_groups.all())
        locked.scim_groups.clear()
        for group in groups:
            group.version += 1
            group.updated_at = timezone.now()
            group.save(update_fields=["version", "updated_at"])
        User.objects.filter(pk=locked.pk).update(
            username=f"deleted.{locked.pk.hex}", external_id=None, email=""
        )
        forget_cached_auth()  # a bulk update sends no post_save (orgs.apps)
        if row is None:
            row = ScimUser(user=locked, data=_data(locked, None))
        # The name stays for the org's records (who wrote what); the rest of the profile
        # the IdP sent (e-mails, phones, addresses, enterprise data) has no use any more.
        row.data = {k: v for k, v in row.data.items() if k in KEPT_AFTER_DELETE}
        row.deleted_at = row.updated_at = timezone.now()
        row.version += 1
        row.save()
        audit.record(
            AuditEvent.SCIM_USER_DELETED,
            actor=actor,
            target_type="user",
            target_id=locked.pk,
            data={**old, "groups_left": [g.display_name for g in groups][:50]},
        )


def users_by_ids(ids: Iterable[str]) -> dict[str, User]:
    """Visible users by SCIM id; 400 invalidValue naming the first id that is not one."""
    wanted: dict[str, uuid.UUID] = {}
    for raw in ids:
        try:
            wanted[str(raw)] = uuid.UUID(str(raw))
        except ValueError:
            raise invalid_value(f"{raw!r} is not a User id.") from None
    found = {
        u.pk: u
        for u in User.objects.filter(pk__in=set(wanted.values())).filter(
            Q(scim__isnull=True) | Q(scim__deleted_at__isnull=True)
        )
    }
    out = {}
    for raw, pk in wanted.items():
        if pk not in found:
            raise invalid_value(f"No User {raw} (members must be users of this org).")
        out[raw] = found[pk]
    return out
