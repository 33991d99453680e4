"""OpenID Connect single sign-on against a real OpenID provider (authlib's server side, run
by these tests on 127.0.0.1: orgs/tests/oidc_provider.py) and the real server.

Each test sets up an org of its own (owner, IdP settings over the API, SSO sign-in on), so
the IdP singleton, the JWKS refetch budget and the audit trail are the test's alone. The
browser is an httpx client with a cookie jar; it follows the redirects to the provider
(which approves its configured user at once) and back to the org's callback.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from admin_portal.tests.conftest import CHROMIUM, CHROMIUM_ARGS, Portal
from orgs.accounts.models import AuditEntry, User
from orgs.sso.models import IdentityProvider, SsoRequest
from orgs.tests.oidc_provider import OpenIdProvider, new_key
from siphera.tenancy import in_tenant
from tests.fixtures import DeviceKeys, Session, create_org, host_of, server_with_env, unique

ADMINS = "siphera-admins"


@pytest.fixture(scope="module")
def idp():
    provider = OpenIdProvider()
    yield provider
    provider.stop()


@pytest.fixture(autouse=True)
def _honest_provider(idp):
    """Every test starts with a provider that behaves; a test turns on what it needs."""
    yield
    idp.alg = "RS256"
    idp.sign_with_foreign_key = False
    idp.forge_alg = None
    idp.claim_overrides = {}
    idp.down = False
    idp.garbled = set()
    idp.deny = False
    idp.extra_discovery = {}
    idp.amr = ["pwd"]
    idp.acr = None
    idp.id_token_claims = {"preferred_username", "email", "name", "groups"}
    if idp.signing_key not in idp.keys:
        idp.signing_key = idp.keys[-1]


@dataclass
class OidcOrg:
    org: object
    owner: Session
    host: str
    client_id: str

    def browser(self, server) -> Portal:
        return Portal(server, self.org)


def person(*groups: str, **claims) -> dict:
    name = unique("p")
    return {
        "sub": f"sub-{secrets.token_hex(8)}",
        "preferred_username": name,
        "email": f"{name}@example.com",
        "name": name.title(),
        "groups": list(groups),
        **claims,
    }


@pytest.fixture
def oidc_org(new_session, idp, server):
    """Factory: a new org whose IdP is `provider` (default: the module's), SSO on."""

    def make(
        provider: OpenIdProvider | None = None,
        *,
        auth_method: str = "client_secret_basic",
        trust_idp_mfa: bool = False,
        mfa_policy: str | None = None,
        config: dict | None = None,
    ) -> OidcOrg:
        provider = provider or idp
        org = create_org(unique("o"), f"{unique('h')}.test")
        owner = new_session(org, role="owner")
        host = host_of(org)
        # The IdP knows the callback on the org host as the test clients (no port) and
        # as Chromium (with the server's port) reach it.
        callbacks = [f"http://{host}{port}/sso/oidc/callback" for port in ("", f":{server.port}")]
        client = provider.add_client(callbacks, auth_method=auth_method)
        body = {
            "kind": "oidc",
            "display_name": "Test IdP",
            "config": {
                "issuer": provider.issuer,
                "client_id": client.client_id,
                "scopes": ["openid", "profile", "email", "groups"],
                "public_client": auth_method == "none",
                **(config or {}),
            },
            "attribute_map": {
                "username": "preferred_username",
                "email": "email",
                "display_name": "name",
                "groups": "groups",
            },
            "trust_idp_mfa": trust_idp_mfa,
        }
        if auth_method != "none":
            body["secret"] = client.client_secret
        configured = owner.api.put("/api/v1/org/sso", json=body)
        assert configured.status_code == 200, configured.text
        roles = owner.api.put(
            "/api/v1/org/sso/group-roles", json=[{"group": ADMINS, "role": "admin"}]
        )
        assert roles.status_code == 200, roles.text
        policy = {"sso_login": True, **({"mfa_policy": mfa_policy} if mfa_policy else {})}
        on = owner.api.request("PATCH", "/api/v1/org/policy", json=policy)
        assert on.status_code == 200, on.text
        return OidcOrg(org=org, owner=owner, host=host, client_id=client.client_id)

    return make


def to_idp(browser: Portal, idp: OpenIdProvider, **params) -> str:
    """Start a sign-in; return the provider's authorization URL it sends the browser to."""
    start = browser.get("/sso/login", params=params)
    assert start.status_code == 302, start.text
    location = start.headers["location"]
    assert location.startswith(f"{idp.issuer}/authorize?")
    return location


def at_idp(location: str) -> str:
    """The provider approves; return the callback path + query it sends the browser to."""
    answer = httpx.get(location, timeout=10)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    assert back.path == "/sso/oidc/callback"
    return f"{back.path}?{back.query}"


def sign_in(browser: Portal, idp: OpenIdProvider, **params) -> httpx.Response:
    return browser.get(at_idp(to_idp(browser, idp, **params)))


def refused_code(response: httpx.Response) -> str:
    assert 'data-testid="error-code"' in response.text, response.text[:500]
    return response.text.split('data-testid="error-code">', 1)[1].split("<", 1)[0]


def audit_events(org, event: str) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event).order_by("id")))


def user_by_subject(org, subject: str) -> User | None:
    return in_tenant(org, lambda: User.objects.filter(external_id=subject).first())


def is_signed_in(browser: Portal) -> bool:
    return browser.get("/portal/").status_code == 200


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


# --- set-up -------------------------------------------------------------------------------------


def test_the_settings_show_the_discovered_endpoints_and_keys_but_never_the_secret(
    oidc_org, idp, api_for, org_b
):
    setup = oidc_org()
    shown = setup.owner.api.get("/api/v1/org/sso")
    assert shown.status_code == 200
    body = shown.json()
    config = body["config"]
    assert config["issuer"] == idp.issuer and config["client_id"] == setup.client_id
    assert config["token_endpoint"] == f"{idp.issuer}/token"
    assert config["client_auth"] == "client_secret_basic"
    assert config["signing_algorithms"] == ["RS256"]
    assert config["key_ids"] == [k.kid for k in idp.keys]
    assert config["redirect_path"] == "/sso/oidc/callback"
    assert "jwks" not in config and body["has_secret"] is True
    secret = idp.clients[setup.client_id].client_secret
    assert secret not in shown.text
    stored = in_tenant(setup.org, lambda: IdentityProvider.objects.get(pk=1))
    assert secret not in stored.secret_encrypted and secret not in str(stored.config)
    # Org B sees nothing of it.
    other = api_for(org_b).get("/api/v1/auth/sso")
    assert other.status_code == 200 and other.json()["display_name"] != "Test IdP"


def test_a_config_round_trip_keeps_the_secret_and_bad_issuers_are_a_clear_400(oidc_org, idp):
    setup = oidc_org()
    api = setup.owner.api
    shown = api.get("/api/v1/org/sso").json()
    again = api.put("/api/v1/org/sso", json={"config": shown["config"]})
    assert again.status_code == 200, again.text
    assert again.json()["has_secret"] is True

    down = OpenIdProvider()
    down.stop()
    cases = {
        "unreachable": {"issuer": down.issuer, "client_id": "x"},
        "not a URL": {"issuer": "javascript:alert(1)", "client_id": "x"},
        "another issuer": {"issuer": f"{idp.issuer}/elsewhere", "client_id": "x"},
        "a query": {"issuer": f"{idp.issuer}?tenant=1", "client_id": "x"},
        "no client id": {"issuer": idp.issuer},
        "unknown key": {"issuer": idp.issuer, "client_id": "x", "jwks_url": "http://evil/"},
        "scopes": {"issuer": idp.issuer, "client_id": "x", "scopes": "openid"},
    }
    for label, config in cases.items():
        answer = api.put("/api/v1/org/sso", json={"config": config, "secret": "s"})
        assert answer.status_code == 400, (label, answer.text)
        assert answer.json()["error"]["code"] == "invalid_sso_config", label
    # An IdP answering with a huge document, or an error page, is named as such.
    idp.extra_discovery = {"padding": "x" * 300_000}
    answer = api.put("/api/v1/org/sso", json={"config": shown["config"]})
    assert answer.status_code == 400 and "KiB" in answer.json()["error"]["message"]
    idp.extra_discovery = {}
    idp.down = True
    answer = api.put("/api/v1/org/sso", json={"config": shown["config"]})
    assert answer.status_code == 400 and "HTTP 503" in answer.json()["error"]["message"]
    idp.down = False
    # Nothing of those attempts was saved.
    assert api.get("/api/v1/org/sso").json()["config"] == again.json()["config"]
    # A confidential client needs its secret the first time.
    assert api.delete("/api/v1/org/sso").status_code == 204
    answer = api.put(
        "/api/v1/org/sso", json={"kind": "oidc", "config": {"issuer": idp.issuer, "client_id": "x"}}
    )
    assert answer.status_code == 400 and "secret" in answer.json()["error"]["message"]


# --- sign-in ------------------------------------------------------------------------------------


def test_portal_sign_in_creates_the_user_just_in_time_with_the_role_of_their_group(
    oidc_org, idp, server
):
    setup = oidc_org()
    idp.user = person(ADMINS)
    browser = setup.browser(server)
    done = sign_in(browser, idp)
    assert done.status_code == 302, done.text
    assert done.headers["location"] == "/portal/"
    assert is_signed_in(browser)

    user = user_by_subject(setup.org, idp.user["sub"])
    assert user is not None and user.username == idp.user["preferred_username"]
    assert user.role == "admin" and user.source == "sso"
    assert user.email == idp.user["email"] and user.display_name == idp.user["name"]
    [created] = audit_events(setup.org, "member.created")[-1:]
    assert created.target_id == str(user.pk) and created.data["source"] == "sso"
    assert created.actor_label == "sso:oidc"
    logins = [e for e in audit_events(setup.org, "portal.logged_in") if e.actor_id == user.pk]
    assert logins and logins[-1].data.get("method") == "oidc"


def test_a_later_sign_in_follows_the_group_claim_even_when_only_userinfo_has_it(
    oidc_org, idp, server
):
    setup = oidc_org()
    idp.user = person(ADMINS)
    assert sign_in(setup.browser(server), idp).status_code == 302
    assert user_by_subject(setup.org, idp.user["sub"]).role == "admin"
    # The IdP moves them out of the admins group, and now sends groups only through the
    # userinfo endpoint: the role follows.
    idp.user = {**idp.user, "groups": ["everyone"]}
    idp.id_token_claims = {"preferred_username", "email", "name"}
    refused = sign_in(setup.browser(server), idp)
    assert refused.status_code == 403 and refused_code(refused) == "portal_access_denied"
    assert user_by_subject(setup.org, idp.user["sub"]).role == "member"


def test_people_are_bound_to_the_claim_the_org_names_as_their_immutable_id(oidc_org, idp, server):
    setup = oidc_org()
    changed = setup.owner.api.put("/api/v1/org/sso", json={"subject_attribute": "oid"})
    assert changed.status_code == 200, changed.text
    idp.id_token_claims = {"preferred_username", "email", "name", "groups", "oid"}
    oid = f"oid-{secrets.token_hex(8)}"
    idp.user = person(ADMINS, oid=oid)
    assert sign_in(setup.browser(server), idp).status_code == 302
    assert user_by_subject(setup.org, oid) is not None
    assert user_by_subject(setup.org, idp.user["sub"]) is None
    # An IdP that leaves the claim out gives no usable id: refused, nobody created.
    idp.user = person(ADMINS)
    assert_refused(setup, sign_in(setup.browser(server), idp), "sso_no_subject")


def test_app_sign_in_ends_in_a_login_grant_that_registers_a_device(oidc_org, idp, server):
    setup = oidc_org(auth_method="none")  # a public client: PKCE only, no secret
    idp.user = person()
    browser = setup.browser(server)
    verifier, challenge = pkce()
    redirect_uri = "http://127.0.0.1:8765/done"
    done = sign_in(
        browser, idp, purpose="client", redirect_uri=redirect_uri, code_challenge=challenge
    )
    assert done.status_code == 302, done.text
    location = done.headers["location"]
    assert location.startswith(redirect_uri + "?code=")
    code = parse_qs(urlsplit(location).query)["code"][0]

    api = setup.owner.api.as_device(None)
    wrong = api.post("/api/v1/auth/sso/token", json={"code": code, "code_verifier": "x" * 64})
    assert wrong.status_code == 401
    exchanged = api.post("/api/v1/auth/sso/token", json={"code": code, "code_verifier": verifier})
    assert exchanged.status_code == 200, exchanged.text
    grant = exchanged.json()["grant"]
    keys = DeviceKeys.generate()
    device = api.post(
        "/api/v1/devices",
        json=keys.registration("sso phone"),
        headers={"Authorization": f"Grant {grant}"},
    )
    assert device.status_code == 201, device.text
    user = user_by_subject(setup.org, idp.user["sub"])
    me = api.as_device(device.json()["token"]).get("/api/v1/me")
    assert me.status_code == 200 and me.json()["username"] == user.username
    again = api.post("/api/v1/auth/sso/token", json={"code": code, "code_verifier": verifier})
    assert again.status_code == 401
    # No portal session came of it.
    assert not is_signed_in(browser)


def test_a_client_whose_idp_wants_the_secret_in_the_form_signs_in(oidc_org, idp, server):
    idp.extra_discovery = {"token_endpoint_auth_methods_supported": ["client_secret_post"]}
    try:
        setup = oidc_org(auth_method="client_secret_post")
    finally:
        idp.extra_discovery = {}
    shown = setup.owner.api.get("/api/v1/org/sso").json()["config"]
    assert shown["client_auth"] == "client_secret_post"
    idp.user = person(ADMINS)
    browser = setup.browser(server)
    assert sign_in(browser, idp).status_code == 302
    assert is_signed_in(browser)


def test_a_wrong_client_secret_is_refused_by_the_idp_and_shown_as_such(oidc_org, idp, server):
    setup = oidc_org()
    changed = setup.owner.api.put("/api/v1/org/sso", json={"secret": "not-the-secret"})
    assert changed.status_code == 200, changed.text
    idp.user = person(ADMINS)
    browser = setup.browser(server)
    assert_refused(setup, sign_in(browser, idp), "sso_token_refused")
    assert not is_signed_in(browser)


def test_an_idp_app_tile_starts_a_sign_in_that_lands_on_the_page_it_names(oidc_org, idp, server):
    setup = oidc_org()
    idp.user = person(ADMINS)
    browser = setup.browser(server)
    wrong = browser.get("/sso/oidc/initiate", params={"iss": "https://idp.example"})
    assert_refused(setup, wrong, "sso_wrong_issuer", 400)
    elsewhere = browser.get(
        "/sso/oidc/initiate", params={"iss": idp.issuer, "target_link_uri": "https://x.example/"}
    )
    assert elsewhere.status_code == 302
    assert elsewhere.headers["location"] == "/sso/login?purpose=portal"

    target = f"http://{setup.host}/portal/users/?q=a"
    started = browser.get(
        "/sso/oidc/initiate", params={"iss": idp.issuer, "target_link_uri": target}
    )
    assert started.status_code == 302
    to_login = started.headers["location"]
    assert to_login == "/sso/login?purpose=portal&next=%2Fportal%2Fusers%2F%3Fq%3Da"
    at = browser.get(to_login)
    assert at.status_code == 302 and at.headers["location"].startswith(idp.issuer)
    done = browser.get(at_idp(at.headers["location"]))
    assert done.status_code == 302 and done.headers["location"] == "/portal/users/?q=a"
    assert is_signed_in(browser)


def test_a_refused_app_sign_in_shows_the_reason_and_never_calls_the_app(oidc_org, idp, server):
    setup = oidc_org(auth_method="none")
    idp.user = person()
    idp.sign_with_foreign_key = True
    _verifier, challenge = pkce()
    refused = sign_in(
        setup.browser(server),
        idp,
        purpose="client",
        redirect_uri="http://127.0.0.1:8765/done",
        code_challenge=challenge,
    )
    assert_refused(setup, refused, "sso_invalid_signature")
    assert "location" not in refused.headers and "127.0.0.1:8765" not in refused.text


def test_the_org_can_trust_the_idps_mfa_or_still_require_its_own_totp(oidc_org, idp, server):
    setup = oidc_org(trust_idp_mfa=True, mfa_policy="required_for_admins")
    idp.user = person(ADMINS)
    idp.amr = ["pwd", "mfa"]
    browser = setup.browser(server)
    done = sign_in(browser, idp)
    assert done.status_code == 302 and done.headers["location"] == "/portal/"
    assert is_signed_in(browser)
    user = user_by_subject(setup.org, idp.user["sub"])
    logins = [e for e in audit_events(setup.org, "portal.logged_in") if e.actor_id == user.pk]
    assert logins[-1].data["method"] == "oidc+idp_mfa"

    # The IdP did not do MFA this time: the org's own TOTP (enrolment first) is asked.
    idp.user = person(ADMINS)
    idp.amr = ["pwd"]
    browser = setup.browser(server)
    pending = sign_in(browser, idp)
    assert pending.status_code == 302 and pending.headers["location"] == "/portal/login/setup-mfa"
    assert not is_signed_in(browser)

    # The IdP may say it with an `acr` the org names instead.
    by_acr = oidc_org(
        trust_idp_mfa=True,
        mfa_policy="required_for_admins",
        config={"mfa_acr_values": ["urn:acme:loa:mfa"]},
    )
    idp.user = person(ADMINS)
    idp.amr, idp.acr = ["pwd"], "urn:acme:loa:mfa"
    browser = by_acr.browser(server)
    done = sign_in(browser, idp)
    assert done.status_code == 302 and done.headers["location"] == "/portal/"
    idp.acr = None

    # An org that does not trust the IdP asks for TOTP even when the IdP did MFA.
    strict = oidc_org(trust_idp_mfa=False, mfa_policy="required_for_admins")
    idp.user = person(ADMINS)
    idp.amr = ["pwd", "mfa"]
    browser = strict.browser(server)
    pending = sign_in(browser, idp)
    assert pending.status_code == 302 and pending.headers["location"] == "/portal/login/setup-mfa"


# --- refusals -----------------------------------------------------------------------------------


def assert_refused(setup: OidcOrg, response: httpx.Response, code: str, status: int = 403):
    assert response.status_code == status, response.text[:300]
    assert refused_code(response) == code
    refusals = audit_events(setup.org, "sso.login_refused")
    assert refusals and refusals[-1].data["code"] == code


@pytest.mark.parametrize(
    ("knob", "code"),
    [
        ({"sign_with_foreign_key": True}, "sso_invalid_signature"),
        ({"forge_alg": "none"}, "sso_invalid_signature"),
        ({"forge_alg": "HS256"}, "sso_invalid_signature"),
        ({"claim_overrides": {"nonce": "not-the-one-we-sent"}}, "sso_wrong_nonce"),
        ({"claim_overrides": {"nonce": None}}, "sso_wrong_nonce"),
        ({"claim_overrides": {"aud": ["another-app"]}}, "sso_wrong_audience"),
        ({"claim_overrides": {"azp": "another-app"}}, "sso_wrong_audience"),
        ({"claim_overrides": {"iss": "http://127.0.0.1:1"}}, "sso_wrong_issuer"),
        ({"expired": True}, "sso_token_expired"),
    ],
    ids=[
        "bad-signature",
        "alg-none",
        "hs256-with-the-public-key",
        "wrong-nonce",
        "no-nonce",
        "wrong-aud",
        "wrong-azp",
        "wrong-iss",
        "expired",
    ],
)
def test_an_id_token_that_fails_a_check_is_refused_and_nobody_is_signed_in(
    oidc_org, idp, server, knob, code
):
    setup = oidc_org()
    idp.user = person(ADMINS)
    if knob.pop("expired", False):
        now = int(time.time())
        knob = {"claim_overrides": {"iat": now - 7200, "exp": now - 3600}}
    for name, value in knob.items():
        setattr(idp, name, value)
    browser = setup.browser(server)
    assert_refused(setup, sign_in(browser, idp), code)
    assert not is_signed_in(browser)
    assert user_by_subject(setup.org, idp.user["sub"]) is None


def test_an_es256_idp_is_verified_and_only_the_algorithms_it_advertises_count(
    oidc_org, idp, server
):
    rsa_keys, rsa_key = idp.keys, idp.signing_key
    ec_key = new_key("ES256")
    idp.alg, idp.keys, idp.signing_key = "ES256", [ec_key, *rsa_keys], ec_key
    try:
        setup = oidc_org()
        shown = setup.owner.api.get("/api/v1/org/sso").json()["config"]
        assert shown["signing_algorithms"] == ["ES256"]
        idp.user = person(ADMINS)
        assert sign_in(setup.browser(server), idp).status_code == 302
        # RS256 with a key the IdP does publish, though its discovery names ES256 only.
        idp.alg, idp.signing_key = "RS256", rsa_key
        idp.user = person(ADMINS)
        assert_refused(setup, sign_in(setup.browser(server), idp), "sso_invalid_signature")
    finally:
        idp.alg, idp.keys, idp.signing_key = "RS256", rsa_keys, rsa_key


def test_a_replayed_or_unknown_state_is_refused(oidc_org, idp, server):
    setup = oidc_org()
    idp.user = person(ADMINS)
    browser = setup.browser(server)
    callback = at_idp(to_idp(browser, idp))
    assert browser.get(callback).status_code == 302
    replay = setup.browser(server)
    assert_refused(setup, replay.get(callback), "sso_request_unknown", 400)
    assert not is_signed_in(replay)
    forged = callback.replace("state=", "state=x")
    assert_refused(setup, replay.get(forged), "sso_request_unknown", 400)
    assert_refused(setup, replay.get("/sso/oidc/callback?code=abc"), "sso_request_unknown", 400)
    huge = replay.get("/sso/oidc/callback", params={"state": "s" * 5000, "code": "c" * 5000})
    assert_refused(setup, huge, "sso_request_unknown", 400)
    # A known state without a code (nor an error) is refused, and used up.
    no_code = at_idp(to_idp(browser, idp)).split("code=", 1)[1].split("&", 1)[1]
    assert no_code.startswith("state=")
    assert_refused(setup, browser.get(f"/sso/oidc/callback?{no_code}"), "sso_invalid_response")
    assert_refused(setup, browser.get(f"/sso/oidc/callback?{no_code}"), "sso_request_unknown", 400)


def test_an_answer_to_a_sign_in_started_in_another_browser_is_refused(oidc_org, idp, server):
    """Login CSRF: an attacker signs in as themselves and has the victim open the answer."""
    setup = oidc_org()
    idp.user = person(ADMINS)  # the attacker's account at the IdP
    attacker = setup.browser(server)
    callback = at_idp(to_idp(attacker, idp))
    victim = setup.browser(server)
    assert_refused(setup, victim.get(callback), "sso_wrong_browser")
    assert not is_signed_in(victim)
    assert user_by_subject(setup.org, idp.user["sub"]) is None


def test_org_b_refuses_an_answer_meant_for_org_a_which_still_works_at_home(oidc_org, idp, server):
    org_a, org_b = oidc_org(), oidc_org()
    idp.user = person(ADMINS)
    browser_a = org_a.browser(server)
    callback = at_idp(to_idp(browser_a, idp))
    browser_b = org_b.browser(server)
    assert_refused(org_b, browser_b.get(callback), "sso_request_unknown", 400)
    assert not is_signed_in(browser_b)
    assert user_by_subject(org_b.org, idp.user["sub"]) is None
    assert browser_a.get(callback).status_code == 302
    assert is_signed_in(browser_a)


def test_the_idp_saying_access_denied_is_a_refusal_and_uses_the_state_up(oidc_org, idp, server):
    setup = oidc_org()
    idp.user = person(ADMINS)
    idp.deny = True
    browser = setup.browser(server)
    callback = at_idp(to_idp(browser, idp))
    assert "error=access_denied" in callback
    assert_refused(setup, browser.get(callback), "sso_idp_access_denied")
    state = parse_qs(urlsplit(callback).query)["state"][0]
    used = in_tenant(setup.org, lambda: SsoRequest.objects.get(pk=state))
    assert used.used_at is not None
    retry = browser.get(f"/sso/oidc/callback?code=abc&state={state}")
    assert_refused(setup, retry, "sso_request_unknown", 400)


def test_an_idp_that_fails_or_is_down_gives_a_clear_refusal_not_a_500(oidc_org, idp, server):
    setup = oidc_org()
    idp.user = person(ADMINS)
    browser = setup.browser(server)
    callback = at_idp(to_idp(browser, idp))
    idp.down = True  # the token endpoint answers 503 with an HTML page
    assert_refused(setup, browser.get(callback), "sso_idp_error", 502)
    idp.down = False
    for garbled in ("/token", "/userinfo"):
        idp.garbled = {garbled}  # 200, but an HTML page
        idp.id_token_claims = {"preferred_username", "email", "name"}  # groups: userinfo
        idp.user = person(ADMINS)
        browser = setup.browser(server)
        assert_refused(setup, sign_in(browser, idp), "sso_idp_error", 502)
        assert not is_signed_in(browser)
    idp.garbled = set()

    gone = OpenIdProvider()
    setup = oidc_org(gone)
    gone.user = person(ADMINS)
    browser = setup.browser(server)
    callback = at_idp(to_idp(browser, gone))
    gone.stop()  # unreachable now
    assert_refused(setup, browser.get(callback), "sso_idp_error", 502)
    assert not is_signed_in(browser)


def test_a_rolled_over_key_is_fetched_and_accepted_and_a_removed_key_no_longer_verifies(
    oidc_org, idp, server
):
    setup = oidc_org()
    old = idp.signing_key
    jwks_before = idp.hits["/jwks"]
    # The IdP rolls over: the new key replaces the old one in its JWKS.
    new = new_key()
    idp.keys = [new]
    idp.signing_key = new
    idp.user = person(ADMINS)
    browser = setup.browser(server)
    done = sign_in(browser, idp)
    assert done.status_code == 302, done.text
    assert idp.hits["/jwks"] == jwks_before + 1
    [refreshed] = audit_events(setup.org, "sso.keys_refreshed")
    assert refreshed.data == {"before": [old.kid], "after": [new.kid]}
    shown = setup.owner.api.get("/api/v1/org/sso").json()["config"]
    assert shown["key_ids"] == [new.kid]

    # A token still signed with the removed key is refused; the unknown kid does not make
    # us fetch the JWKS again within the minimum interval, however often it is tried.
    idp.signing_key = old
    for _ in range(3):
        idp.user = person(ADMINS)
        assert_refused(setup, sign_in(setup.browser(server), idp), "sso_unknown_key")
    assert idp.hits["/jwks"] == jwks_before + 1
    idp.signing_key = new


def test_a_deactivated_user_is_refused_though_the_idp_vouches_for_them(oidc_org, idp, server):
    setup = oidc_org()
    idp.user = person(ADMINS)
    assert sign_in(setup.browser(server), idp).status_code == 302
    user = user_by_subject(setup.org, idp.user["sub"])
    off = setup.owner.api.post(f"/api/v1/users/{user.pk}/deactivate")
    assert off.status_code == 200, off.text
    browser = setup.browser(server)
    assert_refused(setup, sign_in(browser, idp), "user_inactive")
    assert not is_signed_in(browser)


def test_an_owners_test_sign_in_is_recorded_and_lets_passwords_be_turned_off(oidc_org, idp, server):
    setup = oidc_org()
    api = setup.owner.api
    off = api.request("PATCH", "/api/v1/org/policy", json={"password_login": False})
    assert off.status_code == 409 and off.json()["error"]["code"] == "sso_not_tested"
    browser = setup.browser(server)
    assert browser.login(setup.owner.user.username).status_code == 302
    idp.user = person("testers")
    location = to_idp(browser, idp, purpose="test")
    assert "prompt=login" in location
    shown = browser.get(at_idp(location))
    assert shown.status_code == 200, shown.text[:300]
    assert idp.user["sub"] in shown.text
    tested = api.get("/api/v1/org/sso").json()
    assert tested["tested_at"] and tested["test_result"]["subject"] == idp.user["sub"]
    assert tested["test_result"]["attributes"]["groups"] == ["testers"]
    assert user_by_subject(setup.org, idp.user["sub"]) is None  # nobody was created
    off = api.request("PATCH", "/api/v1/org/policy", json={"password_login": False})
    assert off.status_code == 200, off.text


@pytest.fixture(scope="module")
def short_lived_keys_server(tmp_path_factory, server):
    """A second web process whose cached IdP keys are stale after a second. Its refetch
    limit is a second too: on a slow machine the first sign-in may already find the keys
    stale and refetch them, which must not use up the refetch the test is about."""
    log = tmp_path_factory.mktemp("oidc-server") / "server.log"
    with server_with_env(
        log, OIDC_JWKS_MAX_AGE_SECONDS="1", OIDC_JWKS_MIN_REFETCH_SECONDS="1"
    ) as other:
        yield other


def test_keys_past_their_max_age_are_fetched_again_so_a_withdrawn_key_stops_verifying(
    oidc_org, idp, short_lived_keys_server
):
    setup = oidc_org()
    kept = idp.signing_key
    idp.user = person(ADMINS)
    assert sign_in(setup.browser(short_lived_keys_server), idp).status_code == 302
    # The IdP withdraws the key it signs with (say it leaked) and publishes another, but
    # tokens still come signed with the old one, kid and all.
    idp.keys = [new_key()]
    time.sleep(1.2)
    fetched = idp.hits["/jwks"]
    idp.user = person(ADMINS)
    refused = sign_in(setup.browser(short_lived_keys_server), idp)
    assert_refused(setup, refused, "sso_unknown_key")
    assert idp.hits["/jwks"] == fetched + 1
    idp.keys = [kept]


@pytest.mark.browser
async def test_in_chromium_a_person_signs_in_to_the_portal_through_the_idp(oidc_org, idp, server):
    from playwright.async_api import async_playwright, expect

    assert CHROMIUM.exists(), "the browser test needs Debian's chromium (PITFALLS 24)"
    setup = oidc_org()
    idp.user = person(ADMINS)
    base = f"http://{setup.host}:{server.port}"
    failures: list[str] = []
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {setup.host} 127.0.0.1"],
        )
        try:
            page = await browser.new_page()
            page.on(
                "response",
                lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None,
            )
            # Given the org's sign-in page, which offers its IdP
            await page.goto(f"{base}/portal/login")
            button = page.get_by_test_id("sso-login")
            await expect(button).to_have_text("Sign in with Test IdP")
            # When the person takes it, the IdP (which knows them) sends them back signed in
            await button.click()
            await expect(page).to_have_url(f"{base}/portal/")
            # (the display name the IdP sent)
            await expect(page.get_by_test_id("current-user")).to_have_text(idp.user["name"])
        finally:
            await browser.close()
    assert idp.hits["/authorize"] and idp.hits["/token"]
    assert failures == []
    user = user_by_subject(setup.org, idp.user["sub"])
    assert user is not None and user.role == "admin"


def test_signing_out_of_the_portal_signs_out_at_the_idp_with_the_id_token_as_hint(
    oidc_org, idp, server
):
    setup = oidc_org()
    idp.user = person(ADMINS)
    browser = setup.browser(server)
    assert sign_in(browser, idp).status_code == 302
    assert is_signed_in(browser)  # (the dashboard's sign-out form gives the CSRF token)

    page = browser.post("/portal/logout")
    assert page.status_code == 200, page.text[:300]
    link = page.text.split('data-testid="idp-logout-link"', 1)[0].rsplit('href="', 1)[1]
    url = html.unescape(link.split('"', 1)[0])
    assert url.startswith(f"{idp.issuer}/logout?")
    query = parse_qs(urlsplit(url).query)
    assert query["client_id"] == [setup.client_id]
    assert query["post_logout_redirect_uri"] == [f"http://{setup.host}/portal/login"]
    assert not is_signed_in(browser)
    [logout] = audit_events(setup.org, "sso.logout")
    assert logout.data == {"initiated_by": "sp"} and logout.target_id == "oidc"
    # The IdP accepts the hint (an ID token it issued for this client) and sends us back.
    back = httpx.get(url, timeout=10)
    assert back.status_code == 302, back.text
    assert back.headers["location"] == f"http://{setup.host}/portal/login"
    assert idp.logged_out[-1] == idp.user["sub"]


def test_a_password_session_signs_out_here_only(oidc_org, idp, server):
    setup = oidc_org()
    browser = setup.browser(server)
    assert browser.login(setup.owner.user.username).status_code == 302
    out = browser.post("/portal/logout")
    assert out.status_code == 302 and out.headers["location"] == "/portal/login"
    assert audit_events(setup.org, "sso.logout") == []
