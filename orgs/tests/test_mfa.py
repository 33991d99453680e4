"""MFA: TOTP enrolment over the API, login with codes and recovery codes, org policy,
admin reset, secrets at rest — and the other org's view.

Codes are computed here with an independent RFC 6238 implementation. Each user spends at
most the steps `now` and `now + 1` (both stay inside the server's ±1-step window for at
least 30 s), so no test needs to wait for the clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time
from urllib.parse import parse_qs, urlparse

import pytest

from orgs.accounts.models import AuditEntry, OrgPolicy, RecoveryCode, TotpFactor
from orgs.services import audit, mfa
from siphera import crypto
from siphera.tenancy import in_tenant
from tests.fixtures import (
    PASSWORD,
    Api,
    DeviceKeys,
    create_org,
    host_of,
    make_user,
    unique,
)

# --- helpers ------------------------------------------------------------------------------


def rfc6238(secret_b32: str, step: int, digits: int = 6) -> str:
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    digest = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    offset = digest[19] & 0xF
    number = int.from_bytes(digest[offset : offset + 4], "big") & 0x7FFFFFFF
    return str(number % 10**digits).zfill(digits)


def now_step() -> int:
    return int(time.time() // 30)


def wrong_code(secret_b32: str) -> str:
    """A 6-digit code no nearby step produces."""
    near = {rfc6238(secret_b32, now_step() + d) for d in range(-3, 4)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in near)


def login(api: Api, username: str, otp: str | None = None, password: str = PASSWORD):
    body = {"username": username, "password": password}
    if otp is not None:
        body["otp"] = otp
    return api.post("/api/v1/auth/login", json=body)


def code_of(response) -> str:
    return response.json()["error"]["code"]


def events(org, event: str, **match) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event, **match)))


def enable_totp(session) -> tuple[str, list[str], int]:
    """Enrol and confirm TOTP for a session's user with the code of step `now`.
    Returns (secret, recovery codes, the step spent)."""
    enrolled = session.api.post("/api/v1/mfa/totp/enroll")
    assert enrolled.status_code == 200, enrolled.text
    secret = enrolled.json()["secret"]
    step = now_step()
    confirmed = session.api.post("/api/v1/mfa/totp/confirm", json={"otp": rfc6238(secret, step)})
    assert confirmed.status_code == 200, confirmed.text
    return secret, confirmed.json()["recovery_codes"], step


@pytest.fixture
def fresh_org():
    """A new org (policies change org-wide, so policy tests get their own)."""
    return create_org(unique("mfa"))


# --- TOTP itself --------------------------------------------------------------------------


def test_totp_codes_match_the_rfc_6238_sha1_test_vectors():
    secret = b"12345678901234567890"
    vectors = {59: "94287082", 1111111109: "07081804", 1234567890: "89005924"}
    for at, eight_digits in vectors.items():
        assert mfa.totp_code(secret, at // 30) == eight_digits[-6:]


# --- enrolment ----------------------------------------------------------------------------


def test_enrolment_returns_a_secret_and_an_otpauth_uri(org_a, new_session):
    session = new_session(org_a)
    response = session.api.post("/api/v1/mfa/totp/enroll")
    assert response.status_code == 200
    body = response.json()
    assert len(base64.b32decode(body["secret"])) == 20
    uri = urlparse(body["otpauth_uri"])
    assert (uri.scheme, uri.netloc) == ("otpauth", "totp")
    assert uri.path == f"/Siphera:{session.user.username}@alpha"
    query = parse_qs(uri.query)
    assert query["secret"] == [body["secret"]] and query["issuer"] == ["Siphera"]
    assert query["digits"] == ["6"] and query["period"] == ["30"]
    status = session.api.get("/api/v1/mfa").json()
    assert status["pending"] is True and status["enabled"] is False


def test_confirming_with_a_computed_code_enables_totp_and_returns_ten_recovery_codes(
    org_a, new_session
):
    session = new_session(org_a)
    secret, codes, _ = enable_totp(session)
    assert len(codes) == 10 and len(set(codes)) == 10
    status = session.api.get("/api/v1/mfa").json()
    assert status == {
        "enabled": True,
        "pending": False,
        "confirmed_at": status["confirmed_at"],
        "recovery_codes_left": 10,
        "required": False,
    }
    user = session.user
    assert [e.actor_id for e in events(org_a, "mfa.enrollment_started", target_id=str(user.pk))]
    [enabled] = events(org_a, "mfa.enabled", target_id=str(user.pk))
    assert enabled.actor_id == user.pk and enabled.ip == "127.0.0.1"
    assert secret not in str(enabled.data)


def test_confirming_with_a_wrong_code_is_refused(org_a, new_session):
    session = new_session(org_a)
    secret = session.api.post("/api/v1/mfa/totp/enroll").json()["secret"]
    response = session.api.post("/api/v1/mfa/totp/confirm", json={"otp": wrong_code(secret)})
    assert response.status_code == 400 and code_of(response) == "invalid_otp"
    assert session.api.get("/api/v1/mfa").json()["enabled"] is False


def test_enrolling_again_while_enabled_is_refused(org_a, new_session):
    session = new_session(org_a)
    enable_totp(session)
    response = session.api.post("/api/v1/mfa/totp/enroll")
    assert response.status_code == 409 and code_of(response) == "mfa_already_enabled"


def test_mfa_endpoints_refuse_unauthenticated_calls(org_a, api_for):
    api = api_for(org_a)
    for method, path in [
        ("GET", "/api/v1/mfa"),
        ("POST", "/api/v1/mfa/totp/enroll"),
        ("POST", "/api/v1/mfa/totp/confirm"),
        ("DELETE", "/api/v1/mfa/totp"),
        ("POST", "/api/v1/mfa/recovery-codes"),
    ]:
        response = api.request(method, path, json={"otp": "123456"})
        assert response.status_code == 401, (method, path)


# --- login --------------------------------------------------------------------------------


def test_login_with_totp_needs_the_code_refuses_wrong_and_reused_codes(org_a, new_session):
    session = new_session(org_a)
    secret, _, step = enable_totp(session)
    api, name = session.api.as_device(None), session.user.username

    missing = login(api, name)
    assert missing.status_code == 401 and code_of(missing) == "otp_required"
    wrong = login(api, name, wrong_code(secret))
    assert wrong.status_code == 401 and code_of(wrong) == "invalid_otp"
    spent = login(api, name, rfc6238(secret, step))  # already used to confirm
    assert spent.status_code == 401 and code_of(spent) == "invalid_otp"

    right = login(api, name, rfc6238(secret, step + 1))
    assert right.status_code == 200 and right.json()["grant"].startswith("sph_g_")
    replayed = login(api, name, rfc6238(secret, step + 1))
    assert replayed.status_code == 401 and code_of(replayed) == "invalid_otp"

    logins = events(org_a, "member.logged_in", target_id=str(session.user.pk))
    assert [e.data["method"] for e in logins] == ["password", "password+totp"]
    assert logins[-1].actor_id == session.user.pk
    failed = events(org_a, "member.login_failed", target_id=str(session.user.pk))
    assert [f.data for f in failed] == [{"reason": "otp"}] * 3


def test_a_wrong_password_with_a_right_code_is_still_invalid_credentials(org_a, new_session):
    session = new_session(org_a)
    secret, _, step = enable_totp(session)
    response = login(
        session.api.as_device(None),
        session.user.username,
        rfc6238(secret, step + 1),
        password="Not-the-passw0rd",
    )
    assert response.status_code == 401 and code_of(response) == "invalid_credentials"


def test_each_recovery_code_works_once(org_a, new_session):
    session = new_session(org_a)
    _, codes, _ = enable_totp(session)
    api, name = session.api.as_device(None), session.user.username

    first = login(api, name, codes[0])
    assert first.status_code == 200
    again = login(api, name, codes[0])
    assert again.status_code == 401 and code_of(again) == "invalid_otp"
    # Case, spaces and dashes do not matter; another code still works.
    second = login(api, name, codes[1].upper().replace("-", " "))
    assert second.status_code == 200

    assert session.api.get("/api/v1/mfa").json()["recovery_codes_left"] == 8
    used = events(org_a, "mfa.recovery_code_used", target_id=str(session.user.pk))
    assert [u.data for u in used] == [{"remaining": 9}, {"remaining": 8}]
    methods = [
        e.data["method"] for e in events(org_a, "member.logged_in", actor_id=session.user.pk)
    ]
    assert methods.count("password+recovery") == 2


def test_regenerating_recovery_codes_replaces_the_old_ones(org_a, new_session):
    session = new_session(org_a)
    secret, old, step = enable_totp(session)
    response = session.api.post(
        "/api/v1/mfa/recovery-codes", json={"otp": rfc6238(secret, step + 1)}
    )
    assert response.status_code == 200
    new = response.json()["recovery_codes"]
    assert len(new) == 10 and not set(new) & set(old)
    api, name = session.api.as_device(None), session.user.username
    assert code_of(login(api, name, old[0])) == "invalid_otp"
    assert login(api, name, new[0]).status_code == 200
    assert events(org_a, "mfa.recovery_codes_regenerated", target_id=str(session.user.pk))


# --- disabling and resetting ----------------------------------------------------------------


def test_disabling_needs_a_current_code_and_is_audited(org_a, new_session):
    session = new_session(org_a)
    secret, _, step = enable_totp(session)
    refused = session.api.delete("/api/v1/mfa/totp", json={"otp": wrong_code(secret)})
    assert refused.status_code == 400 and code_of(refused) == "invalid_otp"
    missing = session.api.delete("/api/v1/mfa/totp", json={})
    assert missing.status_code == 400 and code_of(missing) == "invalid_request"

    done = session.api.delete("/api/v1/mfa/totp", json={"otp": rfc6238(secret, step + 1)})
    assert done.status_code == 204
    assert login(session.api.as_device(None), session.user.username).status_code == 200
    [disabled] = events(org_a, "mfa.disabled", target_id=str(session.user.pk))
    assert disabled.actor_id == session.user.pk and disabled.data == {"proof": "totp"}
    assert in_tenant(org_a, RecoveryCode.objects.filter(user=session.user).count) == 0


def test_an_admin_resets_a_users_mfa_and_it_is_audited(org_a, new_session):
    user = new_session(org_a)
    enable_totp(user)
    admin = new_session(org_a, role="admin")
    response = admin.api.delete(f"/api/v1/users/{user.user.pk}/mfa")
    assert response.status_code == 204

    assert login(user.api.as_device(None), user.user.username).status_code == 200
    [reset] = events(org_a, "mfa.reset", target_id=str(user.user.pk))
    assert reset.actor_id == admin.user.pk and reset.ip == "127.0.0.1"
    assert reset.data == {"username": user.user.username, "had_totp": True, "recovery_codes": 10}


def test_reset_is_refused_without_the_permission_or_against_a_more_powerful_user(
    org_a, new_session
):
    owner = new_session(org_a, role="owner")
    member = new_session(org_a)
    manager = new_session(org_a, role="user_manager")
    assert member.api.delete(f"/api/v1/users/{owner.user.pk}/mfa").status_code == 403
    refused = manager.api.delete(f"/api/v1/users/{owner.user.pk}/mfa")
    assert refused.status_code == 403 and code_of(refused) == "forbidden"
    assert manager.api.delete(f"/api/v1/users/{member.user.pk}/mfa").status_code == 204
    assert not events(org_a, "mfa.reset", target_id=str(owner.user.pk))


# --- org policy -----------------------------------------------------------------------------


def test_policy_required_for_admins_makes_admins_enrol_at_login(fresh_org, new_session):
    owner = new_session(fresh_org, role="owner")
    changed = owner.api.request(
        "PATCH", "/api/v1/org/policy", json={"mfa_policy": "required_for_admins"}
    )
    assert changed.status_code == 200
    assert changed.json()["mfa_policy"] == "required_for_admins"
    [entry] = events(fresh_org, "org.policy_changed")
    assert entry.actor_id == owner.user.pk
    assert entry.data == {"field": "mfa_policy", "before": "off", "after": "required_for_admins"}

    api = owner.api.as_device(None)
    member = make_user(fresh_org)
    assert login(api, member.username).status_code == 200

    admin = make_user(fresh_org, role="admin")
    refused = login(api, admin.username)
    assert refused.status_code == 401 and code_of(refused) == "mfa_enrollment_required"
    token = refused.json()["enrollment_token"]
    assert token.startswith("sph_e_") and refused.json()["expires_in"] > 0

    # The enrolment token enrols, and nothing else.
    as_enrollee = {"Authorization": f"Enrollment {token}"}
    assert api.get("/api/v1/me", headers=as_enrollee).status_code == 401
    assert api.get("/api/v1/mfa", headers=as_enrollee).status_code == 401
    enrolled = api.post("/api/v1/mfa/totp/enroll", headers=as_enrollee)
    assert enrolled.status_code == 200
    secret, step = enrolled.json()["secret"], now_step()
    confirmed = api.post(
        "/api/v1/mfa/totp/confirm", json={"otp": rfc6238(secret, step)}, headers=as_enrollee
    )
    assert confirmed.status_code == 200
    body = confirmed.json()
    assert len(body["recovery_codes"]) == 10 and body["grant"].startswith("sph_g_")
    device = api.post(
        "/api/v1/devices",
        json=DeviceKeys.generate().registration(),
        headers={"Authorization": f"Grant {body['grant']}"},
    )
    assert device.status_code == 201
    # The token is spent; the next login needs a code.
    assert api.post("/api/v1/mfa/totp/enroll", headers=as_enrollee).status_code == 401
    assert code_of(login(api, admin.username)) == "otp_required"
    assert login(api, admin.username, rfc6238(secret, step + 1)).status_code == 200


def test_policy_required_for_all_covers_members_and_blocks_disabling(fresh_org, new_session):
    owner = new_session(fresh_org, role="owner")
    member = new_session(fresh_org)
    secret, _, step = enable_totp(member)
    in_tenant(
        fresh_org, mfa.check_set_mfa_policy, "required_for_all", actor=audit.Actor.system("tests")
    )
    assert member.api.get("/api/v1/mfa").json()["required"] is True
    refused = member.api.delete("/api/v1/mfa/totp", json={"otp": rfc6238(secret, step + 1)})
    assert refused.status_code == 409 and code_of(refused) == "mfa_required_by_policy"

    newcomer = make_user(fresh_org)
    api = owner.api.as_device(None)
    assert code_of(login(api, newcomer.username)) == "mfa_enrollment_required"
    assert code_of(login(api, member.user.username)) == "otp_required"
    # An admin's reset under the policy sends the user back to enrolment.
    assert owner.api.delete(f"/api/v1/users/{member.user.pk}/mfa").status_code == 204
    assert code_of(login(api, member.user.username)) == "mfa_enrollment_required"


def test_only_org_managers_change_the_policy_and_only_to_known_values(fresh_org, new_session):
    owner = new_session(fresh_org, role="owner")
    member = new_session(fresh_org)
    patch = {"mfa_policy": "required_for_all"}
    assert member.api.request("PATCH", "/api/v1/org/policy", json=patch).status_code == 403
    assert member.api.get("/api/v1/org/policy").status_code == 403
    bad = owner.api.request("PATCH", "/api/v1/org/policy", json={"mfa_policy": "sometimes"})
    assert bad.status_code == 400 and code_of(bad) == "invalid_request"
    assert owner.api.get("/api/v1/org/policy").json()["mfa_policy"] == "off"
    assert in_tenant(fresh_org, OrgPolicy.objects.get).mfa_policy == "off"


# --- the other org ----------------------------------------------------------------------------


def test_org_b_cannot_see_or_touch_org_a_users_mfa(org_a, org_b, new_session):
    alice = new_session(org_a)
    secret, _, step = enable_totp(alice)
    bob_admin = new_session(org_b, role="admin")

    reset = bob_admin.api.delete(f"/api/v1/users/{alice.user.pk}/mfa")
    assert reset.status_code == 404 and code_of(reset) == "not_found"
    on_b = login(bob_admin.api.as_device(None), alice.user.username, rfc6238(secret, step + 1))
    assert on_b.status_code == 401 and code_of(on_b) == "invalid_credentials"
    # Alice's device token is no key to org B's MFA endpoints either.
    foreign = Api(alice.api.server, host_of(org_b), alice.token)
    assert foreign.get("/api/v1/mfa").status_code == 401
    assert in_tenant(org_a, TotpFactor.objects.filter(user=alice.user).exists)
    assert not in_tenant(org_b, TotpFactor.objects.filter(user_id=alice.user.pk).exists)


def test_an_enrolment_token_of_org_a_is_refused_on_org_b(fresh_org, org_b, new_session):
    owner = new_session(fresh_org, role="owner")
    in_tenant(
        fresh_org, mfa.check_set_mfa_policy, "required_for_all", actor=audit.Actor.system("tests")
    )
    name = unique()
    make_user(fresh_org, name)
    make_user(org_b, name)
    token = login(owner.api.as_device(None), name).json()["enrollment_token"]
    on_b = Api(owner.api.server, host_of(org_b)).post(
        "/api/v1/mfa/totp/enroll", headers={"Authorization": f"Enrollment {token}"}
    )
    assert on_b.status_code == 401 and code_of(on_b) == "invalid_token"


# --- secrets at rest --------------------------------------------------------------------------


def test_the_seed_is_stored_encrypted_and_recovery_codes_hashed(org_a, new_session):
    session = new_session(org_a)
    secret, codes, _ = enable_totp(session)
    factor = in_tenant(org_a, TotpFactor.objects.get, user=session.user)
    assert secret not in factor.secret_encrypted
    assert crypto.decrypt(factor.secret_encrypted).decode() == f"{session.user.pk}:{secret}"
    hashes = set(
        in_tenant(
            org_a,
            lambda: list(
                RecoveryCode.objects.filter(user=session.user).values_list("code_hash", flat=True)
            ),
        )
    )
    assert len(hashes) == 10
    assert not {c for c in codes for h in hashes if c.replace("-", "") in h}


def test_the_key_ring_decrypts_with_old_keys_and_rotation_moves_to_the_newest(settings):
    settings.SECRET_KEYS = ["old-key-material-0123456789abcdef"]
    token = crypto.encrypt("seed")
    settings.SECRET_KEYS = [
        "new-key-material-fedcba9876543210",
        "old-key-material-0123456789abcdef",
    ]
    assert crypto.decrypt(token) == b"seed" and crypto.needs_rotation(token)
    rotated = crypto.rotate(token)
    assert not crypto.needs_rotation(rotated)
    settings.SECRET_KEYS = ["new-key-material-fedcba9876543210"]
    assert crypto.decrypt(rotated) == b"seed"
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(token)


def test_a_holder_of_mfa_reset_cannot_reset_their_own_mfa_without_a_code(org_a, new_session):
    # Resetting your own second factor goes through DELETE /mfa/totp, which asks for a
    # current code: a stolen session of an admin must not drop the admin's MFA.
    admin = new_session(org_a, role="admin")
    enable_totp(admin)
    refused = admin.api.delete(f"/api/v1/users/{admin.user.pk}/mfa")
    assert refused.status_code == 403 and code_of(refused) == "forbidden"
    assert in_tenant(org_a, mfa.mfa_status, admin.user).enabled
    assert not events(org_a, "mfa.reset", target_id=str(admin.user.pk))
