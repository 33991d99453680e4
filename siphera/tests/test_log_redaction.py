"""Secrets stay out of the logs: a whole journey (invitation, password login, grant,
device, MFA enrolment with an enrolment token, logins with a code and a recovery code),
the single sign-on endpoints with secret-bearing parameters, and a password change and
reset through the mailed link, run against the live server and worker; none of the
secrets used may appear anywhere in their logs."""

from __future__ import annotations

import base64
import re
import secrets

import httpx

from admin_portal.tests.conftest import CSRF_INPUT
from orgs.services import audit, users
from orgs.tests.test_mfa import now_step, rfc6238
from orgs.tests.test_passwords import with_email
from siphera.logging import redact
from siphera.tenancy import in_tenant
from tests.fixtures import Api, DeviceKeys, create_org, host_of, unique
from tests.smtp import link_in


def register(api: Api, grant: str) -> str:
    response = api.post(
        "/api/v1/devices",
        json=DeviceKeys.generate().registration(),
        headers={"Authorization": f"Grant {grant}"},
    )
    assert response.status_code == 201, response.text
    return response.json()["token"]


def accept_invitation(server, host: str, token: str, password: str) -> None:
    with httpx.Client(base_url=server.url, headers={"Host": host}, timeout=15) as browser:
        page = browser.get(f"/portal/invite/{token}")
        assert page.status_code == 200, page.text
        done = browser.post(
            f"/portal/invite/{token}",
            data={
                "password": password,
                "confirm": password,
                "csrfmiddlewaretoken": CSRF_INPUT.search(page.text).group(1),
            },
        )
        assert done.status_code == 200, done.text


def test_a_whole_journey_leaves_none_of_its_secrets_in_the_server_log(server, new_session):
    used: dict[str, str] = {}
    # Given an org whose policy requires MFA of everyone, set by its owner
    org = create_org(unique("logs"))
    owner = new_session(org, role="owner")
    used["owner device token"] = owner.token
    policy = owner.api.request(
        "PATCH", "/api/v1/org/policy", json={"mfa_policy": "required_for_all"}
    )
    assert policy.status_code == 200, policy.text
    host = host_of(org)
    api = Api(server, host)

    # When a user is invited and accepts the link with a password of their choosing
    _, invitation = in_tenant(
        org, users.check_invite_user, username=(name := unique()), actor=audit.Actor.system("t")
    )
    used["invitation token"] = invitation
    password = used["password"] = f"Pw-{secrets.token_urlsafe(12)}"
    accept_invitation(server, host, invitation, password)

    # And logs in: the policy hands out an MFA enrolment token, which enrols and confirms
    refused = api.post("/api/v1/auth/login", json={"username": name, "password": password})
    assert refused.json()["error"]["code"] == "mfa_enrollment_required", refused.text
    enrolment = used["enrolment token"] = refused.json()["enrollment_token"]
    as_enrollee = {"Authorization": f"Enrollment {enrolment}"}
    enrolled = api.post("/api/v1/mfa/totp/enroll", headers=as_enrollee)
    assert enrolled.status_code == 200, enrolled.text
    seed = used["TOTP seed"] = enrolled.json()["secret"]
    step = now_step()
    confirmed = api.post(
        "/api/v1/mfa/totp/confirm", json={"otp": rfc6238(seed, step)}, headers=as_enrollee
    )
    assert confirmed.status_code == 200, confirmed.text
    recovery = confirmed.json()["recovery_codes"]
    used.update({f"recovery code {i}": code for i, code in enumerate(recovery)})
    used["grant after enrolment"] = confirmed.json()["grant"]
    used["device token"] = register(api, confirmed.json()["grant"])

    # And logs in again with a TOTP code, and once with a recovery code, each time
    # registering a device with the grant
    for label, otp in (("code", rfc6238(seed, step + 1)), ("recovery", recovery[0])):
        login = api.post(
            "/api/v1/auth/login", json={"username": name, "password": password, "otp": otp}
        )
        assert login.status_code == 200, login.text
        used[f"grant ({label})"] = login.json()["grant"]
        used[f"device token ({label})"] = register(api, login.json()["grant"])
    me = api.as_device(used["device token (code)"]).get("/api/v1/me")
    assert me.status_code == 200

    # And someone sends secrets where single sign-on takes them: an app's one-time code,
    # the IdP's code and state on the OIDC callback, a SAML response and relay state, a
    # SCIM token, and bearer/basic credentials in headers
    sso_code = used["sso one-time code"] = f"sph_c_{secrets.token_urlsafe(32)}"
    verifier = used["pkce verifier"] = secrets.token_urlsafe(43)
    api.post("/api/v1/auth/sso/token", json={"code": sso_code, "code_verifier": verifier})
    oidc_code, oidc_state = used["oidc code"], used["oidc state"] = (
        secrets.token_urlsafe(24),
        secrets.token_urlsafe(24),
    )
    api.get(f"/sso/oidc/callback?code={oidc_code}&state={oidc_state}")
    api.get(f"/portal/sso/done?code={sso_code}&state={oidc_state}")
    saml = used["saml response"] = base64.b64encode(secrets.token_bytes(48)).decode()
    relay = used["relay state"] = secrets.token_urlsafe(24)
    api.post("/sso/saml/acs", data={"SAMLResponse": saml, "RelayState": relay})
    api.get(f"/sso/saml/sls?SAMLRequest={secrets.token_urlsafe(8)}{relay}&RelayState={relay}")
    scim = used["scim token"] = f"sph_s_{secrets.token_urlsafe(32)}"
    api.get("/scim/v2/Users", headers={"Authorization": f"Bearer {scim}"})
    basic = used["basic credentials"] = base64.b64encode(b"client:" + secrets.token_bytes(18))
    api.get("/api/v1/me", headers={"Authorization": f"Basic {basic.decode()}"})
    used["basic credentials"] = basic.decode()

    # Then none of them is anywhere in the server's log
    log = server.log_text()
    leaked = {label for label, secret in used.items() if secret in log}
    assert not leaked, f"in the log: {sorted(leaked)}"
    # And the access lines still say where requests went, the secrets replaced
    assert re.search(r'"path": "/portal/invite/\[redacted\]"', log), "no redacted invite line"


def test_password_resets_and_changes_leave_no_password_or_token_in_any_log(
    server, celery_worker, mailbox, new_session
):
    used: dict[str, str] = {}
    # Given a user with an e-mail address and a device
    org = create_org(unique("logs"))
    session = new_session(org)
    address = with_email(org, session.user).email
    host = host_of(org)
    api = Api(server, host)

    # When they change their password, then forget it and reset it through the mailed link
    # (once on the portal page, once more through the API: refused)
    changed = used["changed password"] = f"Pw-{secrets.token_urlsafe(12)}"
    response = session.api.post(
        "/api/v1/me/password",
        json={"current_password": "Corr3ct-horse-battery", "new_password": changed},
    )
    assert response.status_code == 204, response.text
    assert api.post("/api/v1/auth/password-reset", json={"email": address}).status_code == 202
    link = link_in(mailbox.wait_for(address, subject="Reset your"), r"/portal/password/reset/")
    token = used["reset token"] = link.rsplit("/", 1)[1]
    new = used["reset password"] = f"Pw-{secrets.token_urlsafe(12)}"
    with httpx.Client(base_url=server.url, headers={"Host": host}, timeout=15) as browser:
        page = browser.get(f"/portal/password/reset/{token}")
        assert page.status_code == 200, page.text
        done = browser.post(
            f"/portal/password/reset/{token}",
            data={
                "password": new,
                "confirm": new,
                "csrfmiddlewaretoken": CSRF_INPUT.search(page.text).group(1),
            },
        )
        assert done.status_code == 200 and "Password changed" in done.text
    again = api.post("/api/v1/auth/password-reset/confirm", json={"token": token, "password": new})
    assert again.status_code == 400
    mailbox.wait_for(address, subject="password was changed")

    # Then neither the server's nor the worker's log holds any of them
    for name, log in (("server", server.log_text()), ("worker", celery_worker.read_text())):
        leaked = {label for label, secret in used.items() if secret in log}
        assert not leaked, f"in the {name} log: {sorted(leaked)}"
    assert re.search(r'"path": "/portal/password/reset/\[redacted\]"', server.log_text())


def test_redact_covers_every_prefix_parameter_and_header():
    for prefix in ("sph_i_", "sph_d_", "sph_g_", "sph_c_", "sph_s_", "sph_e_", "sph_r_"):
        secret = prefix + secrets.token_urlsafe(32)
        assert secret[6:] not in redact(f"GET /portal/invite/{secret} and token {secret}")
    for name in ("code", "state", "SAMLResponse", "SAMLRequest", "RelayState", "token"):
        value = secrets.token_urlsafe(16)
        assert value not in redact(f"/sso/cb?x=1&{name}={value}&y=2")
        assert value not in redact(f"/sso/cb?{name}={value}")
    value = secrets.token_urlsafe(16)
    for header in (f"Authorization: Bearer {value}", f"Authorization: Basic {value}=="):
        assert value not in redact(header)
    # Ordinary words that look like parameter names are left alone
    assert redact('{"error": {"code": "rate_limited"}}') == '{"error": {"code": "rate_limited"}}'
