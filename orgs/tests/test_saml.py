"""SAML 2.0 single sign-on against a real identity provider (pysaml2's server, run by these
tests on 127.0.0.1: orgs/tests/saml_idp.py) and the real server.

Each test sets up an org of its own (owner, IdP settings over the API from the IdP's
metadata, SSO sign-in on) and the IdP learns that org's SP from the org's own metadata
URL. The browser is an httpx client with a cookie jar: it follows the redirect to the IdP,
reads the IdP's auto-submitting form and posts it to the org's ACS, as a browser would.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from admin_portal.tests.conftest import Portal
from orgs.accounts.models import AuditEntry, User
from orgs.sso.models import IdentityProvider, SsoRequest
from orgs.tests.saml_idp import (
    MFA_CONTEXT,
    TRANSIENT,
    Person,
    SamlIdp,
    SentResponse,
    read_post_form,
)
from siphera.tenancy import in_tenant
from tests.fixtures import DeviceKeys, Session, create_org, host_of, unique

ADMINS = "siphera-admins"
UID = "urn:oid:0.9.2342.19200300.100.1.1"
ATTRIBUTE_MAP = {
    "username": "uid",
    "email": "mail",
    "display_name": "displayName",
    "groups": "groups",
}


@pytest.fixture(scope="module")
def idp():
    provider = SamlIdp("one")
    yield provider
    provider.stop()


@pytest.fixture(scope="module")
def other_idp():
    provider = SamlIdp("two")
    yield provider
    provider.stop()


@pytest.fixture(autouse=True)
def _honest_idp(idp, other_idp):
    """Every test starts with IdPs that behave; a test turns on what it needs."""
    yield
    idp.reset()
    other_idp.reset()


@dataclass
class SamlOrg:
    org: object
    owner: Session
    host: str
    entity_id: str

    def browser(self, server) -> Portal:
        return Portal(server, self.org)

    @property
    def acs(self) -> str:
        return f"http://{self.host}/sso/saml/acs"


def person(*groups: str, **kw) -> Person:
    """Someone the IdP knows; in the admins group unless told (members have no portal)."""
    groups = groups or (ADMINS,)
    name = unique("p")
    return Person(
        attributes={
            "uid": [name],
            "mail": [f"{name}@example.com"],
            "displayName": [name.title()],
            "groups": list(groups),
        },
        **kw,
    )


def sp_metadata(server, host: str) -> httpx.Response:
    return httpx.get(f"{server.url}/sso/saml/metadata", headers={"Host": host}, timeout=10)


@pytest.fixture
def saml_org(new_session, idp, server):
    """Factory: a new org whose IdP is `provider` (default: the module's), SSO on."""

    def make(
        provider: SamlIdp | None = None,
        *,
        config: dict | None = None,
        trust_idp_mfa: bool = False,
        allow_idp_initiated: bool = False,
        mfa_policy: str | None = None,
    ) -> SamlOrg:
        provider = provider or idp
        org = create_org(unique("o"), f"{unique('h')}.test")
        owner = new_session(org, role="owner")
        host = host_of(org)
        body = {
            "kind": "saml",
            "display_name": "Test SAML IdP",
            "config": config
            if config is not None
            else {"metadata_url": f"{provider.base}/metadata"},
            "attribute_map": ATTRIBUTE_MAP,
            "trust_idp_mfa": trust_idp_mfa,
            "allow_idp_initiated": allow_idp_initiated,
        }
        configured = owner.api.put("/api/v1/org/sso", json=body)
        assert configured.status_code == 200, configured.text
        roles = owner.api.put(
            "/api/v1/org/sso/group-roles", json=[{"group": ADMINS, "role": "admin"}]
        )
        assert roles.status_code == 200, roles.text
        policy = {"sso_login": True, **({"mfa_policy": mfa_policy} if mfa_policy else {})}
        on = owner.api.request("PATCH", "/api/v1/org/policy", json=policy)
        assert on.status_code == 200, on.text
        metadata = sp_metadata(server, host)
        assert metadata.status_code == 200, metadata.text
        entity_id = provider.add_sp(metadata.text)
        assert entity_id == f"http://{host}/sso/saml/metadata"
        return SamlOrg(org=org, owner=owner, host=host, entity_id=entity_id)

    return make


def to_idp(browser: Portal, idp: SamlIdp, **params) -> str:
    """Start a sign-in; return the IdP URL (HTTP-Redirect binding) it sends the browser to."""
    start = browser.get("/sso/login", params=params)
    assert start.status_code == 302, start.text
    location = start.headers["location"]
    assert location.startswith(f"{idp.base}/sso?SAMLRequest=")
    return location


def at_idp(location: str) -> SentResponse:
    """The IdP approves: the form it hands the browser."""
    page = httpx.get(location, timeout=10)
    assert page.status_code == 200, page.text
    return read_post_form(page.text)


def post(browser: Portal, sent: SentResponse) -> httpx.Response:
    return browser.post(sent.path, sent.form(), csrf=False)


def sign_in(browser: Portal, idp: SamlIdp, **params) -> httpx.Response:
    return post(browser, at_idp(to_idp(browser, idp, **params)))


def refused_code(response: httpx.Response) -> str:
    assert 'data-testid="error-code"' in response.text, response.text[:500]
    return response.text.split('data-testid="error-code">', 1)[1].split("<", 1)[0]


def audit_events(org, event: str) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event).order_by("id")))


def user_by_subject(org, subject: str) -> User | None:
    return in_tenant(org, lambda: User.objects.filter(external_id=subject).first())


def user_count(org) -> int:
    return in_tenant(org, User.objects.count)


def is_signed_in(browser: Portal) -> bool:
    return browser.get("/portal/").status_code == 200


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def assert_refused(setup: SamlOrg, response: httpx.Response, code: str, status: int = 403):
    assert response.status_code == status, response.text[:500]
    assert refused_code(response) == code
    refusals = audit_events(setup.org, "sso.login_refused")
    assert refusals and refusals[-1].data["code"] == code


# --- set-up -------------------------------------------------------------------------------------


def test_each_org_has_its_own_sp_metadata_entity_id_and_key(saml_org, server, idp):
    a, b = saml_org(), saml_org()
    meta_a, meta_b = sp_metadata(server, a.host), sp_metadata(server, b.host)
    assert meta_a.headers["content-type"].startswith("application/samlmetadata+xml")
    for setup, meta in ((a, meta_a), (b, meta_b)):
        assert f'entityID="http://{setup.host}/sso/saml/metadata"' in meta.text
        assert f'Location="http://{setup.host}/sso/saml/acs"' in meta.text
        assert f'Location="http://{setup.host}/sso/saml/sls"' in meta.text
        assert 'AuthnRequestsSigned="true"' in meta.text
        assert 'use="signing"' in meta.text and 'use="encryption"' in meta.text
        valid_until = meta.text.split('validUntil="', 1)[1][:4]
        assert int(valid_until) >= datetime.now(UTC).year + 5  # as long as the SP certificate
    shown_a = a.owner.api.get("/api/v1/org/sso").json()["config"]
    shown_b = b.owner.api.get("/api/v1/org/sso").json()["config"]
    assert shown_a["sp_cert"] != shown_b["sp_cert"]  # a key pair per org
    assert shown_a["sp_cert"] in "".join(meta_a.text.split())
    assert shown_a["idp_entity_id"] == idp.entity_id and shown_a["sso_url"] == f"{idp.base}/sso"
    assert shown_a["slo_url"] == f"{idp.base}/slo"
    assert [c["sha256"] for c in shown_a["idp_certs"]] and "secret" not in str(shown_a).lower()
    row = in_tenant(a.org, lambda: IdentityProvider.objects.get())
    assert row.secret_encrypted and "PRIVATE KEY" not in row.secret_encrypted
    assert "PRIVATE KEY" not in str(a.owner.api.get("/api/v1/org/sso").json())


def test_metadata_uploaded_as_xml_works_and_bad_settings_are_a_clear_400(saml_org, server, idp):
    setup = saml_org(config={"metadata_xml": idp.metadata()})
    idp.next_user = person()
    assert sign_in(setup.browser(server), idp).status_code == 302

    api = setup.owner.api
    before = api.get("/api/v1/org/sso").json()
    bad = [
        {"metadata_xml": "<not-metadata"},
        {"metadata_xml": "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>"},
        {"metadata_xml": "x" * (1024 * 1024 + 1)},
        {"metadata_url": f"{idp.base}/metadata", "metadata_xml": idp.metadata()},
        {"metadata_url": f"{idp.base}/nothing-here"},
        {"metadata_url": "http://127.0.0.1:1/metadata"},
        {"metadata_url": "ftp://example.com/metadata"},
        {"idp_entity_id": "x", "sso_url": f"{idp.base}/sso", "idp_certs": ["not a cert"]},
        {"idp_entity_id": "x", "sso_url": "javascript:alert(1)", "idp_certs": [idp.cert_body]},
        {"metadata_url": f"{idp.base}/metadata", "name_id_format": "made-up"},
        {"metadata_url": f"{idp.base}/metadata", "mfa_contexts": "not a list"},
        {"metadata_url": f"{idp.base}/metadata", "surprise": 1},
    ]
    for config in bad:
        answer = api.put("/api/v1/org/sso", json={"kind": "saml", "config": config})
        assert answer.status_code == 400, (config, answer.text)
        assert answer.json()["error"]["code"] == "invalid_sso_config"
    # Nothing was half-written.
    assert api.get("/api/v1/org/sso").json()["config"] == before["config"]

    # Typed in by hand (entity id, SSO URL, certificate) works too, and keeps the SP's key.
    manual = {
        "idp_entity_id": idp.entity_id,
        "sso_url": f"{idp.base}/sso",
        "slo_url": f"{idp.base}/slo",
        "idp_certs": [idp.cert_pem.decode()],
    }
    answer = api.put("/api/v1/org/sso", json={"kind": "saml", "config": manual})
    assert answer.status_code == 200, answer.text
    assert answer.json()["config"]["sp_cert"] == before["config"]["sp_cert"]
    idp.next_user = person()
    assert sign_in(setup.browser(server), idp).status_code == 302


# --- signing in ---------------------------------------------------------------------------------


def test_sp_initiated_sign_in_creates_the_user_just_in_time_with_the_role_of_their_group(
    saml_org, idp, server
):
    setup = saml_org()
    idp.next_user = who = person(ADMINS)
    browser = setup.browser(server)
    location = to_idp(browser, idp, next="/portal/users/")
    request_id = idp_request_id(location)
    assert in_tenant(setup.org, lambda: SsoRequest.objects.filter(pk=request_id).exists())
    sent = at_idp(location)
    assert sent.acs == setup.acs
    assert idp.last_authn_request.id == request_id
    done = post(browser, sent)
    assert done.status_code == 302, done.text
    assert done.headers["location"] == "/portal/users/"
    assert is_signed_in(browser)

    user = user_by_subject(setup.org, who.name_id)
    assert user is not None and user.source == User.SSO
    assert user.username == who.attributes["uid"][0]
    assert user.email == who.attributes["mail"][0] and user.role == "admin"
    [created] = [
        e for e in audit_events(setup.org, "member.created") if e.target_id == str(user.pk)
    ]
    assert created.data["role"] == "admin"
    [login] = [e for e in audit_events(setup.org, "portal.logged_in") if e.actor_id == user.pk]
    assert login.data.get("method") == "saml"
    # The same person again: the same user, no second account.
    count = user_count(setup.org)
    browser2 = setup.browser(server)
    assert sign_in(browser2, idp).status_code == 302
    assert user_count(setup.org) == count and is_signed_in(browser2)

    # Out of the admins group at the IdP: the next sign-in (an app's) makes them a member.
    who.attributes["groups"] = ["everyone"]
    _verifier, challenge = pkce()
    done = sign_in(
        setup.browser(server),
        idp,
        purpose="client",
        redirect_uri="http://127.0.0.1:8765/done",
        code_challenge=challenge,
    )
    assert done.status_code == 302, done.text
    assert user_by_subject(setup.org, who.name_id).role == "member"


def idp_request_id(location: str) -> str:
    import zlib

    raw = parse_qs(urlsplit(location).query)["SAMLRequest"][0]
    xml = zlib.decompress(base64.b64decode(raw), -15).decode()
    return xml.split(' ID="', 1)[1].split('"', 1)[0]


def test_a_signed_and_encrypted_assertion_is_accepted_and_an_org_can_require_encryption(
    saml_org, idp, server
):
    setup = saml_org(
        config={"metadata_url": f"{idp.base}/metadata", "require_encrypted_assertions": True}
    )
    idp.next_user = who = person()
    # A signed response carrying an encrypted assertion. (pysaml2's signature of an
    # assertion inside an encryption does not verify once decrypted, with xmlsec1 either;
    # see docs/sso.md.)
    idp.sign_response, idp.sign_assertion, idp.encrypt_assertion = True, False, True
    browser = setup.browser(server)
    sent = at_idp(to_idp(browser, idp))
    assert "EncryptedAssertion" in sent.xml() and who.name_id not in sent.xml()
    done = post(browser, sent)
    assert done.status_code == 302, done.text
    assert is_signed_in(browser)
    assert user_by_subject(setup.org, who.name_id) is not None

    # This org requires encryption: a signed but readable assertion is refused.
    idp.encrypt_assertion = False
    idp.next_user = plain = person()
    refused = sign_in(setup.browser(server), idp)
    assert_refused(setup, refused, "sso_not_encrypted")
    assert user_by_subject(setup.org, plain.name_id) is None


def test_a_response_signed_only_on_the_response_is_accepted(saml_org, idp, server):
    setup = saml_org()
    idp.next_user = person()
    idp.sign_assertion = False
    assert sign_in(setup.browser(server), idp).status_code == 302


def test_idp_initiated_sign_in_is_refused_until_the_org_opts_in(saml_org, idp, server):
    setup = saml_org()
    idp.next_user = who = person()
    browser = setup.browser(server)
    refused = post(browser, idp.unsolicited(setup.entity_id))
    assert_refused(setup, refused, "sso_idp_initiated_disabled")
    assert user_by_subject(setup.org, who.name_id) is None and not is_signed_in(browser)

    answer = setup.owner.api.put("/api/v1/org/sso", json={"allow_idp_initiated": True})
    assert answer.status_code == 200, answer.text
    done = post(browser, idp.unsolicited(setup.entity_id))
    assert done.status_code == 302 and done.headers["location"] == "/portal/"
    assert is_signed_in(browser)
    # Signed and encrypted, IdP-initiated.
    idp.encrypt_assertion, idp.sign_assertion = True, False
    idp.next_user = hidden = person()
    sent = idp.unsolicited(setup.entity_id)
    assert "EncryptedAssertion" in sent.xml() and hidden.name_id not in sent.xml()
    encrypted = setup.browser(server)
    assert post(encrypted, sent).status_code == 302 and is_signed_in(encrypted)
    assert user_by_subject(setup.org, hidden.name_id) is not None
    idp.encrypt_assertion, idp.sign_assertion = False, True
    # A replay of an IdP-initiated response is refused (no request id to use up: the
    # assertion id is the guard).
    sent = idp.unsolicited(setup.entity_id)
    assert post(setup.browser(server), sent).status_code == 302
    assert_refused(setup, post(setup.browser(server), sent), "sso_replayed")


def test_app_sign_in_ends_in_a_login_grant_that_registers_a_device(saml_org, idp, server):
    setup = saml_org()
    idp.next_user = who = person()
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
    exchanged = api.post("/api/v1/auth/sso/token", json={"code": code, "code_verifier": verifier})
    assert exchanged.status_code == 200, exchanged.text
    keys = DeviceKeys.generate()
    device = api.post(
        "/api/v1/devices",
        json=keys.registration("saml phone"),
        headers={"Authorization": f"Grant {exchanged.json()['grant']}"},
    )
    assert device.status_code == 201, device.text
    me = api.as_device(device.json()["token"]).get("/api/v1/me")
    user = user_by_subject(setup.org, who.name_id)
    assert me.status_code == 200 and me.json()["username"] == user.username
    again = api.post("/api/v1/auth/sso/token", json={"code": code, "code_verifier": verifier})
    assert again.status_code == 401
    assert not is_signed_in(browser)


def test_the_org_can_trust_the_idps_mfa_or_still_require_its_own_totp(saml_org, idp, server):
    setup = saml_org(trust_idp_mfa=True, mfa_policy="required_for_admins")
    idp.next_user = person(ADMINS, authn_context=MFA_CONTEXT)
    browser = setup.browser(server)
    done = sign_in(browser, idp)
    assert done.status_code == 302 and done.headers["location"] == "/portal/"
    assert is_signed_in(browser)

    # The IdP did not do MFA this time: the org's own TOTP (enrolment first) is asked.
    idp.next_user = person(ADMINS)
    browser = setup.browser(server)
    pending = sign_in(browser, idp)
    assert pending.status_code == 302
    assert pending.headers["location"] == "/portal/login/setup-mfa"
    assert not is_signed_in(browser)

    # An org that does not trust the IdP asks for TOTP even when the IdP did MFA.
    strict = saml_org(trust_idp_mfa=False, mfa_policy="required_for_admins")
    idp.next_user = person(ADMINS, authn_context=MFA_CONTEXT)
    pending = sign_in(strict.browser(server), idp)
    assert pending.status_code == 302
    assert pending.headers["location"] == "/portal/login/setup-mfa"


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("knobs", "code"),
    [
        ({"sign_response": False, "sign_assertion": False}, "sso_unsigned"),
        ({"audience": "http://elsewhere.test/sso/saml/metadata"}, "sso_wrong_audience"),
        ({"lifetime_minutes": -10}, "sso_expired"),
        ({"clock_offset": 900}, "sso_not_yet_valid"),
    ],
    ids=["unsigned", "wrong-audience", "expired", "from-the-future"],
)
def test_a_response_that_fails_a_check_is_refused_and_nobody_is_signed_in(
    saml_org, idp, server, knobs, code
):
    setup = saml_org()
    idp.next_user = who = person(ADMINS)
    for name, value in knobs.items():
        setattr(idp, name, value)
    if "audience" in knobs:  # the IdP knows that other SP (it is just not this org)
        idp.add_sp(sp_metadata(server, setup.host).text.replace(setup.entity_id, knobs["audience"]))
    browser = setup.browser(server)
    count = user_count(setup.org)
    assert_refused(setup, sign_in(browser, idp), code)
    assert user_count(setup.org) == count and user_by_subject(setup.org, who.name_id) is None
    assert not is_signed_in(browser)


def test_clocks_a_little_apart_are_tolerated(saml_org, idp, server):
    setup = saml_org()
    idp.next_user = person()
    idp.clock_offset = 60  # the IdP's clock is a minute ahead: within SAML_CLOCK_SKEW_SECONDS
    assert sign_in(setup.browser(server), idp).status_code == 302


def test_a_replayed_response_is_refused(saml_org, idp, server):
    setup = saml_org()
    idp.next_user = person()
    browser = setup.browser(server)
    sent = at_idp(to_idp(browser, idp))
    assert post(browser, sent).status_code == 302
    thief = setup.browser(server)
    replay = post(thief, sent)
    assert replay.status_code in (400, 403)
    assert refused_code(replay) in ("sso_replayed", "sso_request_unknown")
    assert not is_signed_in(thief)


def test_another_idp_cannot_sign_anyone_in(saml_org, idp, other_idp, server):
    setup = saml_org()
    other_idp.add_sp(sp_metadata(server, setup.host).text)
    other_idp.next_user = who = person(ADMINS)
    browser = setup.browser(server)
    # Its own name: not the org's IdP.
    location = to_idp(browser, idp)
    request_id = idp_request_id(location)
    sent = other_idp.response_for(setup.entity_id, setup.acs, request_id)
    assert_refused(setup, post(browser, sent), "sso_wrong_issuer")
    # The org's IdP's name, its own key: the signature does not verify.
    impostor = SamlIdp("impostor", entity_id=idp.entity_id)
    try:
        impostor.add_sp(sp_metadata(server, setup.host).text)
        impostor.next_user = who
        location = to_idp(browser, idp)
        sent = impostor.response_for(setup.entity_id, setup.acs, idp_request_id(location))
        assert_refused(setup, post(browser, sent), "sso_bad_signature")
    finally:
        impostor.stop()
    assert user_by_subject(setup.org, who.name_id) is None and not is_signed_in(browser)


def test_org_b_refuses_a_response_meant_for_org_a_which_still_works_at_home(saml_org, idp, server):
    a, b = saml_org(), saml_org()
    idp.next_user = who = person(ADMINS)
    browser_a = a.browser(server)
    sent = at_idp(to_idp(browser_a, idp))
    # Posted to B's ACS (same IdP, trusted by both orgs): refused.
    browser_b = b.browser(server)
    assert_refused(
        b, browser_b.post("/sso/saml/acs", sent.form(), csrf=False), "sso_wrong_destination"
    )
    assert user_by_subject(b.org, who.name_id) is None and not is_signed_in(browser_b)
    # B allowing IdP-initiated sign-ins does not change that.
    b.owner.api.put("/api/v1/org/sso", json={"allow_idp_initiated": True})
    refused = browser_b.post("/sso/saml/acs", sent.form(), csrf=False)
    assert refused.status_code == 403 and user_by_subject(b.org, who.name_id) is None
    # At A it works.
    assert post(browser_a, sent).status_code == 302 and is_signed_in(browser_a)


def test_a_transient_name_id_alone_is_refused(saml_org, idp, server):
    setup = saml_org()
    idp.next_user = person(name_id_format=TRANSIENT)
    assert_refused(setup, sign_in(setup.browser(server), idp), "sso_no_subject")


def test_garbage_at_the_acs_is_a_clear_refusal_not_a_500(saml_org, server, idp):
    setup = saml_org()
    browser = setup.browser(server)
    for body in (
        {},
        {"SAMLResponse": "%%%not base64"},
        {"SAMLResponse": base64.b64encode(b"<x>not saml</x>").decode()},
        {
            "SAMLResponse": base64.b64encode(
                b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a SYSTEM 'file:///etc/passwd'>]><x>&a;</x>"
            ).decode()
        },
        {"SAMLResponse": "A" * (1024 * 1024 + 10)},
    ):
        answer = browser.post("/sso/saml/acs", body, csrf=False)
        assert answer.status_code in (400, 403), answer.text[:300]
        assert refused_code(answer).startswith("sso_")
    assert browser.get("/sso/saml/acs").status_code == 405
    # No IdP set up (an org with none): a 404 page, not a crash.
    bare = create_org(unique("o"), f"{unique('h')}.test")
    answer = Portal(server, bare).post("/sso/saml/acs", {"SAMLResponse": "x"}, csrf=False)
    assert answer.status_code == 404


def test_a_deactivated_user_is_refused_though_the_idp_vouches_for_them(saml_org, idp, server):
    setup = saml_org()
    idp.next_user = who = person()
    assert sign_in(setup.browser(server), idp).status_code == 302
    user = user_by_subject(setup.org, who.name_id)
    answer = setup.owner.api.post(f"/api/v1/users/{user.pk}/deactivate")
    assert answer.status_code in (200, 204), answer.text
    browser = setup.browser(server)
    assert_refused(setup, sign_in(browser, idp), "user_inactive")
    assert not is_signed_in(browser)


# --- single logout ------------------------------------------------------------------------------


def test_portal_logout_of_an_sso_session_signs_out_at_the_idp_too(saml_org, idp, server):
    setup = saml_org()
    idp.next_user = who = person()
    browser = setup.browser(server)
    assert sign_in(browser, idp).status_code == 302
    page = browser.get("/portal/")
    assert page.status_code == 200
    out = browser.post("/portal/logout")
    assert out.status_code == 200, out.text[:300]
    url = _idp_link(out.text)
    assert url.startswith(f"{idp.base}/slo?SAMLRequest=")
    assert not is_signed_in(browser)  # ended here before going to the IdP
    at_idp_answer = httpx.get(url, timeout=10)
    assert at_idp_answer.status_code == 302, at_idp_answer.text
    [request] = idp.logout_requests
    assert request.name_id.text == who.name_id and request.session_index
    back = urlsplit(at_idp_answer.headers["location"])
    assert back.path == "/sso/saml/sls"
    done = browser.get(f"{back.path}?{back.query}")
    assert done.status_code == 302 and done.headers["location"] == "/portal/login"
    [event] = [e for e in audit_events(setup.org, "sso.logout")]
    assert event.data == {"initiated_by": "sp"}


def _idp_link(page: str) -> str:
    import html

    marker = 'href="'
    start = page.index('data-testid="idp-logout-link"')
    chunk = page[:start]
    return html.unescape(chunk[chunk.rindex(marker) + len(marker) :].split('"', 1)[0])


def test_idp_initiated_logout_ends_that_persons_portal_sessions_only(saml_org, idp, server):
    setup = saml_org()
    idp.next_user = who = person()
    laptop, tablet = setup.browser(server), setup.browser(server)
    assert sign_in(laptop, idp).status_code == 302
    assert sign_in(tablet, idp).status_code == 302
    idp.next_user = bystander = person()
    other = setup.browser(server)
    assert sign_in(other, idp).status_code == 302
    laptop_session = next(i for i, (sp, n) in idp.sessions.items() if n == who.name_id)

    # The IdP ends the laptop's IdP session: that portal session ends, the tablet's stays.
    url = idp.logout_request_url(setup.entity_id, who.name_id, laptop_session)
    parts = urlsplit(url)
    assert parts.path == "/sso/saml/sls"
    answer = Portal(server, setup.org).get(f"{parts.path}?{parts.query}")
    assert answer.status_code == 302, answer.text[:300]
    assert answer.headers["location"].startswith(f"{idp.base}/slo?SAMLResponse=")
    response = idp.check_logout_response(urlsplit(answer.headers["location"]).query)
    assert response.response.status.status_code.value.endswith(":Success")
    assert not is_signed_in(laptop)
    assert is_signed_in(tablet) and is_signed_in(other)

    # Without a SessionIndex: every SSO session of that person ends, nobody else's.
    url = idp.logout_request_url(setup.entity_id, who.name_id, "")
    parts = urlsplit(url)
    assert Portal(server, setup.org).get(f"{parts.path}?{parts.query}").status_code == 302
    assert not is_signed_in(tablet) and is_signed_in(other)
    assert bystander.name_id != who.name_id
    events = audit_events(setup.org, "sso.logout")
    assert [e.data["sessions_ended"] for e in events] == [1, 1]


def test_a_logout_request_not_signed_by_the_idp_is_refused(saml_org, idp, other_idp, server):
    setup = saml_org()
    idp.next_user = who = person()
    browser = setup.browser(server)
    assert sign_in(browser, idp).status_code == 302
    other_idp.add_sp(sp_metadata(server, setup.host).text)
    url = other_idp.logout_request_url(setup.entity_id, who.name_id, "")
    parts = urlsplit(url)
    answer = Portal(server, setup.org).get(f"{parts.path}?{parts.query}")
    assert answer.status_code in (400, 403)
    assert refused_code(answer) in ("sso_bad_signature", "sso_invalid_logout")
    # Unsigned (signature stripped): refused too.
    query = "&".join(
        p
        for p in urlsplit(idp.logout_request_url(setup.entity_id, who.name_id, "")).query.split("&")
        if not p.startswith(("Signature=", "SigAlg="))
    )
    answer = Portal(server, setup.org).get(f"/sso/saml/sls?{query}")
    assert answer.status_code in (400, 403)
    assert is_signed_in(browser)


def test_an_idp_logout_request_over_http_post_works_when_signed_inside(
    saml_org, idp, other_idp, server
):
    setup = saml_org()
    idp.next_user = who = person()
    browser = setup.browser(server)
    assert sign_in(browser, idp).status_code == 302
    other_idp.add_sp(sp_metadata(server, setup.host).text)
    idp_browser = setup.browser(server)  # the IdP's cross-site POST: no session cookie

    # Unsigned, or signed by another IdP: refused, nobody signed out.
    for sender, sign in ((idp, False), (other_idp, True)):
        path, form = sender.logout_request_post(setup.entity_id, who.name_id, "", sign=sign)
        answer = idp_browser.post(path, form, csrf=False)
        assert answer.status_code == 403, answer.text[:300]
        assert refused_code(answer) == "sso_bad_signature"
    assert is_signed_in(browser)

    path, form = idp.logout_request_post(setup.entity_id, who.name_id, "")
    answer = idp_browser.post(path, form, csrf=False)
    assert answer.status_code == 302, answer.text[:300]
    response = idp.check_logout_response(urlsplit(answer.headers["location"]).query)
    assert response.response.status.status_code.value.endswith(":Success")
    assert not is_signed_in(browser)


# --- certificate rollover ----------------------------------------------------------------------


def test_a_rolled_over_idp_key_is_picked_up_from_the_metadata_url(saml_org, idp, server):
    rolling = SamlIdp("rolling")
    try:
        setup = saml_org(rolling)
        rolling.next_user = person()
        assert sign_in(setup.browser(server), rolling).status_code == 302
        old = rolling.cert_body
        rolling.roll_key()
        # The next response is signed with the new key: the signature fails with the
        # stored certificate, the metadata URL is read again, the new one verifies.
        rolling.next_user = person()
        assert sign_in(setup.browser(server), rolling).status_code == 302
        shown = setup.owner.api.get("/api/v1/org/sso").json()["config"]
        assert len(shown["idp_certs"]) == 1 and len(shown["previous_idp_certs"]) == 1
        [refreshed] = audit_events(setup.org, "sso.keys_refreshed")
        assert refreshed.data["before"] != refreshed.data["after"]
        assert old != rolling.cert_body
    finally:
        rolling.stop()


def fingerprints(setup: SamlOrg, key: str = "idp_certs") -> list[str]:
    shown = setup.owner.api.get("/api/v1/org/sso").json()["config"]
    return [c["sha256"] for c in shown.get(key) or []]


def test_the_beat_job_refreshes_every_orgs_metadata_in_that_orgs_schema(
    saml_org, idp, server, celery_worker
):
    from orgs.sso import tasks

    one, two = SamlIdp("beat-one"), SamlIdp("beat-two")
    try:
        a, b = saml_org(one), saml_org(two)
        before_a, before_b = fingerprints(a), fingerprints(b)
        one.roll_key()
        two.roll_key()
        tasks.dispatch_refresh_saml_metadata.delay()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            fingerprints(a) == before_a or fingerprints(b) == before_b
        ):
            time.sleep(0.3)
        # Each org holds its own IdP's new certificate, and its old one for the grace period.
        assert fingerprints(a) not in (before_a, before_b)
        assert fingerprints(b) not in (before_a, before_b, fingerprints(a))
        assert fingerprints(a, "previous_idp_certs") == before_a
        assert fingerprints(b, "previous_idp_certs") == before_b
        assert "dispatched refresh_saml_metadata" in celery_worker.read_text()
    finally:
        one.stop()
        two.stop()


def test_a_refresh_keeps_old_certificates_a_while_and_survives_the_idp_being_down(
    saml_org, idp, server
):
    from orgs.sso import tasks

    rolling = SamlIdp("refresh")
    try:
        setup = saml_org(rolling)
        rolling.roll_key()
        result = in_tenant(setup.org, tasks.refresh_saml_metadata)
        assert result == {"schema": setup.org.schema_name, "changed": True}
        assert fingerprints(setup, "previous_idp_certs")  # the old key, for a grace period
        again = in_tenant(setup.org, tasks.refresh_saml_metadata)
        assert again["changed"] is False
        # The IdP's metadata URL is down: the stored settings stay, the failure is audited.
        rolling.stop()
        assert in_tenant(setup.org, tasks.refresh_saml_metadata)["changed"] is False
        assert audit_events(setup.org, "sso.metadata_refresh_failed")
        assert setup.owner.api.get("/api/v1/org/sso").json()["config"]["sso_url"]
    finally:
        rolling.stop()


# --- the subject, the test sign-in -----------------------------------------------------------


def test_a_subject_attribute_binds_the_person_to_an_immutable_id_not_the_name_id(
    saml_org, idp, server
):
    setup = saml_org()
    answer = setup.owner.api.put("/api/v1/org/sso", json={"subject_attribute": "objectId"})
    assert answer.status_code == 200, answer.text
    object_id = f"oid-{secrets.token_hex(8)}"
    first = person(name_id_format=TRANSIENT)  # a NameID that changes every time is fine now
    first.attributes["objectId"] = [object_id]
    idp.next_user = first
    assert sign_in(setup.browser(server), idp).status_code == 302
    user = user_by_subject(setup.org, object_id)
    assert user is not None and user_by_subject(setup.org, first.name_id) is None

    # Next time: another NameID, another e-mail, the same object id: the same user.
    later = person()
    later.attributes.update(objectId=[object_id], uid=first.attributes["uid"])
    idp.next_user = later
    count = user_count(setup.org)
    assert sign_in(setup.browser(server), idp).status_code == 302
    assert user_count(setup.org) == count
    assert user_by_subject(setup.org, object_id).email == later.attributes["mail"][0]

    # The same e-mail with another object id is someone else: never bound by address.
    impostor = person()
    impostor.attributes.update(
        objectId=[f"oid-{secrets.token_hex(8)}"], mail=later.attributes["mail"]
    )
    idp.next_user = impostor
    assert sign_in(setup.browser(server), idp).status_code == 302
    assert user_by_subject(setup.org, impostor.attributes["objectId"][0]).pk != user.pk

    # No object id at all: refused.
    idp.next_user = person()
    assert_refused(setup, sign_in(setup.browser(server), idp), "sso_no_subject")


def test_an_owners_test_sign_in_is_recorded_and_lets_passwords_be_turned_off(saml_org, idp, server):
    setup = saml_org()
    owner = setup.browser(server)
    assert owner.login(setup.owner.user.username).status_code == 302
    off = setup.owner.api.request("PATCH", "/api/v1/org/policy", json={"password_login": False})
    assert off.status_code in (400, 409), off.text  # not tested yet
    idp.next_user = who = person()
    page = sign_in(owner, idp, purpose="test")
    assert page.status_code == 200, page.text[:300]
    assert who.name_id in page.text
    shown = setup.owner.api.get("/api/v1/org/sso").json()
    assert shown["tested_at"] and shown["test_result"]["subject"] == who.name_id
    assert user_by_subject(setup.org, who.name_id) is None  # a test creates nobody
    off = setup.owner.api.request("PATCH", "/api/v1/org/policy", json={"password_login": False})
    assert off.status_code == 200, off.text


def test_an_owner_sets_saml_up_in_the_portal_from_the_idps_metadata_url(new_session, idp, server):
    org = create_org(unique("o"), f"{unique('h')}.test")
    owner = new_session(org, role="owner")
    portal = Portal(server, org)
    assert portal.login(owner.user.username).status_code == 302
    page = portal.get("/portal/sso/")
    assert page.status_code == 200
    assert f"http://{host_of(org)}/sso/saml/metadata" in page.text  # what to give the IdP
    form = {
        "kind": "saml",
        "display_name": "Corporate IdP",
        "metadata_url": f"{idp.base}/metadata",
        "map_username": "uid",
        "map_email": "mail",
        "map_display_name": "displayName",
        "map_groups": "groups",
        "jit_provisioning": "on",
        "group_roles": f"{ADMINS} = admin",
    }
    saved = portal.post("/portal/sso/", form)
    assert saved.status_code == 302, saved.text[:500]
    shown = owner.api.get("/api/v1/org/sso").json()
    assert shown["kind"] == "saml" and shown["config"]["idp_entity_id"] == idp.entity_id
    # A metadata URL that is not metadata: the form says so, nothing changes.
    bad = portal.post("/portal/sso/", {**form, "metadata_url": f"{idp.base}/nothing"})
    assert bad.status_code == 400 and "metadata URL answered HTTP 404" in bad.text
    assert owner.api.get("/api/v1/org/sso").json()["config"] == shown["config"]
    audit = [e.data for e in audit_events(org, "sso.configured")]
    assert audit and audit[0]["created"] is True


def test_over_https_a_sign_in_must_come_back_in_the_browser_that_started_it(saml_org, idp, server):
    """Login CSRF: an attacker's own valid response, posted from a victim's browser, must
    not sign the victim in as the attacker. (https: TLS ends at a proxy on loopback.)"""
    setup = saml_org()
    https = {"X-Forwarded-Proto": "https"}
    metadata = httpx.get(
        f"{server.url}/sso/saml/metadata", headers={"Host": setup.host, **https}, timeout=10
    )
    assert idp.add_sp(metadata.text) == f"https://{setup.host}/sso/saml/metadata"

    def browser() -> Portal:
        client = setup.browser(server)
        client.http.headers.update(https)
        return client

    def start(client: Portal) -> tuple[SentResponse, str]:
        begun = client.get("/sso/login")
        assert begun.status_code == 302, begun.text
        cookie = begun.headers["set-cookie"]
        assert "Secure" in cookie and "SameSite=None" in cookie and "HttpOnly" in cookie
        assert "Path=/sso/saml/acs" in cookie
        return at_idp(begun.headers["location"]), cookie.split(";", 1)[0]

    idp.next_user = attacker_person = person()
    sent, _attackers_cookie = start(browser())
    assert sent.acs == f"https://{setup.host}/sso/saml/acs"
    victim = browser()
    refused = victim.post(sent.path, sent.form(), csrf=False)
    assert_refused(setup, refused, "sso_other_browser")
    assert not is_signed_in(victim)
    assert user_by_subject(setup.org, attacker_person.name_id) is None

    # The browser that started it (its cookie comes back with the IdP's POST) gets in.
    idp.next_user = person()
    mine = browser()
    sent, cookie = start(mine)
    done = mine.post(sent.path, sent.form(), csrf=False, headers={"Cookie": cookie})
    assert done.status_code == 302, done.text[:300]
    assert is_signed_in(mine)


def test_a_certificate_the_admin_removes_stops_verifying_at_once(saml_org, idp, other_idp, server):
    setup = saml_org(config={"metadata_xml": idp.metadata()})
    # The admin switches to typed-in settings trusting only another key (say the old one
    # leaked): responses signed with the old key are refused from now on.
    manual = {
        "idp_entity_id": idp.entity_id,
        "sso_url": f"{idp.base}/sso",
        "idp_certs": [other_idp.cert_body],
    }
    answer = setup.owner.api.put("/api/v1/org/sso", json={"kind": "saml", "config": manual})
    assert answer.status_code == 200, answer.text
    assert "previous_idp_certs" not in answer.json()["config"]
    idp.next_user = person()
    assert_refused(setup, sign_in(setup.browser(server), idp), "sso_bad_signature")


def test_a_tampered_or_wrapped_response_is_refused(saml_org, idp, server):
    """Editing a signed response (another NameID), or slipping a second, unsigned assertion
    beside the signed one (signature wrapping), is refused and signs nobody in."""
    import re

    setup = saml_org()
    idp.next_user = who = person()
    browser = setup.browser(server)
    sent = at_idp(to_idp(browser, idp))
    xml = sent.xml()
    evil = f"evil-{secrets.token_hex(6)}"

    tampered = xml.replace(who.name_id, evil)
    refused = post(browser, SentResponse(sent.acs, base64.b64encode(tampered.encode()).decode()))
    assert refused.status_code == 403 and refused_code(refused) == "sso_bad_signature"

    assertion = re.search(r"<ns1:Assertion .*?</ns1:Assertion>", xml, re.S).group(0)
    forged = re.sub(r"<ns2:Signature .*?</ns2:Signature>", "", assertion, flags=re.S)
    forged = forged.replace(who.name_id, evil).replace('ID="', 'ID="x', 1)
    wrapped = xml.replace(assertion, forged + assertion)
    refused = post(browser, SentResponse(sent.acs, base64.b64encode(wrapped.encode()).decode()))
    assert refused.status_code == 403 and refused_code(refused).startswith("sso_")
    assert user_by_subject(setup.org, evil) is None and not is_signed_in(browser)
    # The genuine response still works (nothing was used up by the forgeries).
    assert post(browser, sent).status_code == 302 and is_signed_in(browser)


def test_a_new_sp_key_alone_is_checked_against_the_sp_certificate(saml_org):
    """A `secret` sent without `config` goes through the SAML checks with the stored
    settings: a private key that is not the SP certificate's is refused, nothing saved."""
    setup = saml_org()
    before = setup.owner.api.get("/api/v1/org/sso").json()
    refused = setup.owner.api.put(
        "/api/v1/org/sso", json={"secret": "-----BEGIN PRIVATE KEY-----\nnope\n"}
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "invalid_sso_config"
    assert setup.owner.api.get("/api/v1/org/sso").json() == before
