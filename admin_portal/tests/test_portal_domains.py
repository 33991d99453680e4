"""The portal's Domains page over real HTTP, against a real (local) DNS server: an owner
adds a host name, publishes the TXT record shown, verifies it, and signs in through it at
once; what fails, who may, and what another org sees."""

from __future__ import annotations

import re

from admin_portal.tests.conftest import Portal
from orgs.accounts.models import AuditEntry
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, host_of, make_user, unique


def signed_in(live, org, user, host: str | None = None) -> Portal:
    client = Portal(live, org)
    if host:
        client.host = host
        client.http.headers["Host"] = host
    response = client.login(user.username)
    assert response.status_code == 302, response.text
    return client


def test_an_owner_adds_verifies_signs_in_through_and_removes_a_domain(dns, dns_web):
    org = create_org(unique("pd"))
    owner = make_user(org, role="owner")
    client = signed_in(dns_web, org, owner)
    name = f"{unique('chat')}.example.test"
    page = client.get("/portal/domains/")
    assert page.status_code == 200 and host_of(org) in page.text
    assert client.post("/portal/domains/", {"domain": name}).status_code == 302
    page = client.get("/portal/domains/")
    txt_name = re.search(r'data-testid="txt-name">([^<]+)<', page.text).group(1)
    txt_value = re.search(r'data-testid="txt-value">([^<]+)<', page.text).group(1)
    assert txt_name == f"_siphera-verify.{name}"
    # Verifying before the record exists says what DNS answered
    client.post(f"/portal/domains/{name}/verify")
    page = client.get("/portal/domains/")
    assert 'data-testid="last-error"' in page.text and "no TXT record" in page.text
    # Once published, it verifies, and the portal answers through it at once
    dns.set_txt(txt_name, txt_value)
    client.post(f"/portal/domains/{name}/verify")
    page = client.get("/portal/domains/")
    assert "Verified: " in page.text
    row = page.text.split(f'data-domain="{name}"')[1].split("</tr>")[0]
    assert "Verified" in row and "Waiting" not in row
    through_new = signed_in(dns_web, org, owner, host=name)
    page = through_new.get("/portal/domains/")
    assert "(you are here)" in page.text.split(f'data-domain="{name}"')[1].split("</tr>")[0]
    # The name you are signed in through cannot be removed from there
    refused = through_new.post(f"/portal/domains/{name}/remove")
    assert refused.status_code == 302
    assert "signed in through this domain" in through_new.get("/portal/domains/").text
    # From the primary it can; the new host then leads nowhere
    client.get("/portal/domains/")
    assert client.post(f"/portal/domains/{name}/remove").status_code == 302
    assert through_new.get("/portal/login").status_code == 404
    names = in_tenant(
        org,
        lambda: list(
            AuditEntry.objects.filter(event__startswith="org.domain_").values_list(
                "event", flat=True
            )
        ),
    )
    assert names == [
        "org.domain_claimed",
        "org.domain_verification_failed",
        "org.domain_added",
        "org.domain_removed",
    ]


def test_bad_names_taken_names_other_orgs_and_roles(dns_web, org_b):
    org = create_org(unique("pd"))
    owner = make_user(org, role="owner")
    client = signed_in(dns_web, org, owner)
    client.get("/portal/domains/")
    bad = client.post("/portal/domains/", {"domain": "not a name"})
    assert bad.status_code == 400 and "Invalid domain" in bad.text
    taken = client.post("/portal/domains/", {"domain": host_of(org_b)})
    assert taken.status_code == 400 and "already in use" in taken.text
    # The primary has no remove button, and removing it is refused
    assert client.post(f"/portal/domains/{host_of(org)}/remove").status_code == 302
    assert "primary domain cannot be removed" in client.get("/portal/domains/").text
    # Another org's owner: this org's names are 404s
    name = f"{unique('mine')}.example.test"
    client.post("/portal/domains/", {"domain": name})
    other = signed_in(dns_web, org_b, make_user(org_b, role="owner"))
    other.get("/portal/domains/")
    assert other.post(f"/portal/domains/{name}/verify").status_code == 404
    assert other.post(f"/portal/domains/{host_of(org)}/remove").status_code == 404
    assert name not in other.get("/portal/domains/").text
    # An admin (no org.manage) gets the 403 page and no menu entry
    admin = signed_in(dns_web, org, make_user(org, role="admin"))
    assert admin.get("/portal/domains/").status_code == 403
    assert "/portal/domains/" not in admin.get("/portal/").text
