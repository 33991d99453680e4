"""The org's SCIM bearer token: created and rotated by an owner (portal) or an operator
(`manage.py scim_token`), shown once, stored as sha256, one live at a time."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from orgs.audit_events import AuditEvent
from orgs.scim.models import ScimToken
from orgs.services import audit, tokens

SCIM_TOKEN_PREFIX = "sph_s_"  # noqa: S105 (a prefix, not a secret)
LAST_USED_RESOLUTION = timedelta(minutes=1)


def do_rotate_token(
    *, label: str = "identity provider", actor: audit.Actor
) -> tuple[ScimToken, str]:
    """Revoke every live token and create a new one. Returns the row and the token (shown
    once). Audited `scim.token_rotated`."""
    label = (label or "identity provider").strip()[:100]
    secret, secret_hash = tokens.new_secret(SCIM_TOKEN_PREFIX)
    with transaction.atomic():
        revoked = ScimToken.objects.select_for_update().filter(revoked_at__isnull=True)
        revoked_ids = list(revoked.values_list("pk", flat=True))
        ScimToken.objects.filter(pk__in=revoked_ids).update(revoked_at=timezone.now())
        row = ScimToken.objects.create(
            label=label,
            token_hash=secret_hash,
            hint=secret[len(SCIM_TOKEN_PREFIX) : len(SCIM_TOKEN_PREFIX) + 6],
            created_by=actor.label,
        )
        audit.record(
            AuditEvent.SCIM_TOKEN_ROTATED,
            actor=actor,
            target_type="scim_token",
            target_id=row.pk,
            data={"label": label, "revoked": len(revoked_ids), "hint": row.hint},
        )
    return row, secret


def do_revoke_tokens(*, actor: audit.Actor) -> int:
    """Revoke every live token (SCIM stops working until a new one is made)."""
    with transaction.atomic():
        count = ScimToken.objects.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        if count:
            audit.record(
                AuditEvent.SCIM_TOKEN_REVOKED,
                actor=actor,
                target_type="scim_token",
                data={"revoked": count},
            )
    return count


def live_token() -> ScimToken | None:
    return ScimToken.objects.filter(revoked_at__isnull=True).first()


def authenticate(secret: str) -> ScimToken | None:
    """The live token of this org (the current schema) matching `secret`, or None. Another
    org's token is simply unknown here."""
    if not secret or not secret.startswith(SCIM_TOKEN_PREFIX) or len(secret) > 200:
        return None
    row = ScimToken.objects.filter(
        token_hash=tokens.hash_secret(secret), revoked_at__isnull=True
    ).first()
    if row is not None:
        now = timezone.now()
        if row.last_used_at is None or row.last_used_at < now - LAST_USED_RESOLUTION:
            ScimToken.objects.filter(pk=row.pk).update(last_used_at=now)
            row.last_used_at = now
    return row
