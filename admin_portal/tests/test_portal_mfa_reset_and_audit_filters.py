"""The portal's MFA reset (done, refused, and its audit row) and the audit page's target
and time filters, over the real server."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import time

from orgs.accounts.models import AuditEntry
from orgs.services import audit, mfa
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, make_user, unique


def rfc6238(secret_b32: str, step: int) -> str:
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    return f"{(struct.unpack('>I', digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**6:06d}"


def _audit(org, event: str, **filters) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event, **filters)))


def _enable_totp(org, user) -> None:
    actor = audit.Actor.system("tests")
    secret = in_tenant(org, mfa.check_start_enrollment, user, actor=actor).secret
    code = rfc6238(secret, int(time.time()) // 30)
    in_tenant(org, mfa.check_confirm_enrollment, user, code, actor=actor)


def _fresh_org():
    return create_org(unique("p"), f"{unique('h')}.test")


# --- MFA reset and the audit page's other filters --------------------------------------------


def test_an_admin_resets_a_users_mfa_from_the_portal_and_it_is_audited(portal):
    # Given a member with TOTP and recovery codes, and a security desk signed in
    org = _fresh_org()
    member = make_user(org)
    _enable_totp(org, member)
    desk = make_user(org, role="security_desk")
    client = portal(org)
    client.login(desk.username)
    page = client.get(f"/portal/users/{member.pk}/")
    assert "Reset two-factor" in page.text
    # When they reset the member's two-factor
    reset = client.post(f"/portal/users/{member.pk}/mfa-reset", headers={"User-Agent": "ua/1"})
    # Then the factor and codes are gone, the page says so, and the reset is on record
    assert reset.status_code == 302 and reset.headers["location"] == f"/portal/users/{member.pk}/"
    assert "Reset two-factor authentication of" in client.get(reset.headers["location"]).text
    status = in_tenant(org, mfa.mfa_status, member)
    assert not status.enabled and status.recovery_codes_left == 0
    [entry] = _audit(org, "mfa.reset", target_id=str(member.pk))
    assert entry.actor_id == desk.pk and entry.actor_label == desk.username
    assert entry.ip == "127.0.0.1" and entry.user_agent == "ua/1"
    assert entry.target_type == "user"
    assert entry.data == {"username": member.username, "had_totp": True, "recovery_codes": 10}


def test_resetting_a_more_powerful_users_mfa_from_the_portal_is_refused_unrecorded(portal):
    org = _fresh_org()
    owner = make_user(org, role="owner")
    _enable_totp(org, owner)
    desk = make_user(org, role="security_desk")
    client = portal(org)
    client.login(desk.username)
    client.get(f"/portal/users/{owner.pk}/")
    refused = client.post(f"/portal/users/{owner.pk}/mfa-reset")
    assert refused.status_code == 302
    assert "permissions you lack" in client.get(refused.headers["location"]).text
    assert in_tenant(org, mfa.mfa_status, owner).enabled
    assert _audit(org, "mfa.reset") == []
    # And a role without mfa.reset is refused the action outright.
    viewer = make_user(org, role="compliance_officer")
    other = portal(org)
    other.login(viewer.username)
    other.get(f"/portal/users/{owner.pk}/")
    assert other.post(f"/portal/users/{owner.pk}/mfa-reset").status_code == 403
    assert _audit(org, "mfa.reset") == []


ENTRY_ID = re.compile(r'data-entry-id="(\d+)"')


def _shown(client, **params) -> list[int]:
    page = client.get("/portal/audit/", params=params)
    assert page.status_code == 200, page.text
    return [int(i) for i in ENTRY_ID.findall(page.text.split('data-testid="audit-table"')[1])]


def test_the_audit_page_filters_by_target_and_by_time(portal):
    # Given an org whose log has entries about two users at distinct times
    org = _fresh_org()
    owner = make_user(org, role="owner")
    first = make_user(org)
    second = make_user(org)
    client = portal(org)
    client.login(owner.username)
    entries = in_tenant(org, lambda: list(AuditEntry.objects.order_by("id")))

    # Then a target filter shows exactly the entries about that user
    about = _shown(client, target_type="user", target_id=str(second.pk))
    assert about == [e.id for e in entries if e.target_id == str(second.pk)] != []
    assert _shown(client, target_type="device") == []

    # And from (inclusive) / until (exclusive) cut the log at an entry's own time
    [made_first] = [e for e in entries if e.target_id == str(first.pk)]
    pivot = made_first.ts.isoformat()
    newer = _shown(client, since=pivot)
    assert made_first.id in newer and all(e.id in newer for e in entries if e.ts >= made_first.ts)
    assert all(e.id not in newer for e in entries if e.ts < made_first.ts)
    older = _shown(client, until=pivot)
    assert older == [e.id for e in reversed(entries) if e.ts < made_first.ts]
    window = _shown(
        client,
        since=pivot,
        until=[e for e in entries if e.target_id == str(second.pk)][0].ts.isoformat(),
    )
    assert window == [made_first.id]

    # A bad time is a 400 with the reason on the page, not a 500
    bad = client.get("/portal/audit/", params={"since": "soon"})
    assert bad.status_code == 400 and "is not an ISO 8601" in bad.text
    backwards = client.get("/portal/audit/", params={"since": pivot, "until": pivot})
    assert backwards.status_code == 400 and "since must be before until" in backwards.text
