"""Nobody can lock a user out by guessing their password (issue 15 item 7).

Failed logins are throttled per (username, client address) and per client address; past
a number of failures for one username from anywhere, the username is in backoff: an
address that has failed for it waits, an address that has not still gets its password
checked. Only failures count. Client addresses are simulated with X-Forwarded-For through
one trusted proxy (TRUSTED_PROXY_COUNT=1); the server's own limits are the defaults."""

from __future__ import annotations

import pytest

from tests.fixtures import PASSWORD, Api, host_of, make_user, server_with_env, unique

ATTACKER = "198.51.100.66"
USER_ADDRESS = "203.0.113.8"


@pytest.fixture
def login_server(tmp_path, quiet_org):
    """A server with the production login limits (the test run raises the per-IP one)."""
    env = {
        "TRUSTED_PROXY_COUNT": "1",
        "LOGIN_RATE_PER_IP": "30",
        "LOGIN_RATE_PER_USERNAME": "10",
        "LOGIN_RATE_WINDOW_SECONDS": "300",
    }
    with server_with_env(tmp_path / "server.log", **env) as server:
        api = Api(server, host_of(quiet_org))

        def login(username: str, password: str, address: str, otp: str | None = None):
            body = {"username": username, "password": password}
            return api.post(
                "/api/v1/auth/login",
                json=body if otp is None else {**body, "otp": otp},
                headers={"X-Forwarded-For": address},
            )

        yield login


def test_an_attacker_failing_20_times_does_not_stop_the_user_from_another_address(
    login_server, quiet_org
):
    # Given a user, and an attacker at another address who knows the username
    admin = make_user(quiet_org, role="admin")
    # When the attacker sends 20 wrong passwords
    answers = [login_server(admin.username, "wrong", ATTACKER).status_code for _ in range(20)]
    # Then the attacker is stopped after 10 (invalid_credentials until then, 429 after)
    assert answers == [401] * 10 + [429] * 10
    stopped = login_server(admin.username, PASSWORD, ATTACKER)
    assert stopped.status_code == 429, "the attacker's address must not get a verdict"
    assert stopped.json()["error"]["code"] == "rate_limited"
    assert 0 < int(stopped.headers["Retry-After"]) <= 300
    # And the user, at their own address, signs in with the right password at once
    assert login_server(admin.username, PASSWORD, USER_ADDRESS).status_code == 200


def test_many_addresses_get_one_guess_each_once_the_username_is_in_backoff(login_server, quiet_org):
    # Given a user whose username has had 10 failures from 10 addresses (a botnet)
    user = make_user(quiet_org)
    spread = [f"192.0.2.{i}" for i in range(1, 11)]
    assert [login_server(user.username, "wrong", a).status_code for a in spread] == [401] * 10
    # When those addresses guess again, they wait
    for address in spread[:3]:
        assert login_server(user.username, "wrong-again", address).status_code == 429
    # And a new address gets one verdict, then waits too
    assert login_server(user.username, "wrong", "192.0.2.77").status_code == 401
    assert login_server(user.username, "wrong", "192.0.2.77").status_code == 429
    # While the user's own address, which never failed, is not stopped
    assert login_server(user.username, PASSWORD, USER_ADDRESS).status_code == 200


def test_100_failures_from_one_address_over_many_usernames_meet_the_per_address_limit(
    login_server, quiet_org
):
    # Given one address spraying passwords over many usernames, known and unknown
    users = [make_user(quiet_org) for _ in range(3)]
    names = [u.username for u in users] + [unique() for _ in range(7)]
    # When it sends 100 wrong passwords, 10 per username
    answers = [login_server(names[i % 10], f"guess{i}", ATTACKER).status_code for i in range(100)]
    # Then only 30 get a verdict (the per-address limit), then even a right password waits
    assert answers.count(401) == 30 and answers.count(429) == 70
    assert login_server(users[0].username, PASSWORD, ATTACKER).status_code == 429
    # And the users themselves, elsewhere, sign in
    for user in users:
        assert login_server(user.username, PASSWORD, USER_ADDRESS).status_code == 200


def test_only_failures_count_a_user_signing_in_often_is_never_throttled(login_server, quiet_org):
    # Given a user who signs in from one address many times (several devices, scripts)
    user = make_user(quiet_org)
    # When they sign in 25 times with the right password, with a typo now and then
    answers = []
    for i in range(25):
        password = "typo" if i % 6 == 5 else PASSWORD
        answers.append(login_server(user.username, password, USER_ADDRESS).status_code)
    # Then every right password is accepted and every typo is an ordinary refusal
    assert answers == [401 if i % 6 == 5 else 200 for i in range(25)]


def test_wrong_codes_after_the_right_password_are_limited_per_user_from_every_address(
    login_server, quiet_org, new_session
):
    from orgs.tests.test_mfa import enable_totp, wrong_code

    # Given a user with TOTP, and an attacker who has their password but not their phone
    session = new_session(quiet_org)
    secret, _, _ = enable_totp(session)
    name = session.user.username
    # When the attacker tries a wrong code from each of 12 addresses
    answers = [
        login_server(name, PASSWORD, f"192.0.2.{i}", otp=wrong_code(secret))
        for i in range(100, 112)
    ]
    # Then the user's 10 code tries (MFA_VERIFY_RATE_PER_USER; confirming the enrolment
    # spent one) are judged and the rest are not: the code, the last barrier, is limited
    # per user whatever the address
    codes = [a.json()["error"]["code"] for a in answers]
    assert codes == ["invalid_otp"] * 9 + ["rate_limited"] * 3
    # And without a code the right password still answers otp_required (no 429 for the
    # password step, nor a failure counted against it)
    assert login_server(name, PASSWORD, USER_ADDRESS).json()["error"]["code"] == "otp_required"
