"""The owner's single sign-on page, over HTTP against the real server and the OIDC tests'
real OpenID provider: set the IdP up from the form, run a test sign-in that shows what the
IdP sent without signing anyone in, then turn passwords off — refused before the test,
allowed after — and see the sign-in page offer the IdP. Owners only."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from orgs.accounts.models import AuditEntry, OrgPolicy, User
from orgs.sso.models import GroupRole, IdentityProvider
from orgs.tests import test_oidc
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, host_of, make_user, unique

idp = test_oidc.idp
_honest_provider = test_oidc._honest_provider
person = test_oidc.person


def _org():
    return create_org(unique("o"), f"{unique('h')}.test")


def _form(provider, client, **overrides) -> dict:
    form = {
        "kind": "oidc",
        "display_name": "Acme Okta",
        "issuer": provider.issuer,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
        "map_username": "preferred_username",
        "map_email": "email",
        "map_display_name": "name",
        "map_groups": "groups",
        "jit_provisioning": "on",
        "group_roles": "siphera-admins = admin\nStaff = member\n",
    }
    form.update(overrides)
    return {k: v for k, v in form.items() if v is not None}


def _through_idp(browser, server, start: httpx.Response) -> httpx.Response:
    assert start.status_code == 302, start.text
    answer = httpx.get(start.headers["location"], timeout=10)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    return browser.get(f"{back.path}?{back.query}")


def test_an_owner_sets_up_tests_and_switches_to_single_sign_on(portal, server, idp):
    org = _org()
    owner = make_user(org, role="owner")
    browser = portal(org)
    assert browser.login(owner.username).status_code == 302
    host = host_of(org)

    page = browser.get("/portal/sso/")
    assert page.status_code == 200
    assert f"http://{host}/sso/saml/metadata" in page.text  # what the IdP needs, first
    assert f"http://{host}/sso/oidc/callback" in page.text
    assert "No identity provider is set up" in page.text

    bad = browser.post("/portal/sso/", _form(idp, idp.add_client([]), issuer="http://127.0.0.1:9"))
    assert bad.status_code == 400 and 'role="alert"' in bad.text
    assert in_tenant(org, IdentityProvider.objects.count) == 0  # nothing half-written
    bad_map = browser.post("/portal/sso/", _form(idp, idp.add_client([]), group_roles="Staff"))
    assert bad_map.status_code == 400 and "group = role" in bad_map.text

    client = idp.add_client([f"http://{host}/sso/oidc/callback"])
    saved = browser.post("/portal/sso/", _form(idp, client))
    assert saved.status_code == 302, saved.text[:2000]
    page = browser.get("/portal/sso/")
    assert 'data-testid="sso-untested"' in page.text and client.client_secret not in page.text
    roles = in_tenant(org, lambda: [(r.group, r.role) for r in GroupRole.objects.all()])
    assert roles == [("siphera-admins", "admin"), ("Staff", "member")]

    # Passwords cannot go off before a test sign-in worked (nor SSO be left off then).
    browser.get("/portal/policies/")
    policy_form = {"mfa_policy": "off", "session_lifetime_minutes": "", "sso_login": "on"}
    early = browser.post("/portal/policies/", policy_form)
    assert early.status_code == 400 and "test sign-in" in early.text
    assert in_tenant(org, OrgPolicy.objects.get).password_login is True

    # The test sign-in: the IdP's answer is shown, nobody is created or signed in.
    idp.user = person("siphera-admins")
    result = _through_idp(browser, server, browser.get("/sso/login?purpose=test"))
    assert result.status_code == 200, result.text[:2000]
    assert "Test sign-in succeeded" in result.text
    assert idp.user["preferred_username"] in result.text
    assert f"creates the user {idp.user['preferred_username']}" in result.text
    assert "<code>groups</code>" in result.text
    assert in_tenant(org, User.objects.filter(external_id=idp.user["sub"]).exists) is False
    assert browser.get("/portal/").status_code == 200  # still the owner's session
    assert 'data-testid="sso-tested"' in browser.get("/portal/sso/").text

    switched = browser.post("/portal/policies/", policy_form)
    assert switched.status_code == 302, switched.text[:2000]
    current = in_tenant(org, OrgPolicy.objects.get)
    assert current.sso_login is True and current.password_login is False

    # Removing the IdP while it is the only way in is refused.
    browser.get("/portal/sso/")
    removed = browser.post("/portal/sso/", {"action": "remove"})
    assert removed.status_code == 409 and "turn it back on" in removed.text

    signed_out = portal(org)
    login_page = signed_out.get("/portal/login")
    assert "Sign in with Acme Okta" in login_page.text
    assert "reserved for the organisation's owners" in login_page.text
    # ... and the IdP's person signs in for real, as an admin by their group.
    real = _through_idp(signed_out, server, signed_out.get("/sso/login?next=/portal/users/"))
    assert real.status_code == 302 and real.headers["location"] == "/portal/users/"
    user = in_tenant(org, User.objects.get, external_id=idp.user["sub"])
    assert user.role == "admin" and user.source == "sso"
    assert signed_out.get("/portal/users/").status_code == 200

    events = in_tenant(org, lambda: list(AuditEntry.objects.values_list("event", flat=True)))
    for event in ("sso.configured", "sso.group_roles_changed", "sso.tested", "portal.logged_in"):
        assert event in events


def test_only_owners_open_the_single_sign_on_page(portal, server):
    org = _org()
    admin = make_user(org, role="admin")
    browser = portal(org)
    assert browser.login(admin.username).status_code == 302
    assert browser.get("/portal/sso/").status_code == 403
    assert browser.post("/portal/sso/", {"action": "remove"}).status_code == 403
    assert "Single sign-on" not in browser.get("/portal/").text
    # A test sign-in is an owner's too.
    assert browser.get("/sso/login?purpose=test").status_code in (403, 404)
