"""Passwords: change your own, forgot-password through the real SMTP server, admin reset,
the org's password policy — and the other org's view of each."""

import re
import time

import pytest

from orgs.accounts.models import AuditEntry, Device, PasswordReset, User
from siphera.tenancy import in_tenant
from tests.fixtures import PASSWORD, login_grant, make_user, unique
from tests.smtp import bodies, link_in

NEW_PASSWORD = "Fresh-Tide-Lantern-42"
TOKEN_RE = r"/portal/password/reset/(sph_r_[A-Za-z0-9_\-]+)"


def with_email(org, user) -> User:
    address = f"{user.username}@mail.test"
    in_tenant(org, User.objects.filter(pk=user.pk).update, email=address)
    user.email = address
    return user


def audit_events(org, user, event: str) -> list[AuditEntry]:
    return in_tenant(
        org, lambda: list(AuditEntry.objects.filter(event=event, target_id=str(user.pk)))
    )


def reset_token_from(mailbox, user) -> str:
    message = mailbox.wait_for(user.email, subject="Reset your")
    return re.search(TOKEN_RE, link_in(message, TOKEN_RE)).group(1)


def reset_rows(org, user) -> int:
    return in_tenant(org, PasswordReset.objects.filter(user_id=user.pk).count)


def wait_for_reset_row(org, user, timeout: float = 30) -> None:
    """The worker handles forgot-password requests: wait until it stored `user`'s link."""
    deadline = time.monotonic() + timeout
    while reset_rows(org, user) == 0:
        assert time.monotonic() < deadline, "no reset link was stored"
        time.sleep(0.2)


def login_status(api, username: str, password: str) -> int:
    return api.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    ).status_code


# --- change your own ----------------------------------------------------------------------


def test_changing_your_password_ends_your_other_devices_but_not_this_one(org_a, new_session):
    session = new_session(org_a)
    other = new_session(org_a, session.user, name="phone")
    response = session.api.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
    )
    assert response.status_code == 204, response.text
    assert session.api.get("/api/v1/me").status_code == 200
    assert other.api.get("/api/v1/me").status_code == 401
    assert login_status(session.api, session.user.username, PASSWORD) == 401
    assert login_status(session.api, session.user.username, NEW_PASSWORD) == 200
    [entry] = audit_events(org_a, session.user, "member.password_changed")
    assert entry.data["devices_revoked"] == 1


def test_changing_your_password_needs_the_current_one(org_a, new_session):
    session = new_session(org_a)
    response = session.api.post(
        "/api/v1/me/password", json={"current_password": "wrong", "new_password": NEW_PASSWORD}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_credentials"
    assert login_status(session.api, session.user.username, PASSWORD) == 200


@pytest.mark.parametrize(
    ("new", "fragment"),
    [("short1!", "too short"), ("password123", "too common"), ("x" * 1025, "")],
)
def test_a_new_password_must_pass_the_policy(org_a, new_session, new, fragment):
    session = new_session(org_a)
    response = session.api.post(
        "/api/v1/me/password", json={"current_password": PASSWORD, "new_password": new}
    )
    assert response.status_code == 400
    assert fragment in response.text
    assert login_status(session.api, session.user.username, PASSWORD) == 200


def test_the_org_policy_raises_the_minimum_length_on_every_path(quiet_org, new_session, api_for):
    admin = new_session(quiet_org, role="owner")
    assert (
        admin.api.request(
            "PATCH", "/api/v1/org/policy", json={"password_min_length": 20}
        ).status_code
        == 200
    )
    assert admin.api.get("/api/v1/org/policy").json()["password_min_length"] == 20
    member = new_session(quiet_org)
    changed = member.api.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": "Nineteen-chars-long"},
    )
    assert changed.status_code == 400 and changed.json()["error"]["code"] == "weak_password"
    created = admin.api.post(
        "/api/v1/users", json={"username": unique(), "password": "Nineteen-chars-long"}
    )
    assert created.status_code == 400 and "at least 20" in created.text
    bad = admin.api.request("PATCH", "/api/v1/org/policy", json={"password_min_length": 4})
    assert bad.status_code == 400


def test_unauthenticated_password_change_is_refused(api_for, org_a):
    response = api_for(org_a).post(
        "/api/v1/me/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}
    )
    assert response.status_code == 401


# --- forgot password ---------------------------------------------------------------------


def test_forgot_password_mails_a_link_that_works_once(org_a, new_session, mailbox, celery_worker):
    session = new_session(org_a)
    user = with_email(org_a, session.user)
    api = session.api
    answer = api.post("/api/v1/auth/password-reset", json={"username": user.email})
    assert answer.status_code == 202

    message = mailbox.wait_for(user.email, subject="Reset your")
    text, html = bodies(message)
    assert user.username in text and "30 minutes" in text
    assert "Choose a new password" in html
    token = reset_token_from(mailbox, user)
    stored = in_tenant(org_a, lambda: PasswordReset.objects.get(user_id=user.pk))
    assert token not in stored.token_hash and len(stored.token_hash) == 64

    first = api.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert first.status_code == 204, first.text
    second = api.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "password": "Other-pw-9876"}
    )
    assert second.status_code == 400 and second.json()["error"]["code"] == "invalid_token"
    assert login_status(api, user.username, NEW_PASSWORD) == 200
    assert login_status(api, user.username, PASSWORD) == 401
    # A reset ends every device, the one that asked included (it was not authenticated).
    assert api.get("/api/v1/me").status_code == 401
    assert audit_events(org_a, user, "member.password_reset_sent")
    assert audit_events(org_a, user, "member.password_reset")
    changed = mailbox.wait_for(user.email, subject="password was changed")
    assert "reset with a mailed link" in bodies(changed)[0]


def test_forgot_password_answers_the_same_for_unknown_and_mailless_accounts(
    org_a, api_for, celery_worker
):
    api = api_for(org_a)
    mailless = make_user(org_a)
    known = with_email(org_a, make_user(org_a))
    answers = [
        api.post("/api/v1/auth/password-reset", json={"username": name})
        for name in (unique(), mailless.username, known.username, f"{unique()}@nowhere.test")
    ]
    assert {a.status_code for a in answers} == {202}
    assert len({a.text for a in answers}) == 1
    # The worker handles them in order: once the known account's link exists, the
    # account without an address has been dealt with too.
    wait_for_reset_row(org_a, known)
    assert reset_rows(org_a, mailless) == 0


def test_forgot_password_is_rate_limited_per_account(quiet_org, api_for):
    api = api_for(quiet_org)
    name = unique()
    codes = [
        api.post("/api/v1/auth/password-reset", json={"username": name}).status_code
        for _ in range(4)
    ]
    assert codes == [202, 202, 202, 429]


def test_an_expired_or_unknown_token_is_refused(org_a, api_for, celery_worker):
    api = api_for(org_a)
    user = with_email(org_a, make_user(org_a))
    assert api.post("/api/v1/auth/password-reset", json={"username": user.username}).status_code
    wait_for_reset_row(org_a, user)
    in_tenant(
        org_a,
        lambda: PasswordReset.objects.filter(user_id=user.pk).update(
            expires_at="2000-01-01T00:00:00Z"
        ),
    )
    for token in ("sph_r_unknown", "x" * 150, ""):
        response = api.post(
            "/api/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
        )
        assert response.status_code == 400


def test_a_reset_link_of_one_org_does_not_work_at_another(
    org_a, org_b, api_for, mailbox, celery_worker
):
    user = with_email(org_a, make_user(org_a))
    twin = make_user(org_b, user.username)
    assert (
        api_for(org_a)
        .post("/api/v1/auth/password-reset", json={"username": user.username})
        .status_code
        == 202
    )
    token = reset_token_from(mailbox, user)
    response = api_for(org_b).post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert response.status_code == 400
    assert login_status(api_for(org_b), twin.username, PASSWORD) == 200


def test_with_passwords_off_forgot_password_mails_the_sso_notice_and_no_link(
    quiet_org, api_for, mailbox, celery_worker
):
    from orgs.accounts.models import OrgPolicy

    user = with_email(quiet_org, make_user(quiet_org))
    in_tenant(
        quiet_org,
        lambda: OrgPolicy.objects.update_or_create(
            pk=1, defaults={"password_login": False, "sso_login": True}
        ),
    )
    api = api_for(quiet_org)
    response = api.post("/api/v1/auth/password-reset", json={"username": user.username})
    assert response.status_code == 202
    message = mailbox.wait_for(user.email, subject="Signing in to")
    text, _ = bodies(message)
    assert "single sign-on" in text and "sph_r_" not in text
    assert reset_rows(quiet_org, user) == 0


# --- admin reset ---------------------------------------------------------------------------


def test_an_admin_mails_a_member_a_reset_link(org_a, new_session, mailbox, celery_worker):
    admin = new_session(org_a, role="admin")
    member = with_email(org_a, make_user(org_a))
    response = admin.api.post(f"/api/v1/users/{member.pk}/password-reset")
    assert response.status_code == 202, response.text
    assert response.json() == {"sent_to": member.email, "expires_in": 1800}
    message = mailbox.wait_for(member.email, subject="Reset your")
    assert "An administrator" in bodies(message)[0]
    [entry] = audit_events(org_a, member, "member.password_reset_sent")
    assert entry.actor_id == admin.user.pk
    # The current password keeps working until the link is used.
    assert login_status(admin.api, member.username, PASSWORD) == 200


def test_admin_reset_refusals(org_a, org_b, new_session):
    admin = new_session(org_a, role="admin")
    member = new_session(org_a)
    mailless = make_user(org_a)
    owner = with_email(org_a, make_user(org_a, role="owner"))
    other_org_user = with_email(org_b, make_user(org_b))
    no_mail = admin.api.post(f"/api/v1/users/{mailless.pk}/password-reset")
    assert no_mail.status_code == 409 and no_mail.json()["error"]["code"] == "no_email"
    assert admin.api.post(f"/api/v1/users/{owner.pk}/password-reset").status_code == 403
    assert admin.api.post(f"/api/v1/users/{other_org_user.pk}/password-reset").status_code == 404
    assert admin.api.post("/api/v1/users/not-a-uuid/password-reset").status_code == 404
    assert member.api.post(f"/api/v1/users/{mailless.pk}/password-reset").status_code == 403


def test_no_device_of_a_user_survives_a_reset(org_a, new_session, mailbox, celery_worker):
    session = new_session(org_a)
    user = with_email(org_a, session.user)
    session.api.post("/api/v1/auth/password-reset", json={"username": user.username})
    token = reset_token_from(mailbox, user)
    session.api.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    live = in_tenant(org_a, Device.objects.filter(user_id=user.pk, revoked_at__isnull=True).count)
    assert live == 0
    assert login_grant(session.api, user.username, NEW_PASSWORD)


def test_a_reset_ends_an_mfa_enrolment_token_earned_with_the_old_password(
    quiet_org, api_for, mailbox, celery_worker
):
    from orgs.accounts.models import OrgPolicy

    in_tenant(
        quiet_org,
        lambda: OrgPolicy.objects.update_or_create(
            pk=1, defaults={"mfa_policy": "required_for_all"}
        ),
    )
    user = with_email(quiet_org, make_user(quiet_org))
    api = api_for(quiet_org)
    refused = api.post("/api/v1/auth/login", json={"username": user.username, "password": PASSWORD})
    assert refused.json()["error"]["code"] == "mfa_enrollment_required", refused.text
    as_enrollee = {"Authorization": f"Enrollment {refused.json()['enrollment_token']}"}
    assert api.post("/api/v1/mfa/totp/enroll", headers=as_enrollee).status_code == 200

    api.post("/api/v1/auth/password-reset", json={"username": user.username})
    token = reset_token_from(mailbox, user)
    confirmed = api.post(
        "/api/v1/auth/password-reset/confirm", json={"token": token, "password": NEW_PASSWORD}
    )
    assert confirmed.status_code == 204
    assert api.post("/api/v1/mfa/totp/enroll", headers=as_enrollee).status_code == 401
