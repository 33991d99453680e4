"""Portal sessions are cached in each web process (siphera.sessions): ending one must
reach every process, and a shortened session lifetime must apply at once."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.fixtures import host_of, server_with_env


@pytest.fixture
def second_server(tmp_path):
    """Another web process on the same database and Redis, whose cached entries would
    live for an hour: only a generation bump, read once a second, can make it drop them."""
    with server_with_env(
        tmp_path / "second.log",
        GENERATION_CACHE_MAX_AGE_SECONDS="3600",
        GENERATION_CHECK_SECONDS="1",  # the default, which the test suite lowers to 0
    ) as live:
        yield live


def eventually(check, *, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "the change never reached the other process"
        time.sleep(0.2)


def test_signing_out_in_one_process_ends_the_session_in_every_process(
    org_p, server, signed_in_admin, second_server
):
    def replaying(live) -> httpx.Client:
        """A client that keeps sending the session cookie the admin has now."""
        return httpx.Client(
            base_url=live.url,
            headers={"Host": host_of(org_p)},
            cookies={"sessionid": signed_in_admin.http.cookies["sessionid"]},
            timeout=15,
            follow_redirects=False,
        )

    here, there = replaying(server), replaying(second_server)
    # The session works in both processes (and is cached by both)
    assert here.get("/portal/").status_code == 200
    assert there.get("/portal/").status_code == 200
    # When the admin signs out through the first process
    signed_in_admin.get("/portal/")
    assert signed_in_admin.post("/portal/logout").status_code == 302
    # Then the old cookie is a signed-out browser in the first process at once, and in
    # the second soon after
    assert here.get("/portal/").headers["location"].startswith("/portal/login")
    eventually(lambda: there.get("/portal/").status_code == 302)
    assert there.get("/portal/").headers["location"].startswith("/portal/login")
    here.close()
    there.close()
