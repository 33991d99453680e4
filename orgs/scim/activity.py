"""What the org's IdP did over SCIM lately (the portal's provisioning activity list)."""

from __future__ import annotations

from orgs.accounts.models import AuditEntry


def recent(limit: int = 50, before_id: int | None = None) -> list[AuditEntry]:
    """The newest `scim.*` audit entries (token rotations included), newest first."""
    rows = AuditEntry.objects.filter(event__startswith="scim.").order_by("-id")
    if before_id is not None:
        rows = rows.filter(id__lt=before_id)
    return list(rows[: max(1, min(limit, 200))])
