"""A host name added to a running server's org with `manage.py add_domain` serves portal
sign-in at once: behind the TLS proxy the browser's Origin is `https://<that host>`, and
CSRF trusts it without anyone editing CSRF_TRUSTED_ORIGINS or restarting the server."""

from __future__ import annotations

import subprocess
import sys

import httpx

from admin_portal.tests.conftest import CSRF_INPUT
from tests.fixtures import (
    PASSWORD,
    ROOT,
    child_env,
    create_org,
    host_of,
    make_user,
    server_with_env,
    unique,
)


def add_domain(org, domain: str) -> None:
    """`manage.py add_domain`, run as an operator would: another process than the server."""
    subprocess.run(
        [sys.executable, "manage.py", "add_domain", "--org", org.slug, "--domain", domain],
        cwd=ROOT,
        env=child_env(),
        check=True,
        capture_output=True,
        timeout=60,
    )


def sign_in(server, host: str, username: str, *, origin: str) -> httpx.Response:
    """The portal's sign-in form as a browser behind a TLS proxy posts it: page, CSRF
    cookie and token, then the POST with the page's Origin."""
    with httpx.Client(base_url=server.url, headers={"Host": host}, timeout=15) as browser:
        page = browser.get("/portal/login")
        assert page.status_code == 200, page.text
        token = CSRF_INPUT.search(page.text).group(1)
        return browser.post(
            "/portal/login",
            data={"username": username, "password": PASSWORD, "csrfmiddlewaretoken": token},
            headers={"Origin": origin},
        )


def test_a_domain_added_while_the_server_runs_signs_in_to_the_portal_at_once(tmp_path):
    # Given a server set up as the operations guide said before (its org's host name in
    # CSRF_TRUSTED_ORIGINS), serving the org through that name
    org = create_org(unique("dom"))
    admin = make_user(org, role="admin")
    first = host_of(org)
    with server_with_env(
        tmp_path / "server.log", CSRF_TRUSTED_ORIGINS=f"https://{first}"
    ) as server:
        assert sign_in(server, first, admin.username, origin=f"https://{first}").status_code == 302
        # When an operator adds a host name with manage.py add_domain
        added = f"{unique('chat')}.example.test"
        add_domain(org, added)
        # Then signing in through it (browser at https://<added>, TLS ended at the proxy)
        # works at once, without a restart
        signed_in = sign_in(server, added, admin.username, origin=f"https://{added}")
        assert signed_in.status_code == 302, signed_in.text[:500]
        assert signed_in.headers["location"].startswith("/portal")
        # And so through a proxy listening on another port
        on_port = sign_in(server, f"{added}:8443", admin.username, origin=f"https://{added}:8443")
        assert on_port.status_code == 302, on_port.text[:500]


def test_origins_other_than_the_requested_org_host_stay_untrusted(server, org_a):
    # Given an org with two host names and another org
    org = create_org(unique("dom"))
    admin = make_user(org, role="admin")
    host = host_of(org)
    other = f"{unique('alt')}.example.test"
    add_domain(org, other)
    # When a page elsewhere posts the sign-in form: another org's host, a foreign site, the
    # same org's other host, or the requested host over plain http from another port
    for origin in (
        f"https://{host_of(org_a)}",
        "https://evil.example",
        f"https://{other}",
        f"https://{host}.evil.example",
        "null",
    ):
        # Then CSRF refuses it
        refused = sign_in(server, host, admin.username, origin=origin)
        assert refused.status_code == 403, (origin, refused.status_code)
