"""The portal in a real headless Chromium (Debian's package, driven by Playwright): an admin
signs in, reads the dashboard, opens a user and revokes that user's live device."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

from admin_portal.tests.conftest import CHROMIUM_ARGS
from orgs.accounts.models import Device, User
from siphera.tenancy import in_tenant
from tests.fixtures import PASSWORD, host_of, make_user
from tests.ws import authed_socket, recv_type, wait_closed

pytestmark = pytest.mark.browser


def _counts(org) -> tuple[int, int]:
    return (
        in_tenant(org, User.objects.filter(is_active=True).count),
        in_tenant(org, Device.objects.filter(revoked_at__isnull=True, user__is_active=True).count),
    )


async def test_an_admin_signs_in_opens_a_user_and_revokes_their_live_device(
    server, org_p, new_session, chromium, screenshots
):
    from playwright.async_api import async_playwright, expect

    admin = make_user(org_p, role="admin")
    target = new_session(org_p, name="field-phone")
    ws = await authed_socket(server, target)  # the device is online while it is revoked
    host = host_of(org_p)
    base = f"http://{host}:{server.port}"
    requested: list[str] = []
    failures: list[str] = []

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {host} 127.0.0.1"],
        )
        try:
            page = await (
                await browser.new_context(viewport={"width": 1280, "height": 800})
            ).new_page()
            page.on("request", lambda request: requested.append(request.url))
            page.on(
                "response",
                lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            page.on("requestfailed", lambda r: failures.append(f"failed {r.url}"))

            # Given an admin at the portal, sent to the login page
            await page.goto(f"{base}/portal/")
            await expect(page).to_have_url(f"{base}/portal/login?next=/portal/")
            await expect(page.get_by_role("heading", name="Portalco")).to_be_visible()
            await page.screenshot(path=screenshots / "1-login.png")

            # When they sign in, the dashboard shows the org's live counts
            await page.get_by_label("Username").fill(admin.username)
            await page.get_by_label("Password").fill(PASSWORD)
            users, devices = _counts(org_p)
            await page.get_by_role("button", name="Sign in").click()
            await expect(page).to_have_url(f"{base}/portal/")
            await expect(page.get_by_test_id("active-users")).to_have_text(str(users))
            await expect(page.get_by_test_id("active-devices")).to_have_text(str(devices))
            await expect(page.get_by_test_id("current-user")).to_have_text(admin.username)
            background = await page.evaluate(
                "getComputedStyle(document.documentElement).backgroundColor"
            )
            assert background == "rgb(245, 246, 248)", "portal.css was not applied"
            await page.screenshot(path=screenshots / "2-dashboard.png")

            # and they find the user and open their page
            await (
                page.get_by_role("navigation", name="Main")
                .get_by_role("link", name="Users")
                .click()
            )
            await page.get_by_label("Search users").fill(target.user.username)
            await page.get_by_role("button", name="Search").click()
            await expect(page.get_by_test_id("users-table")).to_contain_text(target.user.username)
            await page.screenshot(path=screenshots / "3-users.png")
            await page.get_by_role("link", name=target.user.username).click()
            await expect(page).to_have_url(f"{base}/portal/users/{target.user.pk}/")
            row = page.locator(f'tr[data-device-id="{target.device_id}"]')
            await expect(row).to_contain_text("field-phone")
            await page.screenshot(path=screenshots / "4-user.png", full_page=True)

            # and revoke the device
            started = asyncio.get_running_loop().time()
            await row.get_by_role("button", name="Revoke").click()
            await expect(page.get_by_role("status")).to_contain_text("Revoked “field-phone”")
            await expect(row).to_contain_text("Revoked")
            await expect(row.get_by_role("button", name="Revoke")).to_have_count(0)
            await page.screenshot(path=screenshots / "5-revoked.png", full_page=True)
        finally:
            await browser.close()

    # Then the device's live socket was told and closed at once, and its token is dead
    assert await recv_type(ws, "device.revoked", timeout=2.0) == {"type": "device.revoked"}
    assert await wait_closed(ws, timeout=2.0) == 4403
    assert asyncio.get_running_loop().time() - started < 3.0
    assert (await asyncio.to_thread(target.api.get, "/api/v1/me")).status_code == 401

    # and the page never reached for anything but its own host (PITFALLS 25)
    assert requested, "the browser recorded no requests"
    assert {urlsplit(url).hostname for url in requested} == {host}, requested
    assert failures == []
