"""Login, device registration, /me, devices — and the other org's view of each."""

from orgs.accounts.models import Device, LoginGrant
from siphera.tenancy import in_tenant
from tests.fixtures import PASSWORD, DeviceKeys, login_grant, make_user, unique


def test_login_returns_a_single_use_grant(org_a, api_for):
    user = make_user(org_a)
    api = api_for(org_a)
    response = api.post(
        "/api/v1/auth/login", json={"username": user.username, "password": PASSWORD}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["grant"].startswith("sph_g_") and body["expires_in"] > 0

    keys = DeviceKeys.generate()
    first = api.post(
        "/api/v1/devices",
        json=keys.registration(),
        headers={"Authorization": f"Grant {body['grant']}"},
    )
    again = api.post(
        "/api/v1/devices",
        json=keys.registration(),
        headers={"Authorization": f"Grant {body['grant']}"},
    )
    assert first.status_code == 201
    assert again.status_code == 401
    assert again.json()["error"]["code"] == "invalid_grant"


def test_wrong_password_and_unknown_user_get_the_same_answer(org_a, api_for):
    user = make_user(org_a)
    api = api_for(org_a)
    wrong = api.post("/api/v1/auth/login", json={"username": user.username, "password": "nope"})
    unknown = api.post("/api/v1/auth/login", json={"username": unique(), "password": "nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "invalid_credentials"


def test_device_token_is_stored_only_as_a_hash(org_a, new_session):
    session = new_session(org_a)
    device = in_tenant(org_a, Device.objects.get, user=session.user, device_id=session.device_id)
    assert device.token_hash and session.token not in device.token_hash
    assert len(device.token_hash) == 64


def test_me_describes_the_calling_device(org_a, new_session):
    session = new_session(org_a)
    response = session.api.get("/api/v1/me")
    assert response.status_code == 200
    assert response.json() == {
        "user_id": str(session.user.pk),
        "username": session.user.username,
        "display_name": "",
        "email": "",
        "title": "",
        "time_zone": "",
        "avatar_url": None,
        "role": "member",
        "device_id": session.device_id,
        "org": {"slug": "alpha", "name": "Alpha"},
    }


def test_unauthenticated_calls_are_refused(org_a, api_for):
    api = api_for(org_a)
    for path in ("/api/v1/me", "/api/v1/devices"):
        response = api.get(path)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthenticated"
    bogus = api.get("/api/v1/me", headers={"Authorization": "Bearer sph_d_bogus"})
    assert bogus.status_code == 401 and bogus.json()["error"]["code"] == "invalid_token"


def test_a_token_of_org_a_is_refused_on_org_b(org_a, org_b, new_session, api_for):
    # Same username in both orgs: the token still only works at its own org's host.
    session = new_session(org_a)
    make_user(org_b, session.user.username)
    response = api_for(org_b).get(
        "/api/v1/me", headers={"Authorization": f"Bearer {session.token}"}
    )
    assert response.status_code == 401


def test_a_grant_of_org_a_is_refused_on_org_b(org_a, org_b, api_for):
    user = make_user(org_a)
    make_user(org_b, user.username)
    grant = login_grant(api_for(org_a), user.username)
    response = api_for(org_b).post(
        "/api/v1/devices",
        json=DeviceKeys.generate().registration(),
        headers={"Authorization": f"Grant {grant}"},
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_grant"


def test_user_ids_of_org_a_are_404_on_org_b(org_a, org_b, new_session):
    alice = new_session(org_a)
    bob = new_session(org_b)
    assert alice.api.get(f"/api/v1/users/{alice.user.pk}").status_code == 200
    response = bob.api.get(f"/api/v1/users/{alice.user.pk}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert bob.api.get("/api/v1/users/not-a-uuid").status_code == 404


def test_bad_key_signature_is_refused_and_nothing_is_stored(org_a, api_for):
    user = make_user(org_a)
    api = api_for(org_a)
    keys = DeviceKeys.generate()
    body = keys.registration()
    body["signed_prekey"]["signature"] = DeviceKeys.generate().signed(1)["signature"]
    grant = login_grant(api, user.username)
    response = api.post("/api/v1/devices", json=body, headers={"Authorization": f"Grant {grant}"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "bad_signature"
    assert in_tenant(org_a, Device.objects.filter(user=user).count) == 0
    # the grant was not spent on the failed attempt
    assert in_tenant(org_a, LoginGrant.objects.get, user=user).used_at is None


def test_malformed_json_gets_a_clear_400(org_a, api_for):
    response = api_for(org_a).post(
        "/api/v1/auth/login", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


def test_invalid_base64_is_a_400_naming_the_field(org_a, api_for):
    user = make_user(org_a)
    api = api_for(org_a)
    body = DeviceKeys.generate().registration()
    body["identity_key"] = "***"
    grant = login_grant(api, user.username)
    response = api.post("/api/v1/devices", json=body, headers={"Authorization": f"Grant {grant}"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert "identity_key" in response.json()["fields"]


def test_unknown_org_host_gets_unknown_org(server):
    import httpx

    response = httpx.get(f"{server.url}/api/v1/me", headers={"Host": "nobody.test"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_org"


def test_listing_and_revoking_devices(org_a, new_session):
    laptop = new_session(org_a, name="laptop")
    phone = new_session(org_a, laptop.user, name="phone")
    listed = laptop.api.get("/api/v1/devices").json()
    assert [d["name"] for d in listed] == ["laptop", "phone"]

    assert laptop.api.delete(f"/api/v1/devices/{phone.device_id}").status_code == 204
    assert phone.api.get("/api/v1/me").status_code == 401
    assert [d["device_id"] for d in laptop.api.get("/api/v1/devices").json()] == [1]
    assert laptop.api.delete(f"/api/v1/devices/{phone.device_id}").status_code == 404


def test_login_is_rate_limited_per_username_with_retry_after(org_a, api_for, settings):
    from django.conf import settings as live

    user = make_user(org_a)
    api = api_for(org_a)
    limit = live.LOGIN_RATE_PER_USERNAME
    for _ in range(limit):
        api.post("/api/v1/auth/login", json={"username": user.username, "password": "wrong"})
    response = api.post(
        "/api/v1/auth/login", json={"username": user.username, "password": PASSWORD}
    )
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["error"]["code"] == "rate_limited"
