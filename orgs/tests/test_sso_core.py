"""What single sign-on shares across protocols, over the real server: the sign-in policy
it ties into (SSO on needs an IdP, passwords off need a tested one, the owners'
break-glass), the IdP settings API and its validation, the group -> role map, the app's
code exchange refusing everything but a live code with its verifier, and the other org's
view. Sign-ins through real IdPs are in test_saml.py and test_oidc.py."""

from __future__ import annotations

import pytest

from orgs.accounts.models import AuditEntry
from orgs.tests.sso_support import idp_passed_a_test
from orgs.tests.test_mfa import enable_totp, rfc6238
from siphera.tenancy import in_tenant
from tests.fixtures import PASSWORD, create_org, host_of, make_user, unique


@pytest.fixture
def fresh_org():
    return create_org(unique("o"), f"{unique('h')}.test")


def code_of(response) -> str:
    return response.json()["error"]["code"]


def events(org, event: str) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event)))


def patch_policy(session, **changes):
    return session.api.request("PATCH", "/api/v1/org/policy", json=changes)


def test_sso_sign_in_cannot_be_turned_on_without_an_identity_provider(fresh_org, new_session):
    owner = new_session(fresh_org, role="owner")
    refused = patch_policy(owner, sso_login=True)
    assert refused.status_code == 409 and code_of(refused) == "sso_not_configured"
    info = owner.api.as_device(None).get("/api/v1/auth/sso").json()
    assert info == {"sso": False, "display_name": None, "login_url": None, "password_login": True}
    assert not events(fresh_org, "org.policy_changed")


def test_passwords_go_off_only_after_a_successful_test_sign_in(fresh_org, new_session):
    owner = new_session(fresh_org, role="owner")
    in_tenant(fresh_org, _untested_idp)
    assert patch_policy(owner, sso_login=True).status_code == 200
    untested = patch_policy(owner, password_login=False)
    assert untested.status_code == 409 and code_of(untested) == "sso_not_tested"
    idp_passed_a_test(fresh_org)
    assert patch_policy(owner, password_login=False).status_code == 200
    info = owner.api.as_device(None).get("/api/v1/auth/sso").json()
    assert info == {
        "sso": True,
        "display_name": "Test IdP",
        "login_url": "/sso/login",
        "password_login": False,
    }
    # The IdP cannot be removed while it is the only way in for everyone but owners.
    in_use = owner.api.delete("/api/v1/org/sso")
    assert in_use.status_code == 409 and code_of(in_use) == "sso_in_use"
    assert patch_policy(owner, password_login=True).status_code == 200
    assert owner.api.delete("/api/v1/org/sso").status_code == 204
    assert owner.api.get("/api/v1/org/policy").json()["sso_login"] is False
    assert [e.data["after"] for e in events(fresh_org, "org.policy_changed")][-1] is False
    assert events(fresh_org, "sso.removed")


def _untested_idp():
    from orgs.services import audit
    from orgs.sso import provider

    return provider.do_configure(
        "oidc",
        {"display_name": "Test IdP", "config": {"issuer": "https://idp.invalid"}},
        actor=audit.Actor.system("tests"),
    )


def test_changing_protocol_settings_asks_for_a_new_test(fresh_org, new_session):
    from orgs.services import audit
    from orgs.sso import provider

    idp_passed_a_test(fresh_org)
    idp = in_tenant(
        fresh_org,
        provider.do_configure,
        "oidc",
        {"trust_idp_mfa": True},
        actor=audit.Actor.system("tests"),
    )
    assert idp.tested_at is not None  # a behaviour flag keeps the test
    idp = in_tenant(
        fresh_org,
        provider.do_configure,
        "oidc",
        {"attribute_map": {"username": "preferred_username"}},
        actor=audit.Actor.system("tests"),
    )
    assert idp.tested_at is None and idp.test_result == {}


def test_owner_break_glass_needs_totp_and_is_audited_loudly(fresh_org, new_session, server):
    owner = new_session(fresh_org, role="owner")
    member = make_user(fresh_org)
    idp_passed_a_test(fresh_org)
    assert patch_policy(owner, sso_login=True, password_login=False).status_code == 200
    anonymous = owner.api.as_device(None)

    refused = anonymous.post(
        "/api/v1/auth/login", json={"username": member.username, "password": PASSWORD}
    )
    assert refused.status_code == 403 and code_of(refused) == "login_method_disabled"
    # An owner without an authenticator must enrol one first: no password-only way in.
    enrol = anonymous.post(
        "/api/v1/auth/login", json={"username": owner.user.username, "password": PASSWORD}
    )
    assert enrol.status_code == 401 and code_of(enrol) == "mfa_enrollment_required"
    assert not events(fresh_org, "member.break_glass_login")

    secret, _, step = enable_totp(owner)
    no_code = anonymous.post(
        "/api/v1/auth/login", json={"username": owner.user.username, "password": PASSWORD}
    )
    assert no_code.status_code == 401 and code_of(no_code) == "otp_required"
    ok = anonymous.post(
        "/api/v1/auth/login",
        json={
            "username": owner.user.username,
            "password": PASSWORD,
            "otp": rfc6238(secret, step + 1),
        },
    )
    assert ok.status_code == 200, ok.text
    [entry] = events(fresh_org, "member.break_glass_login")
    assert entry.data == {"method": "password+totp", "via": "app"}
    assert "break-glass password login by owner" in server.log_text()


def test_idp_settings_are_validated_and_owner_only(fresh_org, new_session, org_b):
    owner = new_session(fresh_org, role="owner")
    admin = new_session(fresh_org, role="admin")
    missing = owner.api.get("/api/v1/org/sso")
    assert missing.status_code == 404 and code_of(missing) == "sso_not_configured"
    assert admin.api.get("/api/v1/org/sso").status_code == 403
    assert admin.api.put("/api/v1/org/sso", json={"kind": "oidc"}).status_code == 403
    for bad in (
        {"kind": "ldap", "config": {}},
        {"kind": "oidc", "config": "x"},
        {"kind": "oidc", "config": {}, "colour": "red"},
        {"kind": "oidc", "config": {}, "display_name": ""},
        {"kind": "oidc", "config": {}, "attribute_map": {"shoe_size": "x"}},
        {"kind": "oidc", "config": {}, "jit_provisioning": "yes"},
        ["kind", "oidc"],
    ):
        response = owner.api.put("/api/v1/org/sso", json=bad)
        assert response.status_code == 400, (bad, response.text)
        assert code_of(response) == "invalid_sso_config"
    assert owner.api.get("/api/v1/org/sso").status_code == 404  # nothing half-written
    assert owner.api.delete("/api/v1/org/sso").status_code == 404
    assert not events(fresh_org, "sso.configured")


def test_group_role_map_is_validated_replaced_and_audited(fresh_org, new_session, org_b):
    owner = new_session(fresh_org, role="owner")
    for bad in (
        {"group": "x", "role": "member"},
        [{"group": "x"}],
        [{"group": "", "role": "member"}],
        [{"group": "x", "role": "wizard"}],
        [{"group": "Eng", "role": "member"}, {"group": "eng", "role": "admin"}],
    ):
        response = owner.api.put("/api/v1/org/sso/group-roles", json=bad)
        assert response.status_code == 400 and code_of(response) == "invalid_group_roles", bad
    entries = [{"group": "Admins", "role": "admin"}, {"group": "Staff", "role": "member"}]
    saved = owner.api.put("/api/v1/org/sso/group-roles", json=entries)
    assert saved.status_code == 200 and saved.json() == entries
    [entry] = events(fresh_org, "sso.group_roles_changed")
    assert entry.data == {"before": [], "after": entries}
    # Saving the same map again changes nothing and audits nothing.
    owner.api.put("/api/v1/org/sso/group-roles", json=entries)
    assert len(events(fresh_org, "sso.group_roles_changed")) == 1
    # Org B's map is its own.
    other = new_session(org_b, role="owner")
    assert other.api.put("/api/v1/org/sso/group-roles", json=[]).json() == []
    assert in_tenant(fresh_org, lambda: _map()) == [("Admins", "admin"), ("Staff", "member")]


def _map():
    from orgs.sso.models import GroupRole

    return [(r.group, r.role) for r in GroupRole.objects.all()]


def test_an_admin_cannot_map_a_group_to_a_role_they_could_not_grant(fresh_org, new_session):
    # org.manage is owners-only, so a custom role holding it but not every owner code
    # cannot hand the owner role to an IdP group.
    from orgs.roles import Perm
    from orgs.services import audit
    from orgs.services import roles as role_service

    in_tenant(
        fresh_org,
        role_service.check_create_role,
        slug="sso_admin",
        name="SSO admin",
        codes=[str(Perm.PORTAL_ACCESS), str(Perm.ORG_MANAGE)],
        actor=audit.Actor.system("tests"),
    )
    sso_admin = new_session(fresh_org, role="sso_admin")
    response = sso_admin.api.put(
        "/api/v1/org/sso/group-roles", json=[{"group": "Everyone", "role": "owner"}]
    )
    assert response.status_code == 403


def test_the_app_code_exchange_refuses_anything_but_a_live_code(fresh_org, api_for, server):
    api = api_for(fresh_org)
    verifier = "v" * 43
    for body in (
        {},
        {"code": "sph_c_nope", "code_verifier": verifier},
        {"code": "sph_g_wrongkind", "code_verifier": verifier},
        {"code": "sph_c_nope", "code_verifier": "short"},
        {"code": ["sph_c_x"], "code_verifier": verifier},
        {"code": "sph_c_" + "x" * 5000, "code_verifier": verifier},
    ):
        response = api.post("/api/v1/auth/sso/token", json=body)
        assert response.status_code == 401 and code_of(response) == "invalid_code", body
    listed = api.post("/api/v1/auth/sso/token", json=["x"])
    assert listed.status_code == 401
    garbage = api.request(
        "POST",
        "/api/v1/auth/sso/token",
        content=b"\xff{",
        headers={"Content-Type": "application/json"},
    )
    assert garbage.status_code == 400


def test_sso_start_refuses_clearly(fresh_org, new_session, api_for):
    api = api_for(fresh_org)
    assert api.get("/sso/login").status_code == 404  # no IdP
    assert api.get("/sso/login?purpose=root").status_code == 400
    owner = new_session(fresh_org, role="owner")
    idp_passed_a_test(fresh_org)
    off = api.get("/sso/login")
    assert off.status_code == 403 and "does not offer single sign-on" in off.text
    assert api.get("/sso/login?purpose=test").status_code == 403  # owners only, signed in
    patch_policy(owner, sso_login=True)
    for query in (
        "purpose=client",
        "purpose=client&redirect_uri=https://evil.example/cb&code_challenge=" + "a" * 43,
        "purpose=client&redirect_uri=http://127.0.0.1:9/cb&code_challenge=short",
        "purpose=client&redirect_uri=http://127.0.0.1:9/cb#x&code_challenge=" + "a" * 43,
        "purpose=client&redirect_uri=javascript:alert(1)&code_challenge=" + "a" * 43,
    ):
        response = api.get(f"/sso/login?{query}")
        assert response.status_code == 400, (query, response.status_code)
    assert host_of(fresh_org)


# --- what the server fetches at an admin's word ---------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",  # the cloud metadata service
        "http://10.1.2.3/",
        "http://192.168.0.1/",
        "http://[::ffff:10.0.0.1]/",
        "http://0.0.0.0/",
    ],
)
def test_idp_urls_pointing_inside_the_network_are_refused(fresh_org, new_session, url):
    owner = new_session(fresh_org, role="owner")
    for body in (
        {"kind": "oidc", "config": {"issuer": url, "client_id": "x"}, "secret": "s"},
        {"kind": "saml", "config": {"metadata_url": url}},
    ):
        response = owner.api.put("/api/v1/org/sso", json=body)
        assert response.status_code == 400 and code_of(response) == "invalid_sso_config"
        assert "internal address" in response.json()["error"]["message"], response.text
    assert owner.api.get("/api/v1/org/sso").status_code == 404


def test_by_default_the_server_does_not_fetch_from_loopback(fresh_org, new_session, tmp_path):
    """The tests' own IdPs listen on 127.0.0.1, allowed by the test settings only; a server
    with the default (no allowed networks) refuses them, IdP or not."""
    from tests.fixtures import Api, server_with_env

    owner = new_session(fresh_org, role="owner")
    with server_with_env(tmp_path / "server.log", OUTBOUND_ALLOWED_NETWORKS="") as strict:
        api = Api(strict, host_of(fresh_org)).as_device(owner.token)
        response = api.put(
            "/api/v1/org/sso",
            json={
                "kind": "oidc",
                "config": {"issuer": "http://127.0.0.1:9/", "client_id": "x"},
                "secret": "s",
            },
        )
    assert response.status_code == 400, response.text
    assert "internal address (127.0.0.1)" in response.json()["error"]["message"]


def test_failed_code_exchanges_spend_the_ip_login_budget(fresh_org, tmp_path):
    from tests.fixtures import Api, server_with_env

    with server_with_env(tmp_path / "server.log", LOGIN_RATE_PER_IP="3") as strict:
        api = Api(strict, host_of(fresh_org))
        body = {"code": "sph_c_nope", "code_verifier": "v" * 43}
        answers = [api.post("/api/v1/auth/sso/token", json=body) for _ in range(4)]
    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    assert "Retry-After" in answers[-1].headers
