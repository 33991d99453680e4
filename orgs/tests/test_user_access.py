"""A user's ways in, for admins, over the API: portal sessions (listed with when and from
where, ended one by one or all at once) and devices (where each was last seen; revoked,
their sockets closed); who may, and what another org sees."""

from __future__ import annotations

import pytest

from admin_portal.tests.conftest import Portal
from orgs.accounts.models import AuditEntry
from siphera.tenancy import in_tenant
from tests.fixtures import Api, create_org, host_of, make_user, register_device, unique
from tests.ws import authed_socket, recv_type, send, wait_closed


@pytest.fixture(scope="module")
def org_s():
    return create_org(unique("acc"))


def device_api(server, org, user) -> Api:
    api = Api(server, host_of(org))
    _, token, _ = register_device(api, user.username)
    return api.as_device(token)


def signed_in(server, org, user, agent: str) -> Portal:
    browser = Portal(server, org)
    browser.http.headers["User-Agent"] = agent
    assert browser.login(user.username).status_code == 302
    return browser


def events(org, name: str, target: str) -> list[AuditEntry]:
    return in_tenant(
        org, lambda: list(AuditEntry.objects.filter(event=name, target_id=target).order_by("id"))
    )


def test_an_admin_lists_and_ends_a_users_portal_sessions(server, org_s):
    admin = device_api(server, org_s, make_user(org_s, role="security_desk"))
    person = make_user(org_s, role="security_desk")  # a peer: no code the desk lacks
    # Given a person signed in to the portal from two browsers
    laptop = signed_in(server, org_s, person, "LaptopBrowser/1.0")
    phone = signed_in(server, org_s, person, "PhoneBrowser/2.0")
    # When an admin lists their sessions: both, with when and from where
    listed = admin.get(f"/api/v1/users/{person.pk}/sessions")
    assert listed.status_code == 200, listed.text
    sessions = {s["user_agent"]: s for s in listed.json()}
    assert set(sessions) == {"LaptopBrowser/1.0", "PhoneBrowser/2.0"}
    assert {s["ip"] for s in sessions.values()} == {"127.0.0.1"}
    # When the admin ends the phone's session
    phone_id = sessions["PhoneBrowser/2.0"]["id"]
    assert admin.delete(f"/api/v1/users/{person.pk}/sessions/{phone_id}").status_code == 204
    # Then the phone is signed out and the laptop is not
    assert phone.get("/portal/").status_code == 302
    assert laptop.get("/portal/").status_code == 200
    assert [s["user_agent"] for s in admin.get(f"/api/v1/users/{person.pk}/sessions").json()] == [
        "LaptopBrowser/1.0"
    ]
    (entry,) = events(org_s, "member.session_ended", str(person.pk))
    assert entry.data["session"] == phone_id and entry.data["user_agent"] == "PhoneBrowser/2.0"
    # Ending it again, or an id that is not theirs, is a 404
    assert admin.delete(f"/api/v1/users/{person.pk}/sessions/{phone_id}").status_code == 404
    assert admin.delete(f"/api/v1/users/{person.pk}/sessions/not-an-id").status_code == 404
    # A session signed out by its own browser is not listed
    laptop.post("/portal/logout")
    assert admin.get(f"/api/v1/users/{person.pk}/sessions").json() == []


async def test_signing_out_everywhere_ends_sessions_revokes_devices_and_closes_sockets(
    server, org_s, new_session
):
    admin = device_api(server, org_s, make_user(org_s, role="user_manager"))
    victim = new_session(org_s, role="user_manager")  # a peer: no code the manager lacks
    browser = signed_in(server, org_s, victim.user, "Stolen/1.0")
    ws = await authed_socket(server, victim)
    try:
        response = admin.delete(f"/api/v1/users/{victim.user.pk}/sessions")
        assert response.status_code == 200, response.text
        assert response.json() == {"sessions": 1, "devices": 1}
        # The device's socket is told and closed; its token no longer works
        await recv_type(ws, "device.revoked", timeout=10)
        assert await wait_closed(ws, timeout=10) == 4403
    finally:
        await ws.close()
    assert victim.api.get("/api/v1/me").status_code == 401
    assert browser.get("/portal/").status_code == 302
    (entry,) = events(org_s, "member.signed_out_everywhere", str(victim.user.pk))
    assert entry.data["sessions"] == 1 and entry.data["devices"] == 1
    assert entry.actor_id is not None


async def test_a_device_shows_where_it_was_last_seen_and_an_admin_revokes_it(
    server, org_s, new_session
):
    admin = device_api(server, org_s, make_user(org_s, role="security_desk"))
    person = new_session(org_s)
    ws = await authed_socket(server, person)
    try:
        devices = admin.get(f"/api/v1/users/{person.user.pk}/devices")
        assert devices.status_code == 200, devices.text
        (device,) = devices.json()
        assert device["device_id"] == person.device_id
        assert device["last_seen_ip"] == "127.0.0.1" and device["last_seen_at"]
        assert device["user_agent"].startswith("Python/")  # the websockets client's
        revoked = admin.delete(f"/api/v1/users/{person.user.pk}/devices/{person.device_id}")
        assert revoked.status_code == 204
        await recv_type(ws, "device.revoked", timeout=10)
        assert await wait_closed(ws, timeout=10) == 4403
    finally:
        await ws.close()
    (device,) = admin.get(f"/api/v1/users/{person.user.pk}/devices").json()
    assert device["revoked_at"]
    # Pages: `after` a device id, `limit` bounded; nonsense is a 400
    devices_path = f"/api/v1/users/{person.user.pk}/devices"
    assert admin.get(devices_path, params={"after": person.device_id}).json() == []
    for bad in ({"limit": 0}, {"limit": 501}, {"after": "x"}, {"after": "-1"}):
        assert admin.get(devices_path, params=bad).status_code == 400, bad
    path = f"/api/v1/users/{person.user.pk}/devices/{person.device_id}"
    assert admin.delete(path).status_code == 404
    assert admin.delete(f"/api/v1/users/{person.user.pk}/devices/99999999999").status_code == 404


async def test_nobody_signs_out_or_revokes_a_user_holding_codes_they_lack(
    server, org_s, new_session
):
    desk = device_api(server, org_s, make_user(org_s, role="security_desk"))
    # Given an owner signed in to the portal, with a device and its socket
    owner = new_session(org_s, role="owner")
    browser = signed_in(server, org_s, owner.user, "Owner/1.0")
    (session,) = (
        device_api(server, org_s, make_user(org_s, role="admin"))
        .get(f"/api/v1/users/{owner.user.pk}/sessions")
        .json()
    )
    ws = await authed_socket(server, owner)
    try:
        # A security desk may see them, but not end, revoke or sign out the owner
        base = f"/api/v1/users/{owner.user.pk}"
        assert desk.get(f"{base}/sessions").status_code == 200
        assert desk.get(f"{base}/devices").status_code == 200
        for path in (
            f"{base}/sessions/{session['id']}",
            f"{base}/devices/{owner.device_id}",
            f"{base}/sessions",
        ):
            refused = desk.delete(path)
            assert refused.status_code == 403, (path, refused.text)
            body = refused.json()
            assert body["error"]["code"] == "forbidden"
            assert "org.manage" in body["lacking"]
        # Nothing was touched: the socket is live, the token works, the browser signed in
        await send(ws, {"type": "ping", "ref": "still-here"})
        assert (await recv_type(ws, "pong"))["ref"] == "still-here"
        assert owner.api.get("/api/v1/me").status_code == 200
        assert browser.get("/portal/").status_code == 200
        assert not events(org_s, "device.revoked", f"{owner.user.pk}:{owner.device_id}")
        assert not events(org_s, "member.session_ended", str(owner.user.pk))
        assert not events(org_s, "member.signed_out_everywhere", str(owner.user.pk))
        # A user signs themselves out everywhere whatever their role
        self_api = device_api(server, org_s, owner.user)
        assert self_api.delete(f"{base}/sessions").status_code == 200
        await recv_type(ws, "device.revoked", timeout=10)
    finally:
        await ws.close()
    assert browser.get("/portal/").status_code == 302


def test_roles_without_the_codes_are_refused_and_other_orgs_see_nothing(server, org_s, org_b):
    person = make_user(org_s, role="admin")
    signed_in(server, org_s, person, "Mine/1.0")
    member = device_api(server, org_s, make_user(org_s))
    for method, path in (
        ("GET", f"/api/v1/users/{person.pk}/sessions"),
        ("DELETE", f"/api/v1/users/{person.pk}/sessions"),
        ("GET", f"/api/v1/users/{person.pk}/devices"),
        ("DELETE", f"/api/v1/users/{person.pk}/devices/1"),
    ):
        assert member.request(method, path).status_code == 403, (method, path)
    # Another org's admin: the user id is unknown there
    other = device_api(server, org_b, make_user(org_b, role="admin"))
    for method, path in (
        ("GET", f"/api/v1/users/{person.pk}/sessions"),
        ("DELETE", f"/api/v1/users/{person.pk}/sessions"),
        ("GET", f"/api/v1/users/{person.pk}/devices"),
    ):
        assert other.request(method, path).status_code == 404, (method, path)
    own = device_api(server, org_s, make_user(org_s, role="admin"))
    assert len(own.get(f"/api/v1/users/{person.pk}/sessions").json()) == 1


def test_portal_sessions_are_in_the_personal_data_export_and_go_with_an_erasure(server, org_s):
    from orgs.accounts.models import PortalSession

    officer = device_api(server, org_s, make_user(org_s, role="owner"))
    person = make_user(org_s, role="compliance_officer")  # has portal access
    signed_in(server, org_s, person, "Exported/9.9")
    doc = officer.get(f"/api/v1/users/{person.pk}/personal-data").json()
    (session,) = [s for s in doc["sign_ins"] if s["kind"] == "portal_session"]
    assert session["user_agent"] == "Exported/9.9" and session["ip"] == "127.0.0.1"
    erased = officer.post(f"/api/v1/users/{person.pk}/erase", json={"reason": "request 3"})
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["portal_sessions"] == 1
    assert in_tenant(org_s, PortalSession.objects.filter(user_id=person.pk).count) == 0
