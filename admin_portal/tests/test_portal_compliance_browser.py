"""The Compliance page in a real headless Chromium (Debian's, via Playwright): a compliance
officer downloads a CSV export, finds a user, downloads their personal data and erases
them, reading what was kept and why."""

from __future__ import annotations

import json

import pytest
from django.utils import timezone

from admin_portal.tests.test_portal_admin_browser import browser_page, sign_in
from orgs.accounts.models import AuditEntry, User
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, make_user, unique

pytestmark = pytest.mark.browser


async def test_an_officer_exports_and_erases_a_user_in_the_browser(
    server, chromium, tmp_path, screenshots
):
    from playwright.async_api import expect

    org = create_org(unique("bc"), f"{unique('h')}.test")
    officer = make_user(org, role="compliance_officer")
    bob = make_user(org)
    today = timezone.now().date()
    async with browser_page(chromium, org, server) as page:
        await sign_in(page, officer.username)
        await page.get_by_role("link", name="Compliance").click()
        await page.get_by_label("From (UTC, inclusive)").fill(str(today))
        await page.get_by_label("To (UTC, exclusive)").fill(str(today.replace(year=today.year + 1)))
        await page.get_by_label("CSV").check()
        await page.screenshot(path=screenshots / "compliance-1-form.png", full_page=True)
        async with page.expect_download() as info:
            await page.get_by_role("button", name="Download").click()
        download = await info.value
        await download.save_as(tmp_path / "export.csv")
        assert (tmp_path / "export.csv").read_text().startswith("section,id,time")

        await page.goto(f"{page.base}/portal/compliance/")
        await page.get_by_label("Username").fill(bob.username)
        await page.get_by_role("button", name="Find").click()
        await expect(page.get_by_test_id("subject")).to_contain_text(bob.username)
        async with page.expect_download() as info:
            await page.get_by_test_id("personal-data-link").click()
        download = await info.value
        await download.save_as(tmp_path / "bob.json")
        assert json.loads((tmp_path / "bob.json").read_text())["user"]["id"] == str(bob.pk)

        await page.get_by_label("Reason (kept in the audit log)").fill("request 31")
        await page.get_by_label("Type the username to confirm").fill(bob.username)
        await page.get_by_role("button", name="Erase").click()
        await expect(page.get_by_test_id("kept")).to_contain_text("audit_entries")
        await page.screenshot(path=screenshots / "compliance-2-erased.png", full_page=True)

    stored = in_tenant(org, lambda: User.objects.get(pk=bob.pk))
    assert stored.username == f"erased-{bob.pk.hex}"
    events = in_tenant(org, lambda: set(AuditEntry.objects.values_list("event", flat=True)))
    assert {"compliance.exported", "member.personal_data_exported", "member.erased"} <= events
