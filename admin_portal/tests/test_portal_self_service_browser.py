"""The pages for what was API-only (issue 20 item 6) in a real headless Chromium (Debian's,
via Playwright), one journey each: your own account, Retention and legal holds, Domains
with a real (local) DNS server, a user's sessions and devices, the dashboard."""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

import pytest
from PIL import Image

from admin_portal.tests.conftest import CHROMIUM_ARGS
from admin_portal.tests.test_portal_admin_browser import browser_page, sign_in
from messaging.models import LegalHold
from messaging.tests.helpers import send_body, start_conversation
from messaging.tests.test_activity import sockets_counted
from orgs.accounts.models import AuditEntry, User
from siphera.tenancy import in_tenant
from tests.fixtures import PASSWORD, create_org, host_of, make_user, unique
from tests.ws import authed_socket, recv_type, wait_closed

pytestmark = pytest.mark.browser

NEW_PASSWORD = "Browser-Changed-Passphrase-7"


@pytest.fixture
def org_y():
    return create_org(unique("sb"), f"{unique('h')}.test")


def _nav(page, name: str):
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name)


async def test_a_user_edits_their_profile_picture_and_password(
    server, org_y, chromium, screenshots, tmp_path
):
    from playwright.async_api import expect

    me = make_user(org_y, role="billing_admin")
    picture = tmp_path / "me.png"
    Image.new("RGB", (60, 40), (20, 120, 200)).save(picture)
    async with browser_page(chromium, org_y, server) as page:
        await sign_in(page, me.username)
        await page.get_by_role("link", name="Account").click()
        await page.get_by_label("Display name").fill("Bea Browser")
        await page.get_by_label("Job title").fill("Billing")
        await page.get_by_label("Time zone").fill("America/New_York")
        await page.get_by_role("button", name="Save profile").click()
        await expect(page.get_by_text("Profile saved.")).to_be_visible()
        await expect(page.get_by_test_id("current-user")).to_have_text("Bea Browser")
        await page.get_by_label("New picture").set_input_files(str(picture))
        await page.get_by_role("button", name="Upload picture").click()
        avatar = page.get_by_test_id("avatar")
        await expect(avatar).to_be_visible()
        assert await avatar.evaluate("img => img.naturalWidth") == 256  # re-encoded, loaded
        await page.screenshot(path=screenshots / "account-1-profile.png", full_page=True)
        await page.get_by_role("link", name="Change password").click()
        await page.get_by_label("Current password").fill(PASSWORD)
        await page.get_by_label("New password").fill(NEW_PASSWORD)
        await page.get_by_label("Repeat the password").fill(NEW_PASSWORD)
        await page.get_by_role("button", name="Change password").click()
        await expect(page.get_by_text("Password changed.")).to_be_visible()
        # Still signed in in this browser
        await page.get_by_role("link", name="Dashboard").click()
        await expect(page).to_have_url(f"{page.base}/portal/")
    fresh = in_tenant(org_y, User.objects.get, pk=me.pk)
    assert (fresh.display_name, fresh.title, fresh.time_zone) == (
        "Bea Browser",
        "Billing",
        "America/New_York",
    )
    assert in_tenant(org_y, lambda: User.objects.get(pk=me.pk).check_password(NEW_PASSWORD))


async def test_a_compliance_officer_places_and_releases_a_legal_hold(
    server, org_y, chromium, screenshots, new_session
):
    from playwright.async_api import expect

    officer = make_user(org_y, role="compliance_officer")
    subject = new_session(org_y)
    async with browser_page(chromium, org_y, server) as page:
        await sign_in(page, officer.username)
        await _nav(page, "Retention").click()
        await page.get_by_label("Keep messages for (days)").fill("90")
        await page.get_by_role("button", name="Save retention").click()
        await expect(page.get_by_test_id("effective-days")).to_have_text("90")
        form = page.get_by_test_id("hold-form")
        await form.get_by_label("Username").fill(subject.user.username)
        await form.get_by_label("Reason").fill("Case 2026-17")
        await form.get_by_role("button", name="Place hold").click()
        await expect(page.get_by_text("Legal hold placed")).to_be_visible()
        hold = in_tenant(org_y, LegalHold.objects.get)
        row = page.get_by_test_id("holds-table").locator(f'tr[data-hold-id="{hold.pk}"]')
        await expect(row).to_contain_text(subject.user.username)
        await expect(row).to_contain_text("Case 2026-17")
        await expect(row).to_contain_text(officer.username)
        await page.screenshot(path=screenshots / "retention-1-hold.png", full_page=True)
        await row.get_by_label("Why release it").fill("Matter settled")
        await row.get_by_role("button", name="Release").click()
        await expect(page.get_by_text("Legal hold released")).to_be_visible()
        released = page.get_by_test_id("released-table")
        await expect(released).to_contain_text("Case 2026-17")
        await expect(page.get_by_test_id("history-table")).to_contain_text("legal_hold.released")
    (entry,) = in_tenant(
        org_y, lambda: list(AuditEntry.objects.filter(event="legal_hold.released"))
    )
    assert entry.data["reason"] == "Matter settled" and entry.actor_id == officer.pk


async def test_an_admin_ends_a_users_session_and_signs_them_out_everywhere(
    server, org_y, chromium, screenshots, new_session, portal
):
    from playwright.async_api import expect

    admin = make_user(org_y, role="security_desk")
    victim = new_session(org_y, role="security_desk")  # a peer: no code the desk lacks
    other_browser = portal(org_y)
    other_browser.http.headers["User-Agent"] = "OtherBrowser/3.1"
    assert other_browser.login(victim.user.username).status_code == 302
    ws = await authed_socket(server, victim)
    try:
        async with browser_page(chromium, org_y, server) as page:
            await sign_in(page, admin.username)
            await page.goto(f"{page.base}/portal/users/{victim.user.pk}/")
            sessions = page.get_by_test_id("sessions-table")
            await expect(sessions).to_contain_text("OtherBrowser/3.1")
            devices = page.get_by_test_id("devices-table")
            await expect(devices).to_contain_text("127.0.0.1")  # where the device connected
            await page.screenshot(path=screenshots / "sessions-1-user.png", full_page=True)
            await sessions.get_by_role("button", name="End").click()
            await expect(page.get_by_text("Ended a portal session")).to_be_visible()
            assert other_browser.get("/portal/").status_code == 302
            await page.get_by_role("button", name="Sign out everywhere").click()
            await expect(page.get_by_text("Signed " + victim.user.username)).to_be_visible()
            await recv_type(ws, "device.revoked", timeout=10)
            assert await wait_closed(ws, timeout=10) == 4403
    finally:
        await ws.close()


async def test_the_dashboard_shows_activity(server, org_y, chromium, screenshots, new_session):
    from playwright.async_api import expect

    alice, bob = new_session(org_y), new_session(org_y)
    conversation = start_conversation(alice, bob)["id"]
    assert send_body(alice, conversation).status_code == 201
    admin = make_user(org_y, role="admin")
    ws = await authed_socket(server, bob)
    try:
        await sockets_counted(org_y, 1)
        async with browser_page(chromium, org_y, server) as page:
            await sign_in(page, admin.username)
            await expect(page.get_by_test_id("open-sockets")).to_have_text("1")
            await expect(page.get_by_test_id("seen-users")).to_have_text("3")
            chart = page.get_by_test_id("messages-chart")
            await expect(chart.locator("meter")).to_have_count(14)
            values = await chart.locator("meter").evaluate_all("ms => ms.map(m => m.value)")
            assert sum(values) == 1
            await page.screenshot(path=screenshots / "dashboard-activity.png", full_page=True)
    finally:
        await ws.close()


# --- domains: a real DNS server, two host names in the browser -------------------------------


@contextlib.asynccontextmanager
async def two_host_browser(chromium, hosts: list[str]):
    from playwright.async_api import async_playwright

    rules = ", ".join(f"MAP {host} 127.0.0.1" for host in hosts)
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=chromium, args=[*CHROMIUM_ARGS, f"--host-resolver-rules={rules}"]
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            requested, failures = [], []
            page.on("request", lambda r: requested.append(r.url))
            page.on(
                "response",
                lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 500 else None,
            )
            yield page
            assert {urlsplit(u).hostname for u in requested} <= set(hosts)  # PITFALLS 25
            assert failures == []
        finally:
            await browser.close()


async def test_an_owner_adds_a_domain_proves_it_and_signs_in_through_it(
    dns, dns_web, chromium, screenshots
):
    from playwright.async_api import expect

    org = create_org(unique("sbd"), f"{unique('h')}.test")
    owner = make_user(org, role="owner")
    primary, added = host_of(org), f"{unique('chat')}.example.test"
    async with two_host_browser(chromium, [primary, added]) as page:
        page.base = f"http://{primary}:{dns_web.port}"
        await sign_in(page, owner.username)
        await _nav(page, "Domains").click()
        await page.get_by_label("Host name").fill(added)
        await page.get_by_role("button", name="Add").click()
        row = page.get_by_test_id("domains-table").locator(f'tr[data-domain="{added}"]')
        await expect(row).to_contain_text("Waiting for DNS")
        txt_name = await row.get_by_test_id("txt-name").inner_text()
        txt_value = await row.get_by_test_id("txt-value").inner_text()
        await row.get_by_role("button", name=f"Verify {added}").click()
        await expect(row.get_by_test_id("last-error")).to_contain_text("no TXT record")
        dns.set_txt(txt_name, txt_value)
        await row.get_by_role("button", name=f"Verify {added}").click()
        await expect(row).to_contain_text("Verified")
        await page.screenshot(path=screenshots / "domains-1-verified.png", full_page=True)
        # The new name serves the portal's sign-in at once, in the same browser
        await page.get_by_role("button", name="Sign out").click()
        page.base = f"http://{added}:{dns_web.port}"
        await sign_in(page, owner.username)
        await expect(page).to_have_url(f"{page.base}/portal/")
        await _nav(page, "Domains").click()
        await expect(
            page.get_by_test_id("domains-table").locator(f'tr[data-domain="{added}"]')
        ).to_contain_text("you are here")
