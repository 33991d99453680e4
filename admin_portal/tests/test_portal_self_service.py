"""The portal pages for what was API-only (issue 20 item 6) over real HTTP: your own
profile, picture and password; Retention (policy, overrides, legal holds with reasons);
a user's sessions and devices; the dashboard's activity. (Domains: test_portal_domains.)"""

from __future__ import annotations

import io
import re
import uuid

from PIL import Image

from admin_portal.tests.conftest import Portal
from messaging.models import LegalHold
from messaging.tests.helpers import send_body, start_conversation
from messaging.tests.test_activity import sockets_counted
from orgs.accounts.models import AuditEntry, OrgPolicy, User
from siphera.tenancy import in_tenant
from tests.fixtures import PASSWORD, create_org, make_user, unique
from tests.ws import authed_socket, recv_type, wait_closed

NEW_PASSWORD = "Another-Long-Passphrase-42"


def _audit(org, event: str, **filters) -> list[AuditEntry]:
    return in_tenant(
        org, lambda: list(AuditEntry.objects.filter(event=event, **filters).order_by("id"))
    )


def _png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def _signed_in(server, org, user, agent: str = "TestBrowser/1.0") -> Portal:
    client = Portal(server, org)
    client.http.headers["User-Agent"] = agent
    response = client.login(user.username)
    assert response.status_code == 302, response.text
    return client


# --- your own account ---------------------------------------------------------------------


def test_anyone_with_portal_access_edits_their_own_profile(server, org_p):
    me = make_user(org_p, role="billing_admin")
    client = _signed_in(server, org_p, me)
    page = client.get("/portal/account/")
    assert page.status_code == 200 and 'list="time-zones"' in page.text
    saved = client.post(
        "/portal/account/",
        {"display_name": "  Bea   Biller ", "title": "Accounts", "time_zone": "Europe/Paris"},
    )
    assert saved.status_code == 302
    fresh = in_tenant(org_p, User.objects.get, pk=me.pk)
    assert (fresh.display_name, fresh.title, fresh.time_zone) == (
        "Bea Biller",
        "Accounts",
        "Europe/Paris",
    )
    (entry,) = _audit(org_p, "member.profile_changed", target_id=str(me.pk))
    assert entry.actor_id == me.pk and entry.data["after"]["time_zone"] == "Europe/Paris"
    # Bad values are refused with the reason, nothing saved
    client.get("/portal/account/")
    for bad in (
        {"time_zone": "Mars/Olympus"},
        {"display_name": "Evil\u202eName"},
        {"title": "x" * 101},
    ):
        refused = client.post("/portal/account/", {"display_name": "B", **bad})
        assert refused.status_code == 400, bad
        assert 'class="form-error"' in refused.text or "field-error" in refused.text
    assert in_tenant(org_p, User.objects.get, pk=me.pk).display_name == "Bea Biller"


def test_a_picture_is_uploaded_re_encoded_shown_and_removed(server, org_p):
    me = make_user(org_p, role="admin")
    client = _signed_in(server, org_p, me)
    client.get("/portal/account/")
    uploaded = client.post(
        "/portal/account/avatar", files={"avatar": ("me.png", _png(), "image/png")}
    )
    assert uploaded.status_code == 302, uploaded.text
    page = client.get("/portal/account/")
    assert 'data-testid="avatar"' in page.text
    image = client.get("/portal/account/avatar.png")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).size == (256, 256)
    # Not an image: refused with the reason; the stored picture stays
    refused = client.post(
        "/portal/account/avatar", files={"avatar": ("x.png", b"not an image", "image/png")}
    )
    assert refused.status_code == 400 and "not a readable" in refused.text
    client.post("/portal/account/avatar", {"action": "remove"})
    assert client.get("/portal/account/avatar.png").status_code == 404
    assert 'data-testid="no-avatar"' in client.get("/portal/account/").text


async def test_changing_your_password_keeps_this_browser_and_ends_every_other_way_in(
    server, org_p, new_session
):
    session = new_session(org_p, role="security_desk")
    me = session.user
    here = _signed_in(server, org_p, me, "Here/1.0")
    elsewhere = _signed_in(server, org_p, me, "Elsewhere/1.0")
    ws = await authed_socket(server, session)
    try:
        here.get("/portal/account/password")
        wrong = here.post(
            "/portal/account/password",
            {"current": "not-it", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
        )
        assert wrong.status_code == 400 and "current password is wrong" in wrong.text
        mismatch = here.post(
            "/portal/account/password",
            {"current": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD + "x"},
        )
        assert mismatch.status_code == 400 and "differ" in mismatch.text
        weak = here.post(
            "/portal/account/password", {"current": PASSWORD, "password": "abc", "confirm": "abc"}
        )
        assert weak.status_code == 400
        changed = here.post(
            "/portal/account/password",
            {"current": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
        )
        assert changed.status_code == 302, changed.text
        await recv_type(ws, "device.revoked", timeout=10)
        assert await wait_closed(ws, timeout=10) == 4403
    finally:
        await ws.close()
    # This browser stays signed in (and is still the one listed); the other is signed out
    assert here.get("/portal/").status_code == 200
    assert elsewhere.get("/portal/").status_code == 302
    assert in_tenant(org_p, lambda: User.objects.get(pk=me.pk).check_password(NEW_PASSWORD))
    assert len(_audit(org_p, "member.password_changed", target_id=str(me.pk))) == 1
    admin = _signed_in(server, org_p, make_user(org_p, role="admin"))
    detail = admin.get(f"/portal/users/{me.pk}/")
    table = detail.text.split('data-testid="sessions-table"')[1].split("</table>")[0]
    assert table.count("data-session-id=") == 1


def test_a_user_kept_on_single_sign_on_has_no_password_form(server, new_session):
    org = create_org(unique("sso"))
    admin = make_user(org, role="admin")
    client = _signed_in(server, org, admin)
    # (a save, so the server's cached policy follows; the service would ask for SSO first)
    in_tenant(
        org, lambda: OrgPolicy.objects.update_or_create(pk=1, defaults={"password_login": False})
    )
    page = client.get("/portal/account/password")
    assert 'data-testid="sso-only"' in page.text and "password-form" not in page.text
    refused = client.post(
        "/portal/account/password",
        {"current": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
    )
    assert refused.status_code == 400
    assert in_tenant(org, lambda: User.objects.get(pk=admin.pk).check_password(PASSWORD))


# --- retention and legal holds -------------------------------------------------------------


def test_a_compliance_officer_manages_retention_and_holds_with_reasons(server, new_session, org_b):
    org = create_org(unique("ret"))
    officer = make_user(org, role="compliance_officer")
    alice, bob = new_session(org), new_session(org)
    conversation = start_conversation(alice, bob)["id"]
    client = _signed_in(server, org, officer)
    page = client.get("/portal/retention/")
    assert page.status_code == 200 and 'data-testid="holds-table"' in page.text
    # The org's retention
    assert client.post("/portal/retention/policy", {"retention_days": "30"}).status_code == 302
    assert 'data-testid="effective-days">30<' in client.get("/portal/retention/").text
    assert client.post("/portal/retention/policy", {"retention_days": "0"}).status_code == 400
    client.get("/portal/retention/")
    # A conversation's override, beyond the policy
    assert (
        client.post(
            "/portal/retention/override", {"conversation": conversation, "days": "3650"}
        ).status_code
        == 302
    )
    page = client.get("/portal/retention/")
    assert f'data-conversation-id="{conversation}"' in page.text
    unknown = client.post("/portal/retention/override", {"conversation": str(uuid.uuid4())})
    assert unknown.status_code == 400 and "No such conversation" in unknown.text
    # A hold needs a reason and a known subject
    client.get("/portal/retention/")
    no_reason = client.post(
        "/portal/retention/holds", {"kind": "user", "username": bob.user.username}
    )
    assert no_reason.status_code == 400
    nobody = client.post(
        "/portal/retention/holds", {"kind": "user", "username": "nobody", "reason": "Case 1"}
    )
    assert nobody.status_code == 400 and "No user is called" in nobody.text
    placed = client.post(
        "/portal/retention/holds",
        {"kind": "user", "username": bob.user.username.upper(), "reason": "Case 7"},
    )
    assert placed.status_code == 302
    hold = in_tenant(org, LegalHold.objects.get)
    assert (hold.user_id, hold.reason, hold.placed_by_id) == (bob.user.pk, "Case 7", officer.pk)
    page = client.get("/portal/retention/")
    row = page.text.split(f'data-hold-id="{hold.pk}"')[1].split("</tr>")[0]
    assert bob.user.username in row and "Case 7" in row and officer.username in row
    # Releasing asks why; the reason is in the audit entry
    no_why = client.post(f"/portal/retention/holds/{hold.pk}/release", {"reason": " "})
    assert no_why.status_code == 400 and "Say why" in no_why.text
    client.get("/portal/retention/")
    released = client.post(f"/portal/retention/holds/{hold.pk}/release", {"reason": "Closed"})
    assert released.status_code == 302
    (entry,) = _audit(org, "legal_hold.released")
    assert entry.data["reason"] == "Closed" and entry.actor_id == officer.pk
    history = client.get("/portal/retention/").text.split('data-testid="history-table"')[1]
    assert "legal_hold.released" in history and "legal_hold.placed" in history
    # Another org's hold id is a 404 here
    other_officer = make_user(org_b, role="compliance_officer")
    other = _signed_in(server, org_b, other_officer)
    other.get("/portal/retention/")
    assert (
        other.post(f"/portal/retention/holds/{hold.pk}/release", {"reason": "x"}).status_code == 404
    )
    assert f'data-hold-id="{hold.pk}"' not in other.get("/portal/retention/").text


def test_posts_without_the_csrf_token_are_refused(server, org_p):
    officer = make_user(org_p, role="compliance_officer")
    client = _signed_in(server, org_p, officer)
    for path in ("/portal/retention/policy", "/portal/account/", "/portal/account/password"):
        assert client.post(path, {"retention_days": "5"}, csrf=False).status_code == 403


# --- a user's sessions and devices -----------------------------------------------------------


async def test_an_admin_ends_a_session_and_signs_a_user_out_everywhere(server, new_session, org_b):
    org = create_org(unique("ses"))
    admin = _signed_in(server, org, make_user(org, role="security_desk"), "Admin/1.0")
    victim = new_session(org, role="security_desk")  # a peer: no code the admin lacks
    laptop = _signed_in(server, org, victim.user, "Laptop/1.0")
    phone = _signed_in(server, org, victim.user, "Phone/2.0")
    page = admin.get(f"/portal/users/{victim.user.pk}/")
    table = page.text.split('data-testid="sessions-table"')[1].split("</table>")[0]
    assert "Laptop/1.0" in table and "Phone/2.0" in table and "127.0.0.1" in table
    ids = re.findall(r'data-session-id="([^"]+)"', table)
    assert len(ids) == 2
    phone_id = next(
        i for i in ids if "Phone/2.0" in table.split(f'data-session-id="{i}"')[1].split("</tr>")[0]
    )
    assert admin.post(f"/portal/users/{victim.user.pk}/sessions/{phone_id}/end").status_code == 302
    assert phone.get("/portal/").status_code == 302
    assert laptop.get("/portal/").status_code == 200
    # Sign out everywhere: the laptop too, and the device's socket closes
    ws = await authed_socket(server, victim)
    try:
        admin.get(f"/portal/users/{victim.user.pk}/")
        done = admin.post(f"/portal/users/{victim.user.pk}/sign-out-everywhere")
        assert done.status_code == 302
        await recv_type(ws, "device.revoked", timeout=10)
        assert await wait_closed(ws, timeout=10) == 4403
    finally:
        await ws.close()
    assert laptop.get("/portal/").status_code == 302
    (entry,) = _audit(org, "member.signed_out_everywhere", target_id=str(victim.user.pk))
    assert entry.data["sessions"] == 1 and entry.data["devices"] == 1
    # An owner holds codes the desk lacks: each action is refused, said, and changes nothing
    owner = new_session(org, role="owner")
    owner_browser = _signed_in(server, org, owner.user, "Owner/1.0")
    page = admin.get(f"/portal/users/{owner.user.pk}/").text
    table = page.split('data-testid="sessions-table"')[1].split("</table>")[0]
    (owner_session,) = re.findall(r'data-session-id="([^"]+)"', table)
    # The page offers no button for it, and says why
    assert "/revoke" not in page and "/end" not in table and "sign-out-everywhere" not in page
    assert 'data-testid="outranked"' in page
    assert 'data-testid="outranked"' not in admin.get(f"/portal/users/{victim.user.pk}/").text
    for action in (
        f"sessions/{owner_session}/end",
        f"devices/{owner.device_id}/revoke",
        "sign-out-everywhere",
    ):
        refused = admin.post(f"/portal/users/{owner.user.pk}/{action}")
        assert refused.status_code == 302 and refused.headers["location"].endswith(
            f"/portal/users/{owner.user.pk}/"
        )
        shown = admin.get(refused.headers["location"]).text
        assert "holds permissions you lack" in shown, action
    assert owner_browser.get("/portal/").status_code == 200
    assert owner.api.get("/api/v1/me").status_code == 200
    assert _audit(org, "member.session_ended", target_id=str(owner.user.pk)) == []
    assert _audit(org, "member.signed_out_everywhere", target_id=str(owner.user.pk)) == []
    # Another org's admin: 404 for this user and session
    other = _signed_in(server, org_b, make_user(org_b, role="security_desk"))
    other.get("/portal/")
    assert other.post(f"/portal/users/{victim.user.pk}/sign-out-everywhere").status_code == 404
    assert other.post(f"/portal/users/{victim.user.pk}/sessions/{phone_id}/end").status_code == 404


# --- the dashboard ---------------------------------------------------------------------------


async def test_the_dashboard_shows_users_seen_sockets_open_and_messages_per_day(
    server, new_session
):
    org = create_org(unique("dash"))
    alice, bob = new_session(org), new_session(org)
    conversation = start_conversation(alice, bob)["id"]
    assert send_body(alice, conversation).status_code == 201
    admin = _signed_in(server, org, make_user(org, role="admin"))
    ws = await authed_socket(server, alice)
    try:
        await sockets_counted(org, 1)
        page = admin.get("/portal/")
        assert 'data-testid="open-sockets">1<' in page.text
        assert 'data-testid="connected-users">1<' in page.text
        # alice and bob registered devices (a login each) and the admin signed in
        assert 'data-testid="seen-users">3<' in page.text
        chart = page.text.split('data-testid="messages-chart"')[1].split("</table>")[0]
        assert chart.count("<meter") == 14
        assert re.search(r'data-testid="count-[0-9-]+">1<', chart)
    finally:
        await ws.close()
