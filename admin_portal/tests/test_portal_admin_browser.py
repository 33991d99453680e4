"""The admin pages in a real headless Chromium (Debian's, via Playwright), one main journey
each: MFA enrolment with the QR code, the audit log, users, custom roles, org policies."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import re
import struct
import time
from urllib.parse import urlsplit

import pytest

from admin_portal.tests.conftest import CHROMIUM_ARGS
from orgs.accounts.models import AuditEntry, OrgPolicy, Role, User
from siphera.tenancy import in_tenant
from tests.fixtures import PASSWORD, create_org, host_of, make_user, unique
from tests.ws import authed_socket, recv_type, wait_closed

pytestmark = pytest.mark.browser


def totp(secret_b32: str, step: int) -> str:
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[19] & 0xF
    value = int.from_bytes(digest[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(value % 10**6).zfill(6)


@pytest.fixture
def org_x():
    return create_org(unique("b"), f"{unique('h')}.test")


@contextlib.asynccontextmanager
async def browser_page(chromium, org, server):
    """A page of a fresh browser that records every request it makes and every failure."""
    from playwright.async_api import async_playwright

    host = host_of(org)
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium,
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {host} 127.0.0.1"],
        )
        try:
            context = await browser.new_context(
                viewport={"width": 1280, "height": 900}, accept_downloads=True
            )
            page = await context.new_page()
            page.requested, page.failures = [], []
            page.on("request", lambda r: page.requested.append(r.url))
            page.on(
                "response",
                lambda r: page.failures.append(f"{r.status} {r.url}") if r.status >= 500 else None,
            )
            page.base = f"http://{host}:{server.port}"
            yield page
            assert {urlsplit(u).hostname for u in page.requested} == {host}  # PITFALLS 25
            assert page.failures == []
        finally:
            await browser.close()


async def sign_in(page, username: str, password: str = PASSWORD) -> None:
    await page.goto(f"{page.base}/portal/login")
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def test_an_admin_enrols_mfa_by_qr_code_and_then_signs_in_with_a_code(
    server,
    org_x,
    chromium,
    screenshots,
):
    from playwright.async_api import expect

    from orgs.services import mfa

    admin = make_user(org_x, role="admin")
    async with browser_page(chromium, org_x, server) as page:
        await sign_in(page, admin.username)
        await page.get_by_role("link", name="Two-factor").click()
        await expect(page.get_by_test_id("mfa-state")).to_have_text("Off")
        await page.get_by_role("button", name="Set up authenticator app").click()

        qr = page.get_by_test_id("totp-qr").locator("svg")
        await expect(qr).to_be_visible()
        secret = (await page.get_by_test_id("totp-secret").inner_text()).replace(" ", "")
        await page.screenshot(path=screenshots / "mfa-1-qr.png", full_page=True)
        # The QR code encodes the otpauth URI of exactly the secret shown for typing.
        uri = mfa.otpauth_uri(
            base64.b32decode(secret + "=" * (-len(secret) % 8)), f"{admin.username}@{org_x.slug}"
        )
        from admin_portal.qr import qr_svg

        expected = re.search(r'class="qrline"[^>]* d="([^"]+)"', qr_svg(uri)).group(1)
        assert await qr.locator("path.qrline").get_attribute("d") == expected

        step = int(time.time() // 30)
        await page.get_by_label("Authentication code").fill(totp(secret, step))
        await page.get_by_role("button", name="Turn on two-factor authentication").click()
        codes = page.get_by_test_id("recovery-codes").locator("li")
        await expect(codes).to_have_count(10)
        await page.screenshot(path=screenshots / "mfa-2-codes.png", full_page=True)
        await page.get_by_role("link", name="I saved them — continue").click()
        await expect(page.get_by_test_id("mfa-state")).to_have_text("On")

        # Signing in again now asks for a code after the password.
        await page.get_by_role("button", name="Sign out").click()
        await sign_in(page, admin.username)
        await expect(page).to_have_url(f"{page.base}/portal/login/code")
        await page.get_by_label("Authentication code").fill(totp(secret, step + 1))
        await page.get_by_role("button", name="Verify").click()
        await expect(page).to_have_url(f"{page.base}/portal/")
        await expect(page.get_by_test_id("current-user")).to_have_text(admin.username)


async def test_an_auditor_filters_the_log_downloads_it_and_verifies_the_chain(
    server,
    org_x,
    chromium,
    screenshots,
    tmp_path,
):
    from playwright.async_api import expect

    owner = make_user(org_x, role="owner")
    officer = make_user(org_x, role="compliance_officer")
    async with browser_page(chromium, org_x, server) as page:
        await sign_in(page, officer.username)
        await (
            page.get_by_role("navigation", name="Main")
            .get_by_role("link", name="Audit log")
            .click()
        )
        table = page.get_by_test_id("audit-table")
        await expect(table).to_contain_text("portal.logged_in")

        await page.get_by_label("Event").select_option("member.created")
        await page.get_by_label("Actor").fill("")
        await page.get_by_role("button", name="Filter").click()
        rows = table.locator("tbody tr")
        await expect(rows).to_have_count(2)  # the owner and the officer were created
        await expect(table).to_contain_text(owner.username)
        await page.screenshot(path=screenshots / "audit-1-filtered.png", full_page=True)

        async with page.expect_download() as info:
            await page.get_by_role("link", name="Download CSV").click()
        download = await info.value
        path = tmp_path / "audit.csv"
        await download.save_as(path)
        lines = path.read_text().splitlines()
        assert lines[0].startswith("id,ts,event") and len(lines) == 3

        await page.get_by_role("button", name="Verify chain").click()
        await expect(page.get_by_test_id("verify-report")).to_contain_text("chain intact")
        await page.screenshot(path=screenshots / "audit-2-verified.png", full_page=True)
    events = in_tenant(org_x, lambda: set(AuditEntry.objects.values_list("event", flat=True)))
    assert {"audit.exported", "audit.verified"} <= events


async def test_an_admin_invites_a_user_changes_their_role_and_deactivates_them(
    server,
    org_x,
    chromium,
    screenshots,
    new_session,
):
    from playwright.async_api import expect

    admin = make_user(org_x, role="admin")
    target = new_session(org_x, name="desk-phone")
    ws = await authed_socket(server, target, live=True)
    name = unique()
    async with browser_page(chromium, org_x, server) as page:
        await sign_in(page, admin.username)
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Users").click()
        await page.get_by_role("link", name="New user").click()
        await page.get_by_label("Username").fill(name)
        await page.get_by_label("Role").select_option("guest")
        await page.get_by_role("button", name="Create user").click()
        link = await page.get_by_test_id("invitation-link").inner_text()
        assert "/portal/invite/sph_i_" in link
        await page.screenshot(path=screenshots / "users-1-invited.png", full_page=True)

        await page.goto(f"{page.base}/portal/users/{target.user.pk}/")
        await page.get_by_label("Role", exact=True).select_option("security_desk")
        await page.get_by_role("button", name="Change role").click()
        await expect(page.get_by_test_id("user-role")).to_have_text("security_desk")

        started = asyncio.get_running_loop().time()
        await page.get_by_role("button", name="Deactivate").click()
        await expect(page.get_by_role("status").first).to_contain_text("Deactivated")
        await page.screenshot(path=screenshots / "users-2-deactivated.png", full_page=True)
        await page.get_by_role("button", name="Reactivate").click()
        await expect(page.get_by_role("status").first).to_contain_text("Reactivated")

    assert await recv_type(ws, "user.deactivated", timeout=2.0) == {"type": "user.deactivated"}
    assert await wait_closed(ws, timeout=2.0) == 4403
    assert asyncio.get_running_loop().time() - started < 3.0
    invited = in_tenant(org_x, User.objects.get, username=name)
    assert invited.role == "guest" and not invited.has_usable_password()
    assert in_tenant(org_x, User.objects.get, pk=target.user.pk).is_active


async def test_an_owner_creates_edits_and_deletes_a_custom_role(
    server,
    org_x,
    chromium,
    screenshots,
):
    from playwright.async_api import expect

    owner = make_user(org_x, role="owner")
    async with browser_page(chromium, org_x, server) as page:
        await sign_in(page, owner.username)
        await page.get_by_role("navigation", name="Main").get_by_role("link", name="Roles").click()
        await page.get_by_label("Role id").fill("helpdesk")
        await page.get_by_label("Name").fill("Helpdesk")
        await page.get_by_label(re.compile(r"portal\.access —")).check()
        await page.get_by_label(re.compile(r"users\.view —")).check()
        await page.get_by_role("button", name="Create role").click()
        row = page.locator('tr[data-role="helpdesk"]')
        await expect(row).to_contain_text("users.view")
        await page.screenshot(path=screenshots / "roles-1-created.png", full_page=True)

        await row.get_by_role("link", name="Edit").click()
        await page.get_by_label(re.compile(r"devices\.view —")).check()
        await page.get_by_role("button", name="Save role").click()
        await expect(page.locator('tr[data-role="helpdesk"]')).to_contain_text("devices.view")

        await page.locator('tr[data-role="helpdesk"]').get_by_role("link", name="Edit").click()
        await page.get_by_role("button", name="Delete role").click()
        await expect(page.get_by_role("status").first).to_contain_text("Deleted")
        await expect(page.locator('tr[data-role="helpdesk"]')).to_have_count(0)
    assert not in_tenant(org_x, Role.objects.filter(slug="helpdesk").exists)


async def test_an_owner_changes_the_org_policies(server, org_x, chromium, screenshots):
    from playwright.async_api import expect

    owner = make_user(org_x, role="owner")
    async with browser_page(chromium, org_x, server) as page:
        await sign_in(page, owner.username)
        await (
            page.get_by_role("navigation", name="Main").get_by_role("link", name="Policies").click()
        )
        await page.get_by_label("Two-factor authentication").select_option("required_for_admins")
        await page.get_by_label("Portal session lifetime (minutes)").fill("90")
        await page.get_by_label("Relay read receipts").uncheck()
        await page.get_by_role("button", name="Save policies").click()
        await expect(page.get_by_role("status").first).to_contain_text("Policies saved")
        await expect(page.get_by_label("Portal session lifetime (minutes)")).to_have_value("90")
        await page.screenshot(path=screenshots / "policies.png", full_page=True)
    policy = in_tenant(org_x, OrgPolicy.objects.get)
    assert policy.mfa_policy == "required_for_admins"
    assert policy.session_lifetime_minutes == 90 and policy.read_receipts is False
