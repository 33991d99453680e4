"""Joining and signing in the first time, in a real headless Chromium (Debian's, via
Playwright): accepting an invitation link, and being made to set up two-factor
authentication at sign-in when the org's policy requires it."""

from __future__ import annotations

import time

import pytest

from admin_portal.tests.test_portal_admin_browser import browser_page, sign_in, totp
from orgs.accounts.models import AuditEntry, User
from orgs.services import audit, mfa, users
from siphera.tenancy import in_tenant
from tests.fixtures import PASSWORD, Api, create_org, host_of, make_user, unique

pytestmark = pytest.mark.browser


@pytest.fixture
def org_y():
    return create_org(unique("b"), f"{unique('h')}.test")


def _events(org, event: str, **match) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event, **match)))


async def test_an_invited_user_sets_a_password_through_the_link_and_signs_in(
    server, org_y, chromium, screenshots
):
    from playwright.async_api import expect

    # Given an invitation for a new user manager (the link an admin would pass on)
    name = unique()
    invited, token = in_tenant(
        org_y,
        users.check_invite_user,
        username=name,
        role="user_manager",
        display_name="Dana Invitee",
        actor=audit.Actor.system("tests"),
    )
    async with browser_page(chromium, org_y, server) as page:
        # When they open the link, the page greets them by name
        await page.goto(f"{page.base}/portal/invite/{token}")
        await expect(page.get_by_role("heading", level=1)).to_have_text(org_y.name)
        await expect(page.locator("main")).to_contain_text("Welcome, Dana Invitee")
        await page.screenshot(path=screenshots / "invite-1-open.png", full_page=True)

        # A mismatch is refused on the page, and nothing is set
        await page.get_by_label("New password").fill(PASSWORD)
        await page.get_by_label("Repeat the password").fill(PASSWORD + "x")
        await page.get_by_role("button", name="Set password").click()
        await expect(page.locator("main")).to_contain_text("The two passwords differ.")
        assert not in_tenant(org_y, User.objects.get, pk=invited.pk).has_usable_password()

        # Then with matching passwords they are done
        await page.get_by_label("New password").fill(PASSWORD)
        await page.get_by_label("Repeat the password").fill(PASSWORD)
        await page.get_by_role("button", name="Set password").click()
        await expect(page.get_by_role("status")).to_contain_text("Your password is set")
        await page.screenshot(path=screenshots / "invite-2-done.png", full_page=True)

        # And the link is spent: opening it again finds nothing
        await page.goto(f"{page.base}/portal/invite/{token}")
        await expect(page.get_by_role("heading", name="Not found")).to_be_visible()

        # And the new password signs them in to the portal
        await sign_in(page, name)
        await expect(page).to_have_url(f"{page.base}/portal/")
        await expect(page.get_by_test_id("current-user")).to_have_text("Dana Invitee")

    [accepted] = _events(org_y, "member.invitation_accepted", target_id=str(invited.pk))
    assert accepted.actor_id == invited.pk and accepted.ip == "127.0.0.1"
    # The same password works for the apps as well.
    login = Api(server, host_of(org_y)).post(
        "/api/v1/auth/login", json={"username": name, "password": PASSWORD}
    )
    assert login.status_code == 200, login.text


async def test_an_admin_must_set_up_two_factor_before_the_first_session_starts(
    server, org_y, chromium, screenshots
):
    from playwright.async_api import expect

    # Given an org requiring two-factor for everyone with portal access, and an admin
    # who has none yet
    in_tenant(
        org_y, mfa.check_set_mfa_policy, "required_for_admins", actor=audit.Actor.system("tests")
    )
    admin = make_user(org_y, role="admin")
    async with browser_page(chromium, org_y, server) as page:
        # When they sign in with the right password, they land on the set-up page
        await sign_in(page, admin.username)
        await expect(page).to_have_url(f"{page.base}/portal/login/setup-mfa")
        await expect(page.locator("main")).to_contain_text("requires two-factor")

        # And no session exists yet: the portal sends them back to sign in
        await page.goto(f"{page.base}/portal/users/")
        await expect(page).to_have_url(f"{page.base}/portal/login?next=/portal/users/")
        await page.goto(f"{page.base}/portal/login/setup-mfa")

        # Then they set up the authenticator from the QR code's key
        await page.get_by_role("button", name="Set up authenticator app").click()
        await expect(page.get_by_test_id("totp-qr").locator("svg")).to_be_visible()
        secret = (await page.get_by_test_id("totp-secret").inner_text()).replace(" ", "")
        await page.screenshot(path=screenshots / "forced-mfa-1-qr.png", full_page=True)
        step = int(time.time() // 30)
        wrong = "000000" if totp(secret, step) != "000000" else "111111"
        await page.get_by_label("Authentication code").fill(wrong)
        await page.get_by_role("button", name="Turn on two-factor authentication").click()
        await expect(page.locator("main")).to_contain_text("wrong")
        await page.get_by_label("Authentication code").fill(totp(secret, step))
        await page.get_by_role("button", name="Turn on two-factor authentication").click()
        await expect(page.get_by_test_id("recovery-codes").locator("li")).to_have_count(10)
        await page.screenshot(path=screenshots / "forced-mfa-2-codes.png", full_page=True)

        # And only now are they signed in
        await page.get_by_role("link", name="I saved them — continue").click()
        await expect(page).to_have_url(f"{page.base}/portal/")
        await expect(page.get_by_test_id("current-user")).to_have_text(admin.username)

        # The next sign-in asks for a code after the password instead
        await page.get_by_role("button", name="Sign out").click()
        await sign_in(page, admin.username)
        await expect(page).to_have_url(f"{page.base}/portal/login/code")

    assert in_tenant(org_y, mfa.mfa_status, admin).enabled
    [enabled] = _events(org_y, "mfa.enabled", target_id=str(admin.pk))
    assert enabled.actor_id == admin.pk
    [session] = _events(org_y, "portal.logged_in", actor_id=admin.pk)
    assert session.data.get("method") == "password+totp"
