"""The Policies page sets the org's largest group (messaging reads it on create and add)."""

from orgs.accounts.models import AuditEntry, OrgPolicy
from siphera.tenancy import in_tenant
from tests.fixtures import make_user


def test_the_policies_page_sets_the_largest_group(portal, org_p):
    admin = make_user(org_p, role="admin")
    client = portal(org_p)
    assert client.login(admin.username).status_code == 302
    before = in_tenant(org_p, OrgPolicy.objects.get, pk=1).group_max_members
    page = client.get("/portal/policies/")
    assert 'name="group_max_members"' in page.text
    form = {"mfa_policy": "off", "password_login": "on", "read_receipts": "on"}
    too_big = client.post("/portal/policies/", {**form, "group_max_members": "5001"})
    assert too_big.status_code == 200 and "less than or equal to 5000" in too_big.text
    try:
        saved = client.post("/portal/policies/", {**form, "group_max_members": "250"})
        assert saved.status_code == 302
        assert in_tenant(org_p, OrgPolicy.objects.get, pk=1).group_max_members == 250
        entry = in_tenant(
            org_p,
            lambda: AuditEntry.objects.filter(
                event="org.policy_changed", target_id="group_max_members"
            ).last(),
        )
        assert (entry.data["before"], entry.data["after"]) == (before, 250)
        # Left empty: unchanged.
        client.get("/portal/policies/")
        assert client.post("/portal/policies/", form).status_code == 302
        assert in_tenant(org_p, OrgPolicy.objects.get, pk=1).group_max_members == 250
    finally:
        client.get("/portal/policies/")
        client.post("/portal/policies/", {**form, "group_max_members": str(before)})
