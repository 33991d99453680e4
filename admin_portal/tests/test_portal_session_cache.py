"""Portal sessions are cached in each web process (siphera.sessions): ending one must
reach every process."""

from __future__ import annotations

import httpx

from tests.fixtures import eventually, host_of


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
