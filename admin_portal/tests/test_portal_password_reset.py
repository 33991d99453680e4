"""The portal's forgot-password pages and an admin's "Send password reset", over HTTP and
in a real headless Chromium, with the mail read from the run's real SMTP server."""

from __future__ import annotations

import pytest

from orgs.accounts.models import AuditEntry, PasswordReset, User
from orgs.tests.test_passwords import wait_for_reset_row, with_email
from siphera.tenancy import in_tenant
from tests.fixtures import PASSWORD, create_org, make_user, unique
from tests.smtp import link_in

NEW_PASSWORD = "Quiet-Harbour-Lamp-77"
RESET_LINK = r"/portal/password/reset/sph_r_"


@pytest.fixture
def org_r():
    return create_org(unique("pr"), f"{unique('h')}.test")


def test_the_sign_in_page_links_to_forgot_password(portal, org_r):
    page = portal(org_r).get("/portal/login")
    assert 'href="/portal/password/forgot"' in page.text


def test_the_forgot_page_says_the_same_for_any_name(portal, org_r, celery_worker):
    known = with_email(org_r, make_user(org_r))
    client = portal(org_r)
    answers = []
    for name in (known.username, unique(), "nobody@nowhere.test"):
        client.get("/portal/password/forgot")
        answers.append(client.post("/portal/password/forgot", {"identifier": name}))
    assert {a.status_code for a in answers} == {200}
    assert all("Check your mail" in a.text for a in answers)
    assert len({a.text for a in answers}) == 1
    wait_for_reset_row(org_r, known)


def test_a_used_or_bogus_link_shows_a_clear_page_not_a_form(portal, org_r):
    client = portal(org_r)
    for token in ("sph_r_bogus", "nonsense"):
        page = client.get(f"/portal/password/reset/{token}")
        assert page.status_code == 400
        assert "This link does not work" in page.text and "csrfmiddlewaretoken" not in page.text


def test_the_reset_page_sets_the_password_once(portal, org_r, mailbox, celery_worker):
    user = with_email(org_r, make_user(org_r))
    client = portal(org_r)
    client.get("/portal/password/forgot")
    client.post("/portal/password/forgot", {"identifier": user.email})
    link = link_in(mailbox.wait_for(user.email, subject="Reset your"), RESET_LINK)
    path = "/portal/" + link.split("/portal/", 1)[1]
    page = client.get(path)
    assert page.status_code == 200 and user.username in page.text
    assert page.headers["referrer-policy"] == "same-origin"  # the token never leaves
    mismatch = client.post(path, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD + "x"})
    assert "The two passwords differ." in mismatch.text
    weak = client.post(path, {"password": "password", "confirm": "password"})
    assert "too short" in weak.text or "too common" in weak.text
    done = client.post(path, {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD})
    assert done.status_code == 200 and "Password changed" in done.text
    again = client.get(path)
    assert again.status_code == 400
    assert portal(org_r).login(user.username, NEW_PASSWORD).status_code in (302, 403)
    assert in_tenant(org_r, User.objects.get, pk=user.pk).check_password(NEW_PASSWORD)


def test_an_admin_sends_a_reset_from_the_users_page(signed_in_admin, org_p, mailbox, celery_worker):
    member = with_email(org_p, make_user(org_p))
    page = signed_in_admin.get(f"/portal/users/{member.pk}/")
    assert "Send password reset" in page.text
    sent = signed_in_admin.post(f"/portal/users/{member.pk}/password-reset")
    assert sent.status_code == 302
    mailbox.wait_for(member.email, subject="Reset your")
    entry = in_tenant(
        org_p,
        lambda: AuditEntry.objects.filter(
            event="member.password_reset_sent", target_id=str(member.pk)
        ).last(),
    )
    assert entry.actor_id == signed_in_admin.user.pk


def test_a_member_without_users_manage_cannot_send_a_reset(portal, org_p):
    viewer = make_user(org_p, role="user_manager")
    owner = with_email(org_p, make_user(org_p, role="owner"))
    client = portal(org_p)
    assert client.login(viewer.username).status_code == 302
    refused = client.post(f"/portal/users/{owner.pk}/password-reset")
    assert refused.status_code in (302, 403)
    assert in_tenant(org_p, PasswordReset.objects.filter(user_id=owner.pk).count) == 0


@pytest.mark.browser
async def test_forgot_password_in_a_browser_from_sign_in_to_new_password(
    server, org_r, chromium, screenshots, mailbox, celery_worker
):
    from playwright.async_api import expect

    from admin_portal.tests.test_portal_admin_browser import browser_page, sign_in

    user = with_email(org_r, make_user(org_r, role="admin"))
    async with browser_page(chromium, org_r, server) as page:
        # Given the sign-in page, when they follow "Forgot your password?" and give their address
        await page.goto(f"{page.base}/portal/login")
        await page.get_by_test_id("forgot-password").click()
        await page.get_by_label("Username or e-mail address").fill(user.email)
        await page.get_by_role("button", name="Send the link").click()
        await expect(page.get_by_test_id("reset-sent")).to_be_visible()
        await page.screenshot(path=screenshots / "reset-1-sent.png", full_page=True)

        # Then the mailed link opens the page that sets the new password
        link = link_in(mailbox.wait_for(user.email, subject="Reset your"), RESET_LINK)
        await page.goto(link)
        await page.get_by_label("New password").fill(NEW_PASSWORD)
        await page.get_by_label("Repeat the password").fill(NEW_PASSWORD)
        await page.get_by_role("button", name="Set password").click()
        await expect(page.get_by_test_id("reset-done")).to_be_visible()
        await page.screenshot(path=screenshots / "reset-2-done.png", full_page=True)

        # And a second use of the link is refused, while the new password signs in
        await page.goto(link)
        await expect(page.get_by_test_id("reset-invalid")).to_be_visible()
        await sign_in(page, user.username, NEW_PASSWORD)
        await expect(page).to_have_url(f"{page.base}/portal/")
    assert not in_tenant(org_r, User.objects.get, pk=user.pk).check_password(PASSWORD)


def test_the_policies_page_sets_the_minimum_password_length(portal, org_r):
    admin = make_user(org_r, role="admin")
    client = portal(org_r)
    assert client.login(admin.username).status_code == 302
    page = client.get("/portal/policies/")
    assert 'name="password_min_length"' in page.text and 'value="8"' in page.text
    form = {"mfa_policy": "off", "password_login": "on", "read_receipts": "on"}
    too_short = client.post("/portal/policies/", {**form, "password_min_length": "6"})
    assert too_short.status_code == 200 and "greater than or equal to 8" in too_short.text
    saved = client.post("/portal/policies/", {**form, "password_min_length": "14"})
    assert saved.status_code == 302
    from orgs.accounts.models import OrgPolicy

    assert in_tenant(org_r, OrgPolicy.objects.get, pk=1).password_min_length == 14
    entry = in_tenant(
        org_r,
        lambda: AuditEntry.objects.filter(
            event="org.policy_changed", target_id="password_min_length"
        ).last(),
    )
    assert (entry.data["before"], entry.data["after"]) == (8, 14)
