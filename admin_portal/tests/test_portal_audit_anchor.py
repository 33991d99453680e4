"""The portal's "Verify chain" checks the log against its latest anchor: a log cut short
after it was anchored is reported as such, with no hash typed in by anyone."""

from __future__ import annotations

from orgs.accounts.models import AuditEntry
from orgs.services import audit
from orgs.tests.audit_support import tampering
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, make_user, unique


def _newest(org) -> AuditEntry:
    return in_tenant(org, lambda: AuditEntry.objects.order_by("id").last())


def test_the_portal_reports_a_log_cut_short_after_its_anchor(portal):
    org = create_org(unique("pa"))
    owner = make_user(org, role="owner")
    make_user(org)
    in_tenant(org, audit.do_anchor_head)
    anchored = _newest(org)
    client = portal(org)
    assert client.login(owner.username).status_code == 302
    client.get("/portal/audit/")

    assert client.post("/portal/audit/verify").status_code == 302
    page = client.get("/portal/audit/").text
    assert "chain intact" in page and f"anchored entry {anchored.id}" in page

    # A superuser deletes everything from the anchored entry on.
    with tampering(org) as cursor:
        cursor.execute("DELETE FROM accounts_auditentry WHERE id >= %s", [anchored.id])
    client.get("/portal/audit/")
    assert client.post("/portal/audit/verify").status_code == 302
    page = client.get("/portal/audit/").text
    assert f"BROKEN at entry {anchored.id} (truncated)" in page
    assert _newest(org).event == "audit.verified" and _newest(org).data["ok"] is False
