"""SAML single sign-on in a real headless Chromium (Debian's package, driven by Playwright):
a person signs in to the portal through the pysaml2 IdP the SAML tests run, and signs out
again, at the IdP too (SP-initiated single logout)."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from admin_portal.tests.conftest import CHROMIUM_ARGS
from orgs.tests.test_saml import (  # noqa: F401 (fixtures)
    _honest_idp,
    idp,
    other_idp,
    person,
    saml_org,
    user_by_subject,
)

pytestmark = pytest.mark.browser


async def test_in_chromium_a_person_signs_in_through_the_saml_idp_and_out_again(
    saml_org,  # noqa: F811
    idp,  # noqa: F811
    server,
    chromium,
    screenshots,
):
    from playwright.async_api import async_playwright, expect

    setup = saml_org()
    base = f"http://{setup.host}:{server.port}"
    # The browser reaches the org at host:port, so that is the SP the IdP must know.
    metadata = httpx.get(
        f"{server.url}/sso/saml/metadata", headers={"Host": f"{setup.host}:{server.port}"}
    )
    assert idp.add_sp(metadata.text) == f"{base}/sso/saml/metadata"
    idp.next_user = who = person()
    failures: list[str] = []
    hosts: set[str] = set()
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {setup.host} 127.0.0.1"],
        )
        try:
            page = await browser.new_page()
            page.on("request", lambda r: hosts.add(urlsplit(r.url).netloc))
            page.on(
                "response",
                lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            # Given the org's sign-in page, which offers its IdP
            await page.goto(f"{base}/portal/login")
            button = page.get_by_test_id("sso-login")
            await expect(button).to_have_text("Sign in with Test SAML IdP")
            await page.screenshot(path=screenshots / "saml-1-login.png")
            # When the person takes it, the IdP (which knows them) posts them back signed in
            await button.click()
            await expect(page).to_have_url(f"{base}/portal/")
            await expect(page.get_by_test_id("current-user")).to_have_text(
                who.attributes["displayName"][0]
            )
            await page.screenshot(path=screenshots / "saml-2-dashboard.png")
            # And signing out here signs them out at the IdP too, and lands on sign-in
            await page.get_by_role("button", name="Sign out").click()
            await expect(page).to_have_url(f"{base}/portal/login")
            await page.screenshot(path=screenshots / "saml-3-signed-out.png")
            await page.goto(f"{base}/portal/")
            await expect(page).to_have_url(f"{base}/portal/login?next=/portal/")
        finally:
            await browser.close()
    assert failures == []
    assert idp.last_authn_request is not None
    [logout] = idp.logout_requests
    assert logout.name_id.text == who.name_id
    user = user_by_subject(setup.org, who.name_id)
    assert user is not None and user.role == "admin"
    assert hosts == {f"{setup.host}:{server.port}", f"127.0.0.1:{idp.port}"}
