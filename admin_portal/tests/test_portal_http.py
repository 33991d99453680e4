"""The portal over real HTTP against the live server: login, permissions, isolation,
revocation, CSRF."""

from __future__ import annotations

from orgs.accounts.models import AuditEntry, Device, User
from siphera.tenancy import in_tenant
from tests.fixtures import PASSWORD, make_user, unique


def _audit(org, event: str, **filters) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event, **filters)))


# --- login ------------------------------------------------------------------------------


def test_login_page_renders_at_an_org_host(org_p, portal):
    response = portal(org_p).get("/portal/login")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "Portalco" in response.text  # the org's name
    assert 'name="csrfmiddlewaretoken"' in response.text
    assert 'name="username"' in response.text and 'type="password"' in response.text
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'none'" in csp


def test_root_redirects_to_the_portal(org_p, portal):
    response = portal(org_p).get("/")
    assert response.status_code == 302
    assert response.headers["location"] == "/portal/"


def test_unauthenticated_portal_pages_redirect_to_login(org_p, portal):
    client = portal(org_p)
    for path in ("/portal/", "/portal/users/"):
        response = client.get(path)
        assert response.status_code == 302
        assert response.headers["location"] == f"/portal/login?next={path}"


def test_a_wrong_password_is_refused_and_no_session_starts(org_p, portal):
    admin = make_user(org_p, role="admin")
    client = portal(org_p)
    response = client.login(admin.username, "wrong-password")
    assert response.status_code == 200
    assert "Wrong username or password." in response.text
    assert client.get("/portal/").status_code == 302
    failed = _audit(org_p, "member.login_failed", target_id=str(admin.pk))
    assert [row.data for row in failed] == [{"reason": "password"}]
    assert _audit(org_p, "portal.logged_in", target_id=str(admin.pk)) == []


def test_an_unknown_user_gets_the_same_answer_as_a_wrong_password(org_p, portal):
    admin = make_user(org_p, role="admin")
    wrong = portal(org_p).login(admin.username, "wrong-password")
    unknown = portal(org_p).login(unique(), "wrong-password")
    assert wrong.status_code == unknown.status_code == 200
    assert "Wrong username or password." in unknown.text


def test_a_member_without_portal_access_is_refused_with_a_clear_message(org_p, portal):
    member = make_user(org_p, role="member")
    client = portal(org_p)
    response = client.login(member.username)
    assert response.status_code == 403
    assert "Your role does not include access to the admin portal." in response.text
    assert client.get("/portal/").status_code == 302  # no session was started
    denied = _audit(org_p, "portal.access_denied", target_id=str(member.pk))
    assert len(denied) == 1 and denied[0].data == {"role": "member"}


def test_an_admin_login_starts_a_session_and_is_audited(org_p, portal):
    admin = make_user(org_p, role="admin")
    client = portal(org_p)
    response = client.login(admin.username)
    assert response.status_code == 302
    assert response.headers["location"] == "/portal/"
    dashboard = client.get("/portal/")
    assert dashboard.status_code == 200
    assert admin.username in dashboard.text
    rows = _audit(org_p, "portal.logged_in", target_id=str(admin.pk))
    assert len(rows) == 1
    assert rows[0].actor_id == admin.pk and rows[0].ip == "127.0.0.1"


def test_login_returns_to_a_local_next_only(org_p, portal):
    admin = make_user(org_p, role="admin")
    client = portal(org_p)
    client.get("/portal/login?next=/portal/users/")
    local = client.post(
        "/portal/login",
        {"username": admin.username, "password": PASSWORD, "next": "/portal/users/"},
    )
    assert local.headers["location"] == "/portal/users/"

    other = portal(org_p)
    other.get("/portal/login")
    offsite = other.post(
        "/portal/login",
        {"username": admin.username, "password": PASSWORD, "next": "https://evil.example/"},
    )
    assert offsite.headers["location"] == "/portal/"


def test_portal_login_is_rate_limited_with_retry_after(org_p, portal):
    from django.conf import settings

    admin = make_user(org_p, role="admin")
    client = portal(org_p)
    client.get("/portal/login")
    for _ in range(settings.LOGIN_RATE_PER_USERNAME):
        client.post("/portal/login", {"username": admin.username, "password": "wrong"})
    response = client.post("/portal/login", {"username": admin.username, "password": PASSWORD})
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert "Too many requests" in response.text


def test_logout_needs_a_post_and_ends_the_session(org_p, signed_in_admin):
    client = signed_in_admin
    page = client.get("/portal/")
    assert client.http.get("/portal/logout").status_code == 405
    assert client.get("/portal/").status_code == 200
    assert 'action="/portal/logout"' in page.text
    response = client.post("/portal/logout")
    assert response.status_code == 302 and response.headers["location"] == "/portal/login"
    assert client.get("/portal/").status_code == 302
    assert len(_audit(org_p, "portal.logged_out", target_id=str(client.user.pk))) == 1


# --- pages ------------------------------------------------------------------------------


def test_dashboard_shows_active_user_and_device_counts(org_p, signed_in_admin, new_session):
    new_session(org_p)
    users = in_tenant(org_p, User.objects.filter(is_active=True).count)
    devices = in_tenant(
        org_p, Device.objects.filter(revoked_at__isnull=True, user__is_active=True).count
    )
    page = signed_in_admin.get("/portal/").text
    assert f'data-testid="active-users">{users}<' in page
    assert f'data-testid="active-devices">{devices}<' in page


def test_users_list_shows_each_users_role_devices_and_status(org_p, signed_in_admin, new_session):
    session = new_session(org_p, role="security_desk")
    in_tenant(org_p, User.objects.filter(pk=session.user.pk).update, display_name="Desk Person")
    page = signed_in_admin.get(f"/portal/users/?q={session.user.username}")
    assert page.status_code == 200
    row = page.text.split(f'href="/portal/users/{session.user.pk}/"')[1].split("</tr>")[0]
    assert session.user.username in row
    assert "Desk Person" in row
    assert "security_desk" in row
    assert '<td class="num">1</td>' in row
    assert "Active" in row


def test_a_users_page_lists_their_devices_with_a_revoke_button(org_p, signed_in_admin, new_session):
    laptop = new_session(org_p, name="laptop")
    new_session(org_p, laptop.user, name="phone")
    page = signed_in_admin.get(f"/portal/users/{laptop.user.pk}/")
    assert page.status_code == 200
    assert "laptop" in page.text and "phone" in page.text
    for device_id in (1, 2):
        assert f'action="/portal/users/{laptop.user.pk}/devices/{device_id}/revoke"' in page.text


# --- permissions and isolation ------------------------------------------------------------


def test_another_orgs_user_id_is_404_like_a_bad_id(org_p, org_b, signed_in_admin, new_session):
    foreign = new_session(org_b)  # a real user with a device, in the other org
    client = signed_in_admin
    other_org = client.get(f"/portal/users/{foreign.user.pk}/")
    made_up = client.get("/portal/users/00000000-0000-4000-8000-000000000000/")
    malformed = client.get("/portal/users/not-a-uuid/")
    assert other_org.status_code == made_up.status_code == malformed.status_code == 404
    assert other_org.headers["content-type"].startswith("text/html")
    assert other_org.text == made_up.text == malformed.text
    assert foreign.user.username not in other_org.text

    revoke = client.post(f"/portal/users/{foreign.user.pk}/devices/{foreign.device_id}/revoke")
    assert revoke.status_code == 404
    assert foreign.api.get("/api/v1/me").status_code == 200  # untouched


def test_a_portal_session_of_one_org_is_worthless_on_another_orgs_host(
    org_p, org_b, signed_in_admin, portal
):
    session_id = signed_in_admin.http.cookies["sessionid"]
    # Same username in the other org: the session still must not carry over.
    make_user(org_b, signed_in_admin.user.username, role="admin")
    elsewhere = portal(org_b)
    elsewhere.http.cookies.set("sessionid", session_id)
    response = elsewhere.get("/portal/")
    assert response.status_code == 302
    assert response.headers["location"].startswith("/portal/login")


def test_api_paths_still_get_a_json_404(org_p, portal):
    response = portal(org_p).get("/api/v1/no-such-endpoint")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_a_role_without_users_view_gets_403_on_the_users_pages(org_p, portal):
    billing = make_user(org_p, role="billing_admin")  # portal.access only
    client = portal(org_p)
    assert client.login(billing.username).status_code == 302
    dashboard = client.get("/portal/")
    assert dashboard.status_code == 200
    assert 'href="/portal/users/"' not in dashboard.text  # no link it could not use
    response = client.get("/portal/users/")
    assert response.status_code == 403
    assert "Your role does not include access to this page." in response.text


def test_a_role_without_devices_revoke_sees_no_button_and_cannot_revoke(org_p, portal, new_session):
    officer = make_user(org_p, role="compliance_officer")  # users.view, no devices.*
    target = new_session(org_p)
    client = portal(org_p)
    assert client.login(officer.username).status_code == 302
    page = client.get(f"/portal/users/{target.user.pk}/")
    assert page.status_code == 200
    assert "/revoke" not in page.text
    response = client.post(f"/portal/users/{target.user.pk}/devices/{target.device_id}/revoke")
    assert response.status_code == 403
    assert target.api.get("/api/v1/me").status_code == 200


def test_a_session_stops_working_once_the_role_loses_portal_access(org_p, signed_in_admin):
    from orgs.services import audit, users

    demoted = in_tenant(org_p, User.objects.get, pk=signed_in_admin.user.pk)
    in_tenant(org_p, users.do_change_role, demoted, "member", actor=audit.Actor.system("tests"))
    response = signed_in_admin.get("/portal/")
    assert response.status_code == 403


# --- revoking a device ---------------------------------------------------------------------


def test_revoking_a_device_audits_it_and_the_token_stops_working(
    org_p, signed_in_admin, new_session
):
    target = new_session(org_p, name="work-phone")
    assert target.api.get("/api/v1/me").status_code == 200
    client = signed_in_admin
    client.get(f"/portal/users/{target.user.pk}/")

    response = client.post(f"/portal/users/{target.user.pk}/devices/{target.device_id}/revoke")
    assert response.status_code == 302
    assert response.headers["location"] == f"/portal/users/{target.user.pk}/"

    assert target.api.get("/api/v1/me").status_code == 401
    rows = _audit(org_p, "device.revoked", target_id=f"{target.user.pk}:{target.device_id}")
    assert len(rows) == 1
    assert rows[0].actor_id == client.user.pk
    assert rows[0].actor_label == client.user.username
    assert rows[0].ip == "127.0.0.1"
    assert rows[0].data == {"name": "work-phone"}

    page = client.get(response.headers["location"]).text
    assert "Revoked “work-phone”" in page  # the flash message
    assert "/revoke" not in page  # the device is shown as revoked, without a button


def test_revoking_an_already_revoked_device_says_so_and_audits_nothing(
    org_p, signed_in_admin, new_session
):
    target = new_session(org_p)
    path = f"/portal/users/{target.user.pk}/devices/{target.device_id}/revoke"
    client = signed_in_admin
    client.get(f"/portal/users/{target.user.pk}/")
    assert client.post(path).status_code == 302
    again = client.post(path)
    assert again.status_code == 302
    assert "already revoked" in client.get(again.headers["location"]).text
    rows = _audit(org_p, "device.revoked", target_id=f"{target.user.pk}:{target.device_id}")
    assert len(rows) == 1


def test_revoking_needs_a_csrf_token(org_p, signed_in_admin, new_session):
    target = new_session(org_p)
    client = signed_in_admin
    path = f"/portal/users/{target.user.pk}/devices/{target.device_id}/revoke"
    missing = client.post(path, csrf=False)
    forged = client.post(path, {"csrfmiddlewaretoken": "x" * 64}, csrf=False)
    assert missing.status_code == forged.status_code == 403
    assert target.api.get("/api/v1/me").status_code == 200
    assert _audit(org_p, "device.revoked", target_id=f"{target.user.pk}:{target.device_id}") == []


def test_login_needs_a_csrf_token(org_p, portal):
    admin = make_user(org_p, role="admin")
    client = portal(org_p)
    client.get("/portal/login")
    response = client.post(
        "/portal/login", {"username": admin.username, "password": PASSWORD}, csrf=False
    )
    assert response.status_code == 403
    assert _audit(org_p, "portal.logged_in", target_id=str(admin.pk)) == []
