"""The portal's sign-in with a second factor, session lifetime and revocation, and the
admin pages (users, roles, policies, audit log) over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
import time

from orgs.accounts.models import AuditEntry, OrgPolicy, User
from orgs.services import audit, mfa
from orgs.services import policy as policy_service
from siphera.tenancy import in_tenant
from tests.fixtures import PASSWORD, create_org, make_user, unique


def rfc6238(secret_b32: str, step: int) -> str:
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[19] & 0xF
    return str((int.from_bytes(digest[offset : offset + 4], "big") & 0x7FFFFFFF) % 10**6).zfill(6)


def now_step() -> int:
    return int(time.time() // 30)


def _audit(org, event: str, **filters) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event, **filters)))


def _enable_totp(org, user) -> tuple[str, list[str]]:
    actor = audit.Actor.system("tests")
    secret = in_tenant(org, mfa.check_start_enrollment, user, actor=actor).secret
    codes = in_tenant(
        org, mfa.check_confirm_enrollment, user, rfc6238(secret, now_step()), actor=actor
    ).recovery_codes
    return secret, codes


def _fresh_org():
    return create_org(unique("p"), f"{unique('h')}.test")


# --- sign-in with a second factor --------------------------------------------------------


def test_a_user_with_mfa_signs_in_in_two_steps_and_the_code_is_checked(org_p, portal):
    admin = make_user(org_p, role="admin")
    secret, _ = _enable_totp(org_p, admin)
    client = portal(org_p)

    first = client.login(admin.username)
    assert first.status_code == 302 and first.headers["location"] == "/portal/login/code"
    assert client.get("/portal/").status_code == 302  # no session yet
    client.get("/portal/login/code")
    wrong = client.post("/portal/login/code", {"otp": "000000"})
    assert wrong.status_code == 200 and "wrong or was already used" in wrong.text
    right = client.post("/portal/login/code", {"otp": rfc6238(secret, now_step() + 1)})
    assert right.status_code == 302 and right.headers["location"] == "/portal/"
    assert client.get("/portal/").status_code == 200
    [entry] = _audit(org_p, "portal.logged_in", target_id=str(admin.pk))
    assert entry.data == {"method": "password+totp"}
    assert [e.data for e in _audit(org_p, "member.login_failed", target_id=str(admin.pk))] == [
        {"reason": "otp"}
    ]


def test_a_recovery_code_signs_in_once(org_p, portal):
    admin = make_user(org_p, role="security_desk")
    _, codes = _enable_totp(org_p, admin)
    for expected in (302, 200):
        client = portal(org_p)
        client.login(admin.username)
        client.get("/portal/login/code")
        response = client.post("/portal/login/code", {"otp": codes[0]})
        assert response.status_code == expected


def test_the_code_step_needs_the_password_step_first(org_p, portal):
    client = portal(org_p)
    response = client.get("/portal/login/code")
    assert response.status_code == 302 and response.headers["location"] == "/portal/login"


def test_a_policy_requiring_mfa_makes_an_admin_enrol_before_the_session_starts(portal):
    org = _fresh_org()
    in_tenant(
        org,
        policy_service.check_update_policy,
        {"mfa_policy": OrgPolicy.MFA_REQUIRED_FOR_ADMINS},
        actor=audit.Actor.system("tests"),
    )
    admin = make_user(org, role="admin")
    client = portal(org)
    first = client.login(admin.username)
    assert first.headers["location"] == "/portal/login/setup-mfa"
    page = client.get("/portal/login/setup-mfa")
    assert "Set up authenticator app" in page.text
    started = client.post("/portal/login/setup-mfa", {"action": "start"})
    assert started.status_code == 302
    page = client.get("/portal/login/setup-mfa")
    assert "<svg" in page.text and 'class="segno"' in page.text
    secret = re.search(r'data-testid="totp-secret">([A-Z2-7 ]+)<', page.text).group(1)
    done = client.post(
        "/portal/login/setup-mfa",
        {"action": "confirm", "otp": rfc6238(secret.replace(" ", ""), now_step())},
    )
    assert done.status_code == 200 and 'data-testid="recovery-codes"' in done.text
    assert client.get("/portal/").status_code == 200
    assert in_tenant(org, mfa.mfa_status, admin).enabled


# --- sessions ----------------------------------------------------------------------------


def test_a_session_ends_when_the_org_lifetime_has_passed(portal):
    from django.contrib.sessions.backends.db import SessionStore

    from admin_portal.sessions import AUTH_AT

    org = _fresh_org()
    admin = make_user(org, role="admin")
    client = portal(org)
    client.login(admin.username)
    assert client.get("/portal/").status_code == 200
    in_tenant(
        org,
        policy_service.check_update_policy,
        {"session_lifetime_minutes": 5},
        actor=audit.Actor.system("tests"),
    )

    def age_session():
        store = SessionStore(session_key=client.http.cookies["sessionid"])
        store[AUTH_AT] = int(time.time()) - 6 * 60
        store.save()

    in_tenant(org, age_session)
    response = client.get("/portal/users/")
    assert response.status_code == 302 and response.headers["location"].startswith("/portal/login")
    assert client.get("/portal/").status_code == 302


def test_a_new_session_expires_with_the_org_lifetime(portal):
    org = _fresh_org()
    in_tenant(
        org,
        policy_service.check_update_policy,
        {"session_lifetime_minutes": 30},
        actor=audit.Actor.system("tests"),
    )
    admin = make_user(org, role="admin")
    client = portal(org)
    response = client.login(admin.username)
    assert "Max-Age=1800" in response.headers["set-cookie"]


def test_deactivating_a_user_ends_their_portal_sessions_at_once(portal):
    org = _fresh_org()
    owner = make_user(org, role="owner")
    victim = make_user(org, role="admin")
    theirs = portal(org)
    theirs.login(victim.username)
    assert theirs.get("/portal/").status_code == 200

    mine = portal(org)
    mine.login(owner.username)
    mine.get(f"/portal/users/{victim.pk}/")
    response = mine.post(f"/portal/users/{victim.pk}/deactivate")
    assert response.status_code == 302
    page = mine.get(f"/portal/users/{victim.pk}/")
    assert "Deactivated" in page.text and "every session ended" in page.text

    assert theirs.get("/portal/").status_code == 302
    # Reactivation does not revive the old session.
    mine.post(f"/portal/users/{victim.pk}/reactivate")
    assert theirs.get("/portal/").status_code == 302
    assert len(_audit(org, "member.deactivated", target_id=str(victim.pk))) == 1
    assert len(_audit(org, "member.reactivated", target_id=str(victim.pk))) == 1


# --- admin pages -------------------------------------------------------------------------


def test_users_are_created_invited_and_given_roles_from_the_portal(portal):
    org = _fresh_org()
    owner = make_user(org, role="owner")
    client = portal(org)
    client.login(owner.username)
    client.get("/portal/users/new")
    name = unique()
    invited = client.post(
        "/portal/users/new", {"username": name, "role": "member", "how": "invite"}
    )
    assert invited.status_code == 200
    link = re.search(r'data-testid="invitation-link">([^<]+)<', invited.text).group(1)
    assert "/portal/invite/sph_i_" in link
    user = in_tenant(org, User.objects.get, username=name)

    client.get(f"/portal/users/{user.pk}/")
    changed = client.post(f"/portal/users/{user.pk}/role", {"role": "guest"})
    assert changed.status_code == 302
    assert "is now guest (was member)" in client.get(f"/portal/users/{user.pk}/").text
    [entry] = _audit(org, "member.role_changed", target_id=str(user.pk))
    assert entry.actor_id == owner.pk and entry.data["after"] == "guest"

    # The last owner: demoting yourself is refused with a message.
    client.post(f"/portal/users/{owner.pk}/role", {"role": "admin"})
    page = client.get(f"/portal/users/{owner.pk}/")
    assert "last owner" in page.text
    assert in_tenant(org, User.objects.get, pk=owner.pk).role == "owner"


def test_a_taken_username_is_refused_on_the_new_user_page_and_writes_nothing(portal):
    from orgs.accounts.models import Invitation

    def rows():
        return in_tenant(
            org,
            lambda: (User.objects.count(), Invitation.objects.count(), AuditEntry.objects.count()),
        )

    # Given an owner signed in to the portal and an existing user
    org = _fresh_org()
    owner = make_user(org, role="owner")
    taken = make_user(org).username
    client = portal(org)
    client.login(owner.username)
    before = rows()
    # When the owner creates the name again (in another case), with a password or invited
    for how in ("password", "invite"):
        client.get("/portal/users/new")
        page = client.post(
            "/portal/users/new",
            {"username": taken.upper(), "role": "member", "how": how, "password": PASSWORD},
        )
        # Then the form comes back with the reason, and nothing was written
        assert page.status_code == 200
        assert "is already taken" in page.text and 'name="username"' in page.text
    assert rows() == before


def test_custom_roles_and_policies_are_managed_from_the_portal(portal):
    org = _fresh_org()
    owner = make_user(org, role="owner")
    client = portal(org)
    client.login(owner.username)
    client.get("/portal/roles/")
    created = client.post(
        "/portal/roles/",
        {"slug": "helpdesk", "name": "Helpdesk", "codes": ["portal.access", "users.view"]},
    )
    assert created.status_code == 302
    assert 'data-role="helpdesk"' in client.get("/portal/roles/").text
    client.get("/portal/roles/helpdesk/")
    client.post("/portal/roles/helpdesk/", {"name": "Help desk", "codes": ["portal.access"]})
    assert _audit(org, "role.updated", target_id="helpdesk")
    client.get("/portal/roles/helpdesk/")
    assert client.post("/portal/roles/helpdesk/delete").status_code == 302
    assert _audit(org, "role.deleted", target_id="helpdesk")

    client.get("/portal/policies/")
    saved = client.post(
        "/portal/policies/",
        {
            "mfa_policy": "off",
            "session_lifetime_minutes": "120",
            "password_login": "on",
            "read_receipts": "",
        },
    )
    assert saved.status_code == 302
    current = in_tenant(org, OrgPolicy.objects.get)
    assert current.session_lifetime_minutes == 120 and current.read_receipts is False
    fields = {e.target_id for e in _audit(org, "org.policy_changed")}
    assert fields == {"session_lifetime_minutes", "read_receipts"}


def test_the_audit_page_filters_downloads_and_verifies(portal):
    org = _fresh_org()
    owner = make_user(org, role="owner")
    officer = make_user(org, role="security_desk")  # audit.view without audit.export
    client = portal(org)
    client.login(owner.username)
    page = client.get(f"/portal/audit/?actor={owner.username}&event=portal.*")
    assert page.status_code == 200
    table = page.text.split('data-testid="audit-table"')[1]
    assert "<code>portal.logged_in</code>" in table and "member.created" not in table
    bad = client.get("/portal/audit/?actor=nobody-here")
    assert bad.status_code == 400 and "No user named" in bad.text

    csv = client.get("/portal/audit/export?event=member.created&format=csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text.count("member.created") == 2  # owner and officer
    jsonl = client.get("/portal/audit/export?format=jsonl")
    assert jsonl.headers["content-type"] == "application/x-ndjson"
    assert len(_audit(org, "audit.exported")) == 2

    client.get("/portal/audit/")
    verified = client.post("/portal/audit/verify")
    assert verified.status_code == 302
    report = client.get("/portal/audit/")
    assert "OK:" in report.text and "chain intact" in report.text
    assert _audit(org, "audit.verified")[0].data["ok"] is True

    other = portal(org)
    other.login(officer.username)
    assert "Download CSV" not in other.get("/portal/audit/").text
    assert other.get("/portal/audit/export?format=csv").status_code == 403
