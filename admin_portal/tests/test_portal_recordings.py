"""The portal's Recordings pages and the Retention page's quotas over real HTTP: compliance
officers list, search, read and play recordings (each read audited), other roles are
refused and another org's ids are 404s; the recording policy form (off / everyone /
chosen roles and people); quotas typed in binary units with their errors."""

from __future__ import annotations

import re
import uuid

import pytest

from admin_portal.tests.conftest import Portal
from calls.models import Call, CallParticipant, Recording, RecordingPolicy
from calls.services.recording_audio import wav_header
from calls.tests.recording_support import make_stored_recording, stereo_pcm, tone
from messaging.models import MessagingPolicy
from orgs.accounts.models import AuditEntry
from orgs.services import audit
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, make_user, unique

SAID = "please send the quarterly report tomorrow"
TRANSCRIPT = {
    "engine": "pocketsphinx",
    "segments": [
        {"start": 0.2, "end": 0.9, "speaker": "caller", "text": SAID},
        {"start": 1.1, "end": 1.8, "speaker": "callee", "text": "will do"},
    ],
    "text": f"caller: {SAID}\ncallee: will do",
}
AUDIO = stereo_pcm(tone(440, 2), tone(880, 2))


def _audit(org, event: str, **filters) -> list[AuditEntry]:
    return in_tenant(
        org, lambda: list(AuditEntry.objects.filter(event=event, **filters).order_by("id"))
    )


def _signed_in(server, org, user) -> Portal:
    client = Portal(server, org)
    response = client.login(user.username)
    assert response.status_code == 302, response.text
    return client


@pytest.fixture
def recorded(media_root):
    """An org with a compliance officer and one stored, transcribed recording of a call
    from alice to bob."""
    org = create_org(unique("rp"), f"{unique('h')}.test")
    officer = make_user(org, role="compliance_officer")
    alice, bob = make_user(org), make_user(org)
    rec = in_tenant(org, make_stored_recording, alice, bob, audio=AUDIO, transcript=TRANSCRIPT)
    return org, officer, alice, bob, rec


def _row(page_text: str, rec_id) -> str:
    return page_text.split(f'data-recording-id="{rec_id}"')[1].split("</tr>")[0]


def test_an_officer_lists_searches_reads_and_plays_a_recording_each_read_audited(server, recorded):
    org, officer, alice, bob, rec = recorded
    client = _signed_in(server, org, officer)

    listed = client.get("/portal/recordings/")
    assert listed.status_code == 200
    row = _row(listed.text, rec.pk)
    assert alice.username in row and "(caller)" in row
    assert bob.username in row and "(callee)" in row
    assert "0:02" in row and "stored" in row and "done" in row

    found = client.get("/portal/recordings/", params={"q": "QUARTERLY tomorrow"})
    assert found.status_code == 200 and SAID in _row(found.text, rec.pk)
    missed = client.get("/portal/recordings/", params={"q": "quarterly yesterday"})
    assert missed.status_code == 200 and f'data-recording-id="{rec.pk}"' not in missed.text
    assert "No transcript holds all of these words" in missed.text

    detail = client.get(f"/portal/recordings/{rec.pk}/")
    assert detail.status_code == 200
    assert SAID in detail.text and "will do" in detail.text
    player = re.search(r'<audio controls preload="none" src="([^"]+)"', detail.text)
    assert player and player.group(1) == f"/portal/recordings/{rec.pk}/audio.wav"

    audio = client.get(player.group(1))
    assert audio.status_code == 200
    assert audio.headers["content-type"] == "audio/wav"
    assert audio.headers["content-disposition"].startswith("inline;")
    assert "no-store" in audio.headers["cache-control"]
    assert "script-src 'none'" in audio.headers["content-security-policy"]
    assert audio.content == wav_header(len(AUDIO) // 4) + AUDIO
    saved = client.get(player.group(1), params={"download": "1"})
    assert saved.headers["content-disposition"].startswith("attachment;")

    searched = _audit(org, "call.recordings_searched", actor_id=officer.pk)
    assert [e.data["query"] for e in searched] == [False, True, True]
    accessed = _audit(org, "call.recording_accessed", actor_id=officer.pk)
    assert [(e.target_id, e.data["what"]) for e in accessed] == [
        (str(rec.pk), "transcript"),
        (str(rec.pk), "audio"),
        (str(rec.pk), "audio"),
    ]


def test_bad_searches_and_pages_are_a_400_page(server, recorded):
    org, officer, *_ = recorded
    client = _signed_in(server, org, officer)
    too_long = client.get("/portal/recordings/", params={"q": "x" * 201})
    assert too_long.status_code == 400 and "at most 200 characters" in too_long.text
    for before in ("yesterday", "2024-01-01T00:00:00", "\u00b2"):
        bad = client.get("/portal/recordings/", params={"before": before})
        assert bad.status_code == 400 and 'data-testid="search-error"' in bad.text


def test_pages_go_back_in_time_without_repeating_a_recording(server, recorded):
    from datetime import timedelta

    from calls.services import recording_access

    org, officer, alice, bob, first = recorded
    more = [
        in_tenant(
            org,
            make_stored_recording,
            alice,
            bob,
            audio=AUDIO,
            transcript=TRANSCRIPT,
            ended_ago=timedelta(hours=n),
        )
        for n in range(1, 4)
    ]
    for n, rec in enumerate([first, *more]):  # distinct creation times, newest first
        in_tenant(
            org,
            lambda rec=rec, n=n: Recording.objects.filter(pk=rec.pk).update(
                created_at=rec.created_at - timedelta(minutes=n)
            ),
        )
    client = _signed_in(server, org, officer)
    api_page = in_tenant(
        org, recording_access.check_search, actor=audit.Actor.system("tests"), limit=2
    )
    assert len(api_page.recordings) == 2 and api_page.next_before
    older = client.get("/portal/recordings/", params={"before": api_page.next_before})
    shown = re.findall(r'data-recording-id="([^"]+)"', older.text)
    assert shown == [str(rec.pk) for rec in more[1:]]


def test_other_roles_are_refused_and_another_orgs_ids_are_not_found(server, recorded, org_b):
    org, officer, alice, bob, rec = recorded
    paths = [
        "/portal/recordings/",
        f"/portal/recordings/{rec.pk}/",
        f"/portal/recordings/{rec.pk}/audio.wav",
    ]
    # An admin manages the policy but does not listen to calls (recordings.read).
    admin = _signed_in(server, org, make_user(org, role="admin"))
    for path in paths:
        refused = admin.get(path)
        assert refused.status_code == 403 and "does not include access" in refused.text
    nav = admin.get("/portal/")
    assert 'href="/portal/recordings/policy"' in nav.text
    assert 'href="/portal/recordings/"' not in nav.text

    outsider = _signed_in(
        server, org_b, make_user(org_b, role="compliance_officer")
    )  # another org's officer
    for path in paths[1:]:
        assert outsider.get(path).status_code == 404
    assert f'data-recording-id="{rec.pk}"' not in outsider.get("/portal/recordings/").text
    client = _signed_in(server, org, officer)
    assert client.get(f"/portal/recordings/{uuid.uuid4()}/").status_code == 404
    assert client.get(f"/portal/recordings/{uuid.uuid4()}/audio.wav").status_code == 404
    # Nothing of the refused or unknown reads reached the audit log as an access.
    assert _audit(org, "call.recording_accessed") == []


def test_a_recording_not_yet_stored_has_no_player_and_no_audio(server, recorded):
    org, officer, alice, bob, _ = recorded

    def pending():
        call = Call.objects.create(media="audio", caller=alice, caller_device_id=1)
        CallParticipant.objects.create(call=call, user=alice, role="caller", device_id=1)
        CallParticipant.objects.create(call=call, user=bob, role="callee", device_id=1)
        return Recording.objects.create(call=call)

    rec = in_tenant(org, pending)
    client = _signed_in(server, org, officer)
    page = client.get(f"/portal/recordings/{rec.pk}/")
    assert page.status_code == 200
    assert "<audio" not in page.text and "The call is not over yet" in page.text
    assert client.get(f"/portal/recordings/{rec.pk}/audio.wav").status_code == 404


# --- the recording policy ---------------------------------------------------------------


def _policy(org) -> RecordingPolicy:
    from calls.services import recording_policy

    return in_tenant(org, recording_policy.get_policy)


def test_the_recording_policy_form_turns_recording_on_for_everyone_chosen_people_or_off(
    server, org_b
):
    org = create_org(unique("rpol"), f"{unique('h')}.test")
    admin = make_user(org, role="admin")
    alice, bob = make_user(org), make_user(org)
    stranger = make_user(org_b)
    client = _signed_in(server, org, admin)

    page = client.get("/portal/recordings/policy")
    assert page.status_code == 200
    assert 'data-testid="client-support"' in page.text and "recording_refused" in page.text
    assert "<strong>off</strong>" in page.text
    assert re.search(r'value="off"[^>]*checked', page.text)

    everyone = client.post("/portal/recordings/policy", {"mode": "everyone"})
    assert everyone.status_code == 302
    assert _policy(org).everyone is True

    client.get("/portal/recordings/policy")
    chosen = client.post(
        "/portal/recordings/policy",
        {
            "mode": "chosen",
            "roles": ["member"],
            "usernames": f"{alice.username},\n{bob.username.upper()}",
        },
    )
    assert chosen.status_code == 302
    policy = _policy(org)
    assert (policy.everyone, policy.roles) == (False, ["member"])
    assert sorted(policy.user_ids) == sorted([str(alice.pk), str(bob.pk)])
    shown = client.get("/portal/recordings/policy").text
    state = shown.split('data-testid="policy-state"')[1].split("</p>")[0]
    assert alice.username in state and bob.username in state and "Member" in state

    # Refused with the reason on the form; nothing changes.
    nothing = client.post("/portal/recordings/policy", {"mode": "chosen"})
    assert nothing.status_code == 400 and "Choose at least one role or person" in nothing.text
    for name in ("nobody-here", stranger.username):  # another org's user is nobody here
        client.get("/portal/recordings/policy")
        unknown = client.post("/portal/recordings/policy", {"mode": "chosen", "usernames": name})
        assert unknown.status_code == 400 and "No user is called" in unknown.text
    client.get("/portal/recordings/policy")
    bad_role = client.post("/portal/recordings/policy", {"mode": "chosen", "roles": ["pope"]})
    assert bad_role.status_code == 400
    assert client.post("/portal/recordings/policy", {"mode": "sometimes"}).status_code == 400
    assert sorted(_policy(org).user_ids) == sorted([str(alice.pk), str(bob.pk)])

    client.get("/portal/recordings/policy")
    off = client.post(
        "/portal/recordings/policy", {"mode": "off", "roles": ["member"], "usernames": "x"}
    )
    assert off.status_code == 302
    policy = _policy(org)
    assert (policy.everyone, policy.roles, policy.user_ids) == (False, [], [])

    changes = _audit(org, "call.recording_policy_changed")
    assert {e.actor_id for e in changes} == {admin.pk}
    assert [(e.data["field"], e.data["after"]) for e in changes] == [
        ("everyone", True),
        ("everyone", False),
        ("roles", ["member"]),
        ("user_ids", sorted([str(alice.pk), str(bob.pk)])),
        ("roles", []),
        ("user_ids", []),
    ]


def test_roles_without_compliance_manage_cannot_open_the_policy(server, org_p):
    biller = make_user(org_p, role="billing_admin")  # portal access, no compliance.manage
    client = _signed_in(server, org_p, biller)
    page = client.get("/portal/recordings/policy")
    assert page.status_code == 403
    refused = client.post("/portal/recordings/policy", {"mode": "everyone"})
    assert refused.status_code == 403


# --- quotas on the Retention page -------------------------------------------------------


def test_quotas_are_typed_in_binary_units_checked_and_audited(server):
    org = create_org(unique("quota"), f"{unique('h')}.test")
    officer = make_user(org, role="compliance_officer")
    client = _signed_in(server, org, officer)
    page = client.get("/portal/retention/")
    assert page.status_code == 200
    storage = page.text.split('data-testid="quota-attachment_storage_quota_bytes"')[1]
    assert '<span data-testid="effective">100 GiB</span> (the server default)' in storage
    assert 'data-testid="storage-used">0 bytes<' in page.text

    saved = client.post(
        "/portal/retention/quotas",
        {
            "attachment_max_bytes_amount": "50",
            "attachment_max_bytes_unit": "MiB",
            "attachment_storage_quota_bytes_amount": "1.5",
            "attachment_storage_quota_bytes_unit": "GiB",
            "unsent_upload_quota_bytes_amount": "",
            "unsent_upload_quota_bytes_unit": "GiB",
            "device_queue_max": "5000",
        },
    )
    assert saved.status_code == 302, saved.text
    policy = in_tenant(org, MessagingPolicy.objects.get)
    assert policy.attachment_max_bytes == 50 * 2**20
    assert policy.attachment_storage_quota_bytes == 3 * 2**29
    assert policy.unsent_upload_quota_bytes is None
    assert policy.device_queue_max == 5000
    page = client.get("/portal/retention/")
    storage = page.text.split('data-testid="quota-attachment_storage_quota_bytes"')[1]
    assert '<span data-testid="effective">1.5 GiB</span>.' in storage
    assert 'value="1536"' in storage  # shown exactly: 1,536 MiB
    changed = _audit(org, "retention.policy_changed")
    assert sorted(e.data["field"] for e in changed) == [
        "attachment_max_bytes",
        "attachment_storage_quota_bytes",
        "device_queue_max",
    ]
    assert {e.actor_id for e in changed} == {officer.pk}

    # Saving the form as shown changes nothing and writes nothing.
    same = client.post(
        "/portal/retention/quotas",
        {
            "attachment_max_bytes_amount": "50",
            "attachment_max_bytes_unit": "MiB",
            "attachment_storage_quota_bytes_amount": "1536",
            "attachment_storage_quota_bytes_unit": "MiB",
            "unsent_upload_quota_bytes_unit": "GiB",
            "device_queue_max": "5000",
        },
    )
    assert same.status_code == 302
    assert len(_audit(org, "retention.policy_changed")) == 3

    # Out of range, not a number, too precise: the form again with the reason.
    for field, value, unit, said in [
        ("attachment_max_bytes", "2", "TiB", "Between 1 byte and 1 GiB"),
        ("attachment_storage_quota_bytes", "-1", "GiB", "greater than or equal to 0"),
        ("attachment_storage_quota_bytes", "0", "GiB", "Between 1 byte and"),
        ("unsent_upload_quota_bytes", "lots", "GiB", "Enter a number"),
        ("unsent_upload_quota_bytes", "1.0001", "GiB", "decimal places"),
        ("unsent_upload_quota_bytes", "1", "PiB", "Select a valid choice"),
    ]:
        client.get("/portal/retention/")
        refused = client.post(
            "/portal/retention/quotas",
            {f"{field}_amount": value, f"{field}_unit": unit, "device_queue_max": "5000"},
        )
        assert refused.status_code == 400, (field, value)
        assert said in refused.text, (field, value, said)
    client.get("/portal/retention/")
    too_many = client.post("/portal/retention/quotas", {"device_queue_max": "1000001"})
    assert too_many.status_code == 400
    assert len(_audit(org, "retention.policy_changed")) == 3
    assert in_tenant(org, MessagingPolicy.objects.get).device_queue_max == 5000


def test_audio_that_cannot_be_read_is_a_503_page_not_a_broken_download(server, recorded):
    from calls.services import recording_store

    org, officer, alice, bob, rec = recorded
    client = _signed_in(server, org, officer)
    # The blob store lost the file (a disk or bucket fault): 503 before any byte, with
    # Retry-After, and no access is recorded for audio nobody got.
    in_tenant(org, lambda: recording_store.storage().delete(rec.storage_name))
    gone = client.get(f"/portal/recordings/{rec.pk}/audio.wav")
    assert gone.status_code == 503 and "Retry-After" in gone.headers
    assert "cannot be read" in gone.text
    # A blob that does not decrypt as this recording's (another recording's bytes).
    other = in_tenant(org, make_stored_recording, alice, bob, audio=AUDIO, transcript=TRANSCRIPT)
    in_tenant(
        org,
        lambda: Recording.objects.filter(pk=rec.pk).update(storage_name=other.storage_name),
    )
    corrupt = client.get(f"/portal/recordings/{rec.pk}/audio.wav")
    assert corrupt.status_code == 503 and "does not decrypt" in corrupt.text
    api = client.http.get(f"/portal/recordings/{rec.pk}/")
    assert api.status_code == 200  # the page itself still opens, with its transcript
    assert _audit(org, "call.recording_accessed", data__what="audio") == []
