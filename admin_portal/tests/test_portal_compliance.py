"""The portal's Compliance page over real HTTP: a compliance officer downloads an export
(users by username) and a user's personal data, and erases a user after confirming;
bad input shows the form again; members and admins are refused what their role lacks."""

from __future__ import annotations

import json

from django.utils import timezone

from orgs.accounts.models import AuditEntry, User
from siphera.tenancy import in_tenant
from tests.fixtures import make_user


def _officer(portal, org):
    officer = make_user(org, role="compliance_officer")
    client = portal(org)
    assert client.login(officer.username).status_code == 302
    client.user = officer
    return client


def _range():
    today = timezone.now().date()
    return {"since": str(today), "until": str(today.replace(year=today.year + 1))}


def test_an_officer_exports_by_username_and_bad_input_shows_the_form(org_p, portal):
    client = _officer(portal, org_p)
    page = client.get("/portal/compliance/")
    assert page.status_code == 200 and 'data-testid="export-form"' in page.text
    assert 'href="/portal/compliance/"' in page.text  # in the navigation
    alice = make_user(org_p)
    response = client.get(
        "/portal/compliance/export",
        params={**_range(), "users": alice.username, "format": "csv", "sections": "calls"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text.startswith("section,")
    entry = in_tenant(
        org_p,
        lambda: AuditEntry.objects.filter(event="compliance.exported").order_by("-id").first(),
    )
    assert entry.actor_id == client.user.pk and entry.data["user_ids"] == [str(alice.pk)]

    unknown = client.get("/portal/compliance/export", params={**_range(), "users": "nobody-x"})
    assert unknown.status_code == 400 and 'data-testid="export-error"' in unknown.text
    backwards = client.get(
        "/portal/compliance/export", params={"since": "2026-02-01", "until": "2026-01-01"}
    )
    assert backwards.status_code == 400 and "since must be before until" in backwards.text


def test_an_officer_downloads_personal_data_and_erases_a_user(org_p, portal):
    client = _officer(portal, org_p)
    bob = make_user(org_p)
    page = client.get("/portal/compliance/", params={"subject": bob.username})
    assert 'data-testid="subject"' in page.text and 'data-testid="erase-form"' in page.text
    data = client.get(f"/portal/compliance/users/{bob.pk}/personal-data")
    assert data.status_code == 200 and json.loads(data.text)["user"]["id"] == str(bob.pk)

    unconfirmed = client.post(
        f"/portal/compliance/users/{bob.pk}/erase", {"reason": "request 9", "confirm": "x"}
    )
    assert unconfirmed.status_code == 400
    assert in_tenant(org_p, lambda: User.objects.get(pk=bob.pk).is_active)
    client.get("/portal/compliance/", params={"subject": bob.username})
    erased = client.post(
        f"/portal/compliance/users/{bob.pk}/erase",
        {"reason": "request 9", "confirm": bob.username},
    )
    assert erased.status_code == 200, erased.text
    assert 'data-testid="erasure-report"' in erased.text and "audit_entries" in erased.text
    stored = in_tenant(org_p, lambda: User.objects.get(pk=bob.pk))
    assert stored.username == f"erased-{bob.pk.hex}" and not stored.is_active


def test_members_and_admins_are_refused_what_their_role_lacks(org_p, portal, signed_in_admin):
    member = make_user(org_p)
    client = portal(org_p)
    client.login(member.username)
    assert client.get("/portal/compliance/").status_code in (302, 403)
    # Admins export but do not erase: no erase form, and the POST is refused.
    bob = make_user(org_p)
    page = signed_in_admin.get("/portal/compliance/", params={"subject": bob.username})
    assert page.status_code == 200 and 'data-testid="erase-form"' not in page.text
    refused = signed_in_admin.post(
        f"/portal/compliance/users/{bob.pk}/erase", {"reason": "x", "confirm": bob.username}
    )
    assert refused.status_code == 403
    assert (
        signed_in_admin.get("/portal/compliance/", params={"subject": "no-one-x"}).status_code
        == 400
    )


def test_erasure_ends_the_users_portal_session(org_p, portal):
    owner = make_user(org_p, role="owner")
    boss = portal(org_p)
    assert boss.login(owner.username).status_code == 302
    clerk = make_user(org_p, role="billing_admin")
    session = portal(org_p)
    assert session.login(clerk.username).status_code == 302
    assert session.get("/portal/").status_code == 200

    boss.get("/portal/compliance/", params={"subject": clerk.username})
    erased = boss.post(
        f"/portal/compliance/users/{clerk.pk}/erase",
        {"reason": "left the company", "confirm": clerk.username},
    )
    assert erased.status_code == 200, erased.text
    after = session.get("/portal/")
    assert after.status_code == 302 and "/portal/login" in after.headers["location"]
