"""Data-subject requests: everything the server holds about one user (an export, JSON),
and erasure of it except what a legal hold or the audit log must keep.

Like the compliance export (orgs.services.compliance), each app contributes what it
holds: `register_subject_part` for the export, `orgs.hooks.user_erasing` for erasure
(messaging redacts the user's messages no hold covers and drops their memberships;
calls says what it keeps). Identity's own data (profile, devices, grants, second factors,
audit entries) is handled here.

Guarantees:
- The export never contains a secret or a hash of one (token, grant or recovery-code
  hashes, TOTP seeds, the password hash) nor any message content.
- Erasure is one transaction: every device is revoked (tokens dead, keys and queues
  dropped, sockets closed after commit), every portal session and login grant ends, and
  the data is removed or pseudonymised, or nothing changed at all. The reason, what was
  removed, and what was kept and why are in the answer and in the `member.erased` audit
  entry. Under an active legal hold on the user the held messages, memberships and the
  profile stay (the hold names its custodian); the audit log is append-only and keeps the
  entries about the user.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from orgs import hooks
from orgs.accounts.models import (
    AuditEntry,
    Device,
    Invitation,
    LoginGrant,
    PasswordReset,
    PortalSession,
    PresenceStatus,
    RecoveryCode,
    TotpFactor,
    User,
)
from orgs.audit_events import AuditEvent
from orgs.services import audit, profiles, users
from orgs.services.compliance import iso
from siphera.api_errors import ApiError
from siphera.tenancy import tenant_context

MAX_REASON = 500
FORMAT = "siphera.personal-data/1"

# fn(user) -> the records of this part about `user` (JSON-safe dicts), oldest first.
SubjectPart = Callable[[User], Iterable[dict[str, Any]]]
_parts: dict[str, SubjectPart] = {}


def register_subject_part(name: str, fn: SubjectPart) -> SubjectPart:
    """Add a part of the personal-data export (from an AppConfig.ready())."""
    _parts[name] = fn
    return fn


# --- export ----------------------------------------------------------------------------


def profile_payload(user: User) -> dict[str, Any]:
    return {
        "id": str(user.pk),
        "username": user.username,
        "display_name": user.display_name,
        "email": user.email,
        "title": user.title,
        "time_zone": user.time_zone,
        "has_avatar": bool(user.avatar),
        "role": user.role,
        "is_active": user.is_active,
        "source": user.source,
        "external_id": user.external_id,
        "created_at": iso(user.created_at),
    }


def _b64(value) -> str:
    return base64.b64encode(bytes(value or b"")).decode()


def _devices(user: User) -> Iterator[dict]:
    for d in Device.objects.filter(user=user).order_by("device_id"):
        yield {
            "device_id": d.device_id,
            "name": d.name,
            "identity_key": _b64(d.identity_key),  # public keys: never a private one
            "signing_key": _b64(d.signing_key),
            "created_at": iso(d.created_at),
            "last_seen_at": iso(d.last_seen_at),
            "last_seen_ip": d.last_seen_ip,
            "user_agent": d.user_agent,
            "revoked_at": iso(d.revoked_at),
        }


def _sign_ins(user: User) -> Iterator[dict]:
    for g in LoginGrant.objects.filter(user=user).order_by("created_at"):
        yield {
            "kind": "login_grant",
            "method": g.method,
            "created_at": iso(g.created_at),
            "expires_at": iso(g.expires_at),
            "used_at": iso(g.used_at),
        }
    for r in PasswordReset.objects.filter(user=user).order_by("created_at"):
        yield {
            "kind": "password_reset",
            "requested_by": str(r.requested_by) if r.requested_by else None,
            "created_at": iso(r.created_at),
            "expires_at": iso(r.expires_at),
            "used_at": iso(r.used_at),
        }
    for p in PortalSession.objects.filter(user=user).order_by("created_at"):
        yield {
            "kind": "portal_session",
            "created_at": iso(p.created_at),
            "last_seen_at": iso(p.last_seen_at),
            "ip": p.ip,
            "user_agent": p.user_agent,
        }
    for i in Invitation.objects.filter(user=user).order_by("created_at"):
        yield {
            "kind": "invitation",
            "created_at": iso(i.created_at),
            "expires_at": iso(i.expires_at),
            "used_at": iso(i.used_at),
        }


def _second_factors(user: User) -> Iterator[dict]:
    totp = TotpFactor.objects.filter(user=user).first()
    if totp is not None:
        yield {
            "kind": "totp",
            "created_at": iso(totp.created_at),
            "confirmed_at": iso(totp.confirmed_at),
        }
    codes = RecoveryCode.objects.filter(user=user)
    if codes.exists():
        yield {
            "kind": "recovery_codes",
            "total": codes.count(),
            "unused": codes.filter(used_at__isnull=True).count(),
        }


def _presence(user: User) -> Iterator[dict]:
    status = PresenceStatus.objects.filter(user=user).first()
    if status is not None:
        yield {"status": status.status, "until": iso(status.until)}


def audit_entries_about(user: User):
    """Entries the user did, or that name the user or one of their devices as target."""
    return AuditEntry.objects.filter(
        Q(actor_id=user.pk)
        | Q(target_type="user", target_id=str(user.pk))
        | Q(target_type="device", target_id__startswith=f"{user.pk}:")
    ).order_by("id")


def _audit_entries(user: User) -> Iterator[dict]:
    for entry in audit_entries_about(user).iterator(chunk_size=2000):
        yield {
            "id": entry.id,
            "ts": iso(entry.ts),
            "event": entry.event,
            "actor_label": entry.actor_label,
            "ip": entry.ip,
            "user_agent": entry.user_agent,
            "target_type": entry.target_type,
            "target_id": entry.target_id,
            "data": entry.data,
        }


register_subject_part("devices", _devices)
register_subject_part("sign_ins", _sign_ins)
register_subject_part("second_factors", _second_factors)
register_subject_part("presence", _presence)
register_subject_part("audit_entries", _audit_entries)


@dataclass
class PersonalDataExport:
    user: User
    tenant: Any = field(repr=False, default=None)

    @property
    def filename(self) -> str:
        return f"personal-data-{self.user.pk}.json"

    def pieces(self) -> Iterator[str]:
        """One JSON document, streamed part by part (item by item)."""
        with tenant_context(self.tenant):
            head = {
                "format": FORMAT,
                "generated_at": timezone.now().isoformat(),
                "org": connection.schema_name,
                "user": profile_payload(self.user),
            }
            yield json.dumps(head, ensure_ascii=False)[:-1]
            for name, part in _parts.items():
                yield f", {json.dumps(name)}: ["
                for number, item in enumerate(part(self.user)):
                    yield (
                        ("" if number == 0 else ",")
                        + "\n  "
                        + json.dumps(item, ensure_ascii=False, sort_keys=True)
                    )
                yield "\n]"
            yield "}\n"

    def write_to(self, out) -> None:
        for piece in self.pieces():
            out.write(piece.encode())


def check_export_personal_data(user: User, *, actor: audit.Actor) -> PersonalDataExport:
    """Start the export of everything held about `user` (of this org: the caller found
    them with `users.access_user`). Audited `member.personal_data_exported` before any
    byte is streamed."""
    with transaction.atomic():
        audit.record(
            AuditEvent.PERSONAL_DATA_EXPORTED,
            actor=actor,
            target_type="user",
            target_id=user.pk,
            data={"username": user.username, "parts": list(_parts)},
        )
    return PersonalDataExport(user=user, tenant=connection.tenant)


# --- erasure ---------------------------------------------------------------------------


@dataclass
class ErasureReport:
    """What an erasure did: counts removed per kind, and what was kept and why."""

    user_id: str
    reason: str
    removed: dict[str, int] = field(default_factory=dict)
    kept: list[dict[str, Any]] = field(default_factory=list)
    profile: str = "pseudonymised"

    def remove(self, what: str, count: int) -> None:
        if count:
            self.removed[what] = self.removed.get(what, 0) + count

    def keep(self, what: str, count: int, why: str, **detail: Any) -> None:
        if count:
            self.kept.append({"what": what, "count": count, "why": why, **detail})

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_erase_user(user: User, *, reason: str, actor: audit.Actor) -> ErasureReport:
    """Erase `user` (see the module's guarantees). 400 `reason_required` without a
    reason; 409 `cannot_deactivate_self`, 403 for a user holding a code the actor lacks,
    409 `last_owner`, all before anything changes."""
    reason = (reason or "").strip()
    if not reason:
        raise ApiError(400, "reason_required", "Say why the user's data is erased.")
    if len(reason) > MAX_REASON:
        raise ApiError(400, "reason_too_long", f"A reason has at most {MAX_REASON} characters.")
    with transaction.atomic():
        locked = User.objects.select_for_update().get(pk=user.pk)
        # Ends everything live: devices (tokens, keys, queues, sockets), grants,
        # invitations and portal sessions; refuses self, the last owner, a bigger role.
        users.check_deactivate_user(locked, actor=actor)
        locked.refresh_from_db()
        report = ErasureReport(user_id=str(locked.pk), reason=reason)
        hooks.user_erasing(locked, report)
        _erase_identity(locked, report, actor=actor)
        audit.record(
            AuditEvent.MEMBER_ERASED,
            actor=actor,
            target_type="user",
            target_id=locked.pk,
            data=report.as_dict(),
        )
    return report


def _erase_identity(user: User, report: ErasureReport, *, actor: audit.Actor) -> None:
    report.remove("second_factors", TotpFactor.objects.filter(user=user).delete()[0])
    report.remove("recovery_codes", RecoveryCode.objects.filter(user=user).delete()[0])
    report.remove("login_grants", LoginGrant.objects.filter(user=user).delete()[0])
    report.remove("invitations", Invitation.objects.filter(user=user).delete()[0])
    report.remove("password_resets", PasswordReset.objects.filter(user=user).delete()[0])
    report.remove("presence_status", PresenceStatus.objects.filter(user=user).delete()[0])
    report.remove("portal_sessions", PortalSession.objects.filter(user=user).delete()[0])
    # Revoked already; their names ("Alice's phone"), public keys and where they were
    # seen from go, the rows stay so a device id in message metadata is never reused.
    report.remove(
        "device_details",
        Device.objects.filter(user=user).update(
            name="", identity_key=b"", signing_key=b"", last_seen_ip=None, user_agent=""
        ),
    )
    report.keep(
        "audit_entries",
        audit_entries_about(user).count(),
        "The audit log is append-only evidence of what was done in the org (it cannot be "
        "changed); its entries keep the names they were written with.",
    )
    if report.profile != "pseudonymised":
        return
    if user.avatar:
        # Its blob is deleted after commit (orgs.services.profiles).
        profiles.check_remove_avatar(user, actor=actor)
        report.remove("avatar", 1)
    user.username = f"erased-{user.pk.hex}"
    user.display_name = ""
    user.email = ""
    user.title = ""
    user.time_zone = ""
    user.avatar = ""
    user.external_id = None
    user.set_unusable_password()
    user.session_epoch += 1
    user.save(
        update_fields=[
            "username",
            "display_name",
            "email",
            "title",
            "time_zone",
            "avatar",
            "external_id",
            "password",
            "session_epoch",
        ]
    )
