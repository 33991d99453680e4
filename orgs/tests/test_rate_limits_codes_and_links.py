"""Rate limits on secrets a caller guesses (invitation links per client IP, MFA codes per
user) over a real server with low limits, and the limit table of docs/rate-limits.md
against the code."""

from __future__ import annotations

import re

from django.conf import settings

from orgs.services import audit, users
from orgs.tests.test_rate_limits import limits_env
from siphera import ratelimit
from siphera.tenancy import in_tenant
from tests.fixtures import (
    ROOT,
    Api,
    host_of,
    make_user,
    register_device,
    server_with_env,
    unique,
)


def _device_api(server, org) -> Api:
    user = make_user(org)
    api = Api(server, host_of(org))
    _, token, _ = register_device(api, user.username)
    return api.as_device(token)


def test_invitation_links_per_ip_are_limited_whether_the_token_is_good_or_not(tmp_path, quiet_org):
    # Given a live invitation, and a server allowing 3 invitation hits per IP
    _, token = in_tenant(
        quiet_org, users.check_invite_user, username=unique(), actor=audit.Actor.system("tests")
    )
    with server_with_env(tmp_path / "server.log", **limits_env(invitation_ip="3/300")) as server:
        api = Api(server, host_of(quiet_org))
        # When a guesser tries two wrong tokens and the right one
        guesses = [api.get(f"/portal/invite/sph_i_wrong{i}").status_code for i in range(2)]
        good = api.get(f"/portal/invite/{token}")
        # Then the guesses are 404, and the budget (3) is spent by guesses and hits alike
        assert guesses == [404, 404] and good.status_code == 200
        limited = api.get(f"/portal/invite/{token}")
        assert limited.status_code == 429 and 0 < int(limited.headers["Retry-After"]) <= 300
        csrf = "c" * 32
        api.http.cookies.set("csrftoken", csrf)
        accept = api.post(
            f"/portal/invite/{token}",
            data={"password": "x", "confirm": "x"},
            headers={"X-CSRFToken": csrf},
        )
        assert accept.status_code == 429
        # The rest of the portal is not affected
        assert api.get("/portal/login").status_code == 200


def test_mfa_code_tries_per_user_are_limited_and_other_users_are_unaffected(tmp_path, quiet_org):
    # Given a server allowing 3 MFA code tries per user, and two users enrolling
    with server_with_env(
        tmp_path / "mfa.log", **limits_env(), MFA_VERIFY_RATE_PER_USER="3"
    ) as server:
        alice = _device_api(server, quiet_org)
        bob = _device_api(server, quiet_org)
        for who in (alice, bob):
            assert who.post("/api/v1/mfa/totp/enroll").status_code == 200
        # When alice sends wrong codes, to confirm and to the other code endpoints
        tries = [
            alice.post("/api/v1/mfa/totp/confirm", json={"otp": "000000"}).status_code
            for _ in range(3)
        ]
        # Then the first three are judged (400) and the next is refused before judging,
        # on every endpoint that checks a code (one budget per user)
        assert tries == [400, 400, 400]
        for method, path in (
            ("POST", "/api/v1/mfa/totp/confirm"),
            ("POST", "/api/v1/mfa/recovery-codes"),
            ("DELETE", "/api/v1/mfa/totp"),
        ):
            limited = alice.request(method, path, json={"otp": "000000"})
            assert limited.status_code == 429, (path, limited.text)
            assert limited.json()["error"]["code"] == "rate_limited"
            assert 0 < int(limited.headers["Retry-After"]) <= settings.LOGIN_RATE_WINDOW_SECONDS
        # And bob's tries are his own
        assert bob.post("/api/v1/mfa/totp/confirm", json={"otp": "000000"}).status_code == 400


def _documented_limits() -> dict[str, tuple[str, str, str]]:
    """docs/rate-limits.md "The limits": limit -> (per, default, set with)."""
    text = (ROOT / "docs" / "rate-limits.md").read_text(encoding="utf-8")
    table = text.split("## The limits", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in table.splitlines()[2:]:
        name, _counts, per, default, set_with = (c.strip() for c in line.strip("|").split("|"))
        rows[name.strip("`")] = (per, default, set_with)
    return rows


def _env_int_default(name: str) -> int:
    source = (ROOT / "siphera" / "settings.py").read_text(encoding="utf-8")
    match = re.search(rf'^{name} = env_int\("{name}", (\d+)\)', source, re.M)
    assert match, f"{name} is not an env_int setting of siphera/settings.py"
    return int(match.group(1))


def test_the_documented_limit_table_matches_the_code():
    rows = _documented_limits()
    named = {name: row for name, row in rows.items() if row[2] == "`RATE_LIMITS`"}
    # Every named limit of the code is documented with its default, and no other
    assert set(named) == set(ratelimit.DEFAULT_LIMITS)
    for name, (count, window) in ratelimit.DEFAULT_LIMITS.items():
        assert named[name][1] == f"{count} / {window} s", name
    # The limits with their own settings name real settings, with the documented defaults
    for name, (_, default, set_with) in rows.items():
        if name in named:
            continue
        settings_names = re.findall(r"`([A-Z_]+)`", set_with)
        count, window = re.fullmatch(r"(\d+) / (\d+) s", default).groups()
        assert [_env_int_default(s) for s in settings_names] == [int(count), int(window)], name
