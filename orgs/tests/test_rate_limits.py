"""Named rate limits (siphera.ratelimit) over a real server started with low limits: 429 +
Retry-After for HTTP, an `error` frame with `rate_limited` + `retry_after` on the socket,
counters shared by every process (two servers spend one budget), and per org; and the
login limit per client IP (LOGIN_RATE_PER_IP, which the test run otherwise sets very high)."""

from __future__ import annotations

import pytest
from django.conf import settings

from siphera import ratelimit
from tests.fixtures import (
    PASSWORD,
    Api,
    create_org,
    host_of,
    make_user,
    register_device,
    server_with_env,
    unique,
)
from tests.ws import open_socket, recv, send


def limits_env(**overrides: str) -> dict[str, str]:
    """The test run's limits with some lowered (later entries win)."""
    extra = ",".join(f"{name.replace('_', '.')}={value}" for name, value in overrides.items())
    return {"RATE_LIMITS": f"{settings.RATE_LIMITS_TEST},{extra}"}


@pytest.fixture
def low_server(tmp_path):
    def start(**overrides: str):
        return server_with_env(tmp_path / "server.log", **limits_env(**overrides))

    return start


def _session(server, org):
    user = make_user(org)
    api = Api(server, host_of(org))
    device_id, token, _ = register_device(api, user.username)
    return user, device_id, api.as_device(token)


def test_the_limit_table_parses_overrides_and_refuses_unknown_names():
    parsed = ratelimit.parse_limits("api.user=5/10,http.ip=7")
    assert parsed["api.user"] == ratelimit.Limit(5, 10)
    assert parsed["http.ip"] == ratelimit.Limit(7, 60)
    assert parsed["ws.frame.user"] == ratelimit.Limit(*ratelimit.DEFAULT_LIMITS["ws.frame.user"])
    with pytest.raises(ValueError):
        ratelimit.parse_limits("no.such.limit=1/1")


def test_api_calls_per_user_get_429_with_retry_after_and_other_users_are_unaffected(
    low_server, org_a
):
    with low_server(api_user="5/60") as server:
        _, _, alice = _session(server, org_a)
        _, _, bob = _session(server, org_a)
        answers = [alice.get("/api/v1/me").status_code for _ in range(6)]
        assert answers == [200] * 5 + [429]
        limited = alice.get("/api/v1/me")
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        retry = int(limited.headers["Retry-After"])
        assert 0 < retry <= 60 and limited.json()["retry_after"] == retry
        assert bob.get("/api/v1/me").status_code == 200


def test_requests_per_ip_get_429_on_every_endpoint_including_public_ones(low_server, quiet_org):
    with low_server(http_ip="4/60") as server:
        api = Api(server, host_of(quiet_org))
        codes = [api.get("/api/v1/schema/").status_code for _ in range(4)]
        assert 429 not in codes
        login = api.post("/api/v1/auth/login", json={"username": "x", "password": "y"})
        assert login.status_code == 429 and "Retry-After" in login.headers
        portal = api.get("/portal/login")
        assert portal.status_code == 429
        assert api.get("/health").status_code == 200  # probes are never limited


def test_two_servers_share_one_budget(low_server, tmp_path, org_a):
    with low_server(api_user="4/60") as first:
        _, _, alice = _session(first, org_a)
        with server_with_env(tmp_path / "second.log", **limits_env(api_user="4/60")) as second:
            on_second = Api(second, alice.host, alice.token)
            answers = [
                (alice if i % 2 else on_second).get("/api/v1/me").status_code for i in range(5)
            ]
    assert answers == [200, 200, 200, 200, 429]


def _another_device(server, org, user) -> str:
    _, token, _ = register_device(Api(server, host_of(org)), user.username)
    return token


async def _authed(server, org, token):
    ws = await open_socket(server, host_of(org))
    await send(ws, {"type": "auth", "token": token})
    assert (await recv(ws))["type"] == "ready"
    return ws


async def _ping_answers(sockets, count: int) -> list[str]:
    """Send `count` pings round-robin over `sockets`, each awaited; the answers' types."""
    answers = []
    for i in range(count):
        ws = sockets[i % len(sockets)]
        await send(ws, {"type": "ping", "ref": i})
        while (frame := await recv(ws)).get("ref") != i:
            pass
        answers.append(frame["type"] if frame["type"] == "pong" else frame["code"])
    return answers


async def test_frames_over_the_limit_get_a_rate_limited_error_frame(low_server, org_a):
    with low_server(ws_frame_user="3/60") as server:
        _, _, api = _session(server, org_a)
        ws = await _authed(server, org_a, api.token)
        replies = []
        for i in range(4):
            await send(ws, {"type": "ping", "ref": i})
            while True:
                frame = await recv(ws)
                if frame.get("ref") == i:
                    replies.append(frame)
                    break
        assert [r["type"] for r in replies] == ["pong", "pong", "pong", "error"]
        assert replies[3]["code"] == "rate_limited" and 0 < replies[3]["retry_after"] <= 60
        await ws.close()


async def test_frame_budget_is_leased_in_chunks_yet_spent_exactly_across_a_users_sockets(
    low_server, org_a
):
    # 200/60 lets a process lease 4 hits at a time (siphera.ratelimit.ahit_named): within
    # one process the user's two sockets still get exactly 200 frames, and someone else
    # keeps their own budget.
    with low_server(ws_frame_user="200/60") as server:
        user, _, alice = _session(server, org_a)
        _, _, bob = _session(server, org_a)
        phone = await _authed(server, org_a, alice.token)
        laptop = await _authed(server, org_a, _another_device(server, org_a, user))
        answers = await _ping_answers([phone, laptop], 206)
        assert answers == ["pong"] * 200 + ["rate_limited"] * 6
        other = await _authed(server, org_a, bob.token)
        assert await _ping_answers([other], 1) == ["pong"]
        for ws in (phone, laptop, other):
            await ws.close()


async def test_two_servers_spend_one_frame_budget_never_more(low_server, tmp_path, org_a):
    # Hits leased by one process and not spent are lost to the other for the window, so
    # the user may be refused a lease's worth early (at most 4 here), never late.
    with low_server(ws_frame_user="200/60") as first:
        user, _, alice = _session(first, org_a)
        env = limits_env(ws_frame_user="200/60")
        with server_with_env(tmp_path / "second.log", **env) as second:
            sockets = [await _authed(first, org_a, alice.token)]
            sockets.append(await _authed(second, org_a, _another_device(second, org_a, user)))
            answers = await _ping_answers(sockets, 210)
            for ws in sockets:
                await ws.close()
    assert 196 <= answers.count("pong") <= 200
    assert answers[-4:] == ["rate_limited"] * 4


async def test_websocket_handshakes_per_ip_are_limited(low_server, quiet_org):
    with low_server(ws_connect_ip="2/60") as server:
        for _ in range(2):
            ws = await open_socket(server, host_of(quiet_org))
            await ws.close()
        ws = await open_socket(server, host_of(quiet_org))
        frame = await recv(ws)
        assert frame["type"] == "error" and frame["code"] == "rate_limited"
        assert frame["retry_after"] > 0
        try:
            await recv(ws)
        except Exception:
            pass
        assert ws.close_code == 4429


def test_portal_pages_per_user_are_limited_with_a_429_page(low_server, org_a):
    from admin_portal.tests.conftest import Portal

    with low_server(portal_user="3/60") as server:
        admin = make_user(org_a, role="admin")
        client = Portal(server, org_a)
        client.login(admin.username)  # the redirect's page spends one
        statuses = [client.get("/portal/").status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        page = client.get("/portal/users/")
        assert page.status_code == 429 and int(page.headers["Retry-After"]) > 0
        assert "Too many requests" in page.text
        client.close()


def test_logins_per_ip_get_429_with_retry_after_whatever_the_username(tmp_path, quiet_org):
    from admin_portal.tests.conftest import Portal

    limit = 5
    # Given a server allowing 5 logins per client IP (and trusting one proxy's
    # X-Forwarded-For, so a second client address can be shown to keep its own budget)
    env = {"LOGIN_RATE_PER_IP": str(limit), "TRUSTED_PROXY_COUNT": "1"}
    real = make_user(quiet_org)
    with server_with_env(tmp_path / "server.log", **env) as server:
        api = Api(server, host_of(quiet_org))

        def login(username: str, password: str = PASSWORD, **headers: str):
            body = {"username": username, "password": password}
            return api.post("/api/v1/auth/login", json=body, headers=headers)

        # When one address tries 5 different usernames (none reaches its own per-name limit)
        tries = [login(unique(), "wrong").status_code for _ in range(limit)]
        # Then those are ordinary refusals, and the next try is 429 even with the right
        # password of a real user
        assert tries == [401] * limit
        limited = login(real.username)
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"]["code"] == "rate_limited"
        retry = int(limited.headers["Retry-After"])
        assert 0 < retry <= settings.LOGIN_RATE_WINDOW_SECONDS
        # And the portal's password form spends the same budget
        portal = Portal(server, quiet_org)
        assert portal.login(real.username).status_code == 429
        portal.close()
        # While another client address, and the same address on another org, still log in
        assert login(real.username, **{"X-Forwarded-For": "203.0.113.8"}).status_code == 200
        other = create_org(unique("r"), f"{unique('h')}.test")
        other_org = Api(server, host_of(other))
        someone = make_user(other)
        body = {"username": someone.username, "password": PASSWORD}
        assert other_org.post("/api/v1/auth/login", json=body).status_code == 200
