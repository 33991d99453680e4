"""The portal's provisioning page (owners only): token rotation shown once, revocation,
last use and the provisioning activity; and SCIM deactivation ending portal sessions."""

from __future__ import annotations

import asyncio
import re

import pytest

from orgs.tests.scim_support import Scim, patch_body
from tests.fixtures import make_user, unique

TOKEN = re.compile(r'data-testid="scim-new-token">(sph_s_[A-Za-z0-9_\-]+)<')


def signed_in(portal, org, role: str):
    user = make_user(org, role=role)
    client = portal(org)
    assert client.login(user.username).status_code == 302
    client.user = user
    return client


def rotate(client, label: str = "okta") -> str:
    client.get("/portal/scim/")
    response = client.post("/portal/scim/", {"action": "rotate", "label": label})
    assert response.status_code == 200, response.text
    match = TOKEN.search(response.text)
    assert match, response.text
    return match.group(1)


def test_an_owner_rotates_the_token_and_sees_it_once(server, org_p, portal):
    owner = signed_in(portal, org_p, "owner")
    page = owner.get("/portal/scim/")
    assert page.status_code == 200 and "/scim/v2/" in page.text
    assert 'href="/portal/scim/"' in page.text  # the nav link

    first = rotate(owner, "okta")
    second = rotate(owner, "okta")
    assert first != second
    assert Scim(server, org_p, first).get("/Users").status_code == 401
    scim = Scim(server, org_p, second)
    name = f"{unique('p')}@example.com"
    assert scim.post("/Users", json={"userName": name}).status_code == 201

    later = owner.get("/portal/scim/")
    assert second not in later.text and "scim-new-token" not in later.text  # shown once
    assert f"sph_s_{second[6:12]}" in later.text and "last used" in later.text
    assert "scim.user_provisioned" in later.text and name in later.text
    assert "scim.token_rotated" in later.text


def test_revoking_the_token_stops_provisioning(server, org_p, portal):
    owner = signed_in(portal, org_p, "owner")
    token = rotate(owner)
    owner.get("/portal/scim/")
    response = owner.post("/portal/scim/", {"action": "revoke"})
    assert response.status_code == 302
    assert Scim(server, org_p, token).get("/Users").status_code == 401
    assert "No live token" in owner.get("/portal/scim/").text


def test_only_owners_manage_scim(org_p, portal):
    admin = signed_in(portal, org_p, "admin")
    assert admin.get("/portal/scim/").status_code == 403
    assert admin.post("/portal/scim/", {"action": "rotate"}).status_code == 403
    assert 'href="/portal/scim/"' not in admin.get("/portal/").text


def test_scim_deactivation_ends_the_users_portal_sessions(server, org_p, portal):
    owner = signed_in(portal, org_p, "owner")
    scim = Scim(server, org_p, rotate(owner))
    admin = signed_in(portal, org_p, "admin")
    assert admin.get("/portal/").status_code == 200

    response = scim.patch(
        f"/Users/{admin.user.pk}", json=patch_body({"op": "replace", "value": {"active": False}})
    )
    assert response.status_code == 200, response.text

    after = admin.get("/portal/")
    assert after.status_code == 302 and "/portal/login" in after.headers["location"]
    assert owner.get("/portal/").status_code == 200  # nobody else is signed out


@pytest.mark.browser
async def test_an_owner_creates_the_token_in_a_real_browser_and_sees_the_activity(
    server, org_p, chromium
):
    from playwright.async_api import expect

    from admin_portal.tests.test_portal_admin_browser import browser_page, sign_in

    owner = await asyncio.to_thread(make_user, org_p, role="owner")
    async with browser_page(chromium, org_p, server) as page:
        await sign_in(page, owner.username)
        nav = page.get_by_role("navigation", name="Main")
        await nav.get_by_role("link", name="Provisioning").click()
        await expect(page.get_by_test_id("scim-base-url")).to_contain_text("/scim/v2/")
        await page.get_by_label("Label").fill("entra")
        await page.get_by_test_id("scim-rotate").click()
        token = (await page.get_by_test_id("scim-new-token").inner_text()).strip()
        assert token.startswith("sph_s_")

        name = f"{unique('p')}@example.com"
        scim = Scim(server, org_p, token)
        created = await asyncio.to_thread(scim.post, "/Users", json={"userName": name})
        assert created.status_code == 201

        await page.goto(f"{page.base}/portal/scim/")
        await expect(page.get_by_test_id("scim-new-token")).to_have_count(0)  # shown once
        await expect(page.get_by_test_id("scim-token-status")).to_contain_text("entra")
        await expect(page.get_by_test_id("scim-activity")).to_contain_text(name)
