"""The Recordings pages and the Retention page's quotas in a real headless Chromium
(Debian's, via Playwright): a compliance officer finds a call by a word of its transcript,
reads the transcript and plays the audio in the page's <audio> player under the portal's
CSP (no script); an admin sets who is recorded; a compliance officer sets quotas in GiB
and MiB and reads the form's errors."""

from __future__ import annotations

import asyncio

import pytest

from admin_portal.tests.test_portal_admin_browser import browser_page, sign_in
from calls.models import RecordingPolicy
from calls.tests.recording_support import make_stored_recording, stereo_pcm, tone
from messaging.models import MessagingPolicy
from orgs.accounts.models import AuditEntry
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, make_user, unique

pytestmark = pytest.mark.browser

SAID = "the shipment leaves on thursday"
TRANSCRIPT = {
    "engine": "pocketsphinx",
    "segments": [{"start": 0.3, "end": 1.5, "speaker": "caller", "text": SAID}],
    "text": f"caller: {SAID}",
}
SECONDS = 2


def _nav(page, name: str):
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name)


@pytest.fixture
def org_r():
    return create_org(unique("brec"), f"{unique('h')}.test")


async def test_an_officer_finds_reads_and_plays_a_recording(
    server, org_r, chromium, screenshots, media_root
):
    from playwright.async_api import expect

    officer = make_user(org_r, role="compliance_officer")
    alice, bob = make_user(org_r), make_user(org_r)
    audio = stereo_pcm(tone(440, SECONDS), tone(660, SECONDS))
    rec = in_tenant(org_r, make_stored_recording, alice, bob, audio=audio, transcript=TRANSCRIPT)
    async with browser_page(chromium, org_r, server) as page:
        refused = []  # what the CSP blocked, as Chromium reports it
        page.on(
            "console",
            lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
        )
        await sign_in(page, officer.username)
        await _nav(page, "Recordings").click()
        await page.get_by_label("Words in the transcript").fill("Thursday shipment")
        await page.get_by_role("button", name="Search").click()
        row = page.get_by_test_id("recordings-table").locator(f'tr[data-recording-id="{rec.pk}"]')
        await expect(row).to_contain_text(alice.username)
        await expect(row).to_contain_text(bob.username)
        await expect(row.get_by_test_id("matches")).to_contain_text(SAID)
        await page.screenshot(path=screenshots / "recordings-1-search.png", full_page=True)

        await row.get_by_role("link").first.click()
        await expect(page.get_by_test_id("transcript")).to_contain_text(SAID)
        await expect(page.get_by_test_id("length")).to_have_text("0:02")
        player = page.get_by_test_id("player")
        await expect(player).to_be_visible()
        # Played as a person would press play: the browser fetches the portal URL, the
        # WAV decodes to the call's length and plays to its end.
        await player.evaluate("a => { a.muted = true; return a.play(); }")
        await expect(player).to_have_js_property("ended", True, timeout=30_000)
        duration = await player.evaluate("a => a.duration")
        assert abs(duration - SECONDS) < 0.05, duration
        assert await player.evaluate("a => a.error") is None
        await page.screenshot(path=screenshots / "recordings-2-played.png", full_page=True)
        await asyncio.sleep(0.2)
    assert refused == []
    accessed = in_tenant(
        org_r,
        lambda: list(
            AuditEntry.objects.filter(event="call.recording_accessed").values_list(
                "actor_id", "data"
            )
        ),
    )
    whats = [data["what"] for _, data in accessed]
    assert "transcript" in whats and "audio" in whats
    assert {actor for actor, _ in accessed} == {officer.pk}


async def test_an_admin_chooses_who_is_recorded(server, org_r, chromium, screenshots):
    from playwright.async_api import expect

    admin = make_user(org_r, role="admin")
    carol = make_user(org_r)
    async with browser_page(chromium, org_r, server) as page:
        await sign_in(page, admin.username)
        await _nav(page, "Recording").click()
        await expect(page.get_by_test_id("client-support")).to_contain_text("recording_refused")
        await expect(page.get_by_test_id("policy-state")).to_contain_text("off")

        form = page.get_by_test_id("recording-policy-form")
        await form.get_by_label("1:1 calls of the roles and people chosen below").check()
        await form.get_by_role("button", name="Save policy").click()
        await expect(page.get_by_test_id("form-error")).to_contain_text(
            "Choose at least one role or person"
        )

        form = page.get_by_test_id("recording-policy-form")
        await form.get_by_label("Security Desk").check()
        await form.get_by_label("People (usernames)").fill(f"{carol.username}\nnobody-at-all")
        await form.get_by_role("button", name="Save policy").click()
        await expect(page.get_by_text("No user is called 'nobody-at-all'")).to_be_visible()

        form = page.get_by_test_id("recording-policy-form")
        await form.get_by_label("People (usernames)").fill(carol.username)
        await form.get_by_role("button", name="Save policy").click()
        await expect(page.get_by_text("Recording policy saved.")).to_be_visible()
        state = page.get_by_test_id("policy-state")
        await expect(state).to_contain_text(carol.username)
        await expect(state).to_contain_text("Security Desk")
        await page.screenshot(path=screenshots / "recordings-3-policy.png", full_page=True)
    policy = in_tenant(org_r, RecordingPolicy.objects.get)
    assert (policy.everyone, policy.roles, policy.user_ids) == (
        False,
        ["security_desk"],
        [str(carol.pk)],
    )


async def test_an_officer_sets_quotas_in_binary_units(server, org_r, chromium, screenshots):
    from playwright.async_api import expect

    officer = make_user(org_r, role="compliance_officer")
    async with browser_page(chromium, org_r, server) as page:
        await sign_in(page, officer.username)
        await _nav(page, "Retention").click()
        form = page.get_by_test_id("quota-form")
        storage = form.get_by_label("Attachment storage for the org", exact=True)
        await storage.fill("250")
        await form.get_by_label("Attachment storage for the org: unit").select_option("GiB")
        await form.get_by_label("Uploads not yet sent, per user", exact=True).fill("512")
        await form.get_by_label("Uploads not yet sent, per user: unit").select_option("MiB")
        await form.get_by_label("Messages queued per device").fill("20000")
        await form.get_by_role("button", name="Save quotas").click()
        await expect(page.get_by_text("Quotas saved.")).to_be_visible()
        await expect(page.get_by_test_id("storage-quota")).to_have_text("250 GiB")
        row = page.get_by_test_id("quota-unsent_upload_quota_bytes")
        await expect(row.get_by_test_id("effective")).to_have_text("512 MiB")

        form = page.get_by_test_id("quota-form")
        await form.get_by_label("Largest attachment", exact=True).fill("3")
        await form.get_by_label("Largest attachment: unit").select_option("GiB")
        await form.get_by_role("button", name="Save quotas").click()
        error = page.get_by_test_id("quota-attachment_max_bytes").locator(".field-error")
        await expect(error).to_contain_text("Between 1 byte and 1 GiB")
        await page.screenshot(path=screenshots / "retention-2-quotas.png", full_page=True)
    policy = in_tenant(org_r, MessagingPolicy.objects.get)
    assert policy.attachment_storage_quota_bytes == 250 * 2**30
    assert policy.unsent_upload_quota_bytes == 512 * 2**20
    assert policy.device_queue_max == 20000
    assert policy.attachment_max_bytes is None
