"""Portal test helpers: a dedicated org (so the portal's logins never spend alpha's login
budget shared with the rest of the suite) and a browser-like HTTP client."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from tests.fixtures import PASSWORD, create_org, host_of, make_user

CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


@pytest.fixture(scope="session")
def org_p():
    return create_org("portalco", "portalco.test")


@pytest.fixture(autouse=True)
def _fresh_login_budget(request):
    """Every test starts with a full per-IP login budget in the portal org: all tests
    log in from 127.0.0.1, and the limit (per IP, per org) would otherwise carry over."""
    if "org_p" not in request.fixturenames:
        return
    from siphera import ratelimit
    from siphera.tenancy import in_tenant

    in_tenant(request.getfixturevalue("org_p"), ratelimit.reset, "login-ip", "127.0.0.1")


class Portal:
    """A browser-ish client of one org's portal: keeps cookies, sends the org's Host, reads
    the CSRF token from the last form it was shown."""

    def __init__(self, server, org):
        self.host = host_of(org)
        self.http = httpx.Client(
            base_url=server.url, headers={"Host": self.host}, timeout=15, follow_redirects=False
        )
        self.csrf = ""

    def get(self, path: str, **kwargs) -> httpx.Response:
        response = self.http.get(path, **kwargs)
        match = CSRF_INPUT.search(response.text)
        if match:
            self.csrf = match.group(1)
        return response

    def post(self, path: str, data: dict | None = None, *, csrf: bool = True, **kwargs):
        data = dict(data or {})
        if csrf:
            data["csrfmiddlewaretoken"] = self.csrf
        return self.http.post(path, data=data, **kwargs)

    def login(self, username: str, password: str = PASSWORD) -> httpx.Response:
        """Sign in through the form; like a browser, follow a redirect so the next form's
        CSRF token (rotated at login) is at hand. Returns the POST's response."""
        self.get("/portal/login")
        response = self.post("/portal/login", {"username": username, "password": password})
        if response.status_code == 302:
            self.get(response.headers["location"])
        return response

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def portal(server):
    """Factory: a fresh portal client (empty cookie jar) for an org."""
    clients: list[Portal] = []

    def make(org) -> Portal:
        client = Portal(server, org)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def signed_in_admin(portal, org_p):
    """A portal client signed in as a new admin of the portal org; `.user` is the admin."""
    admin = make_user(org_p, role="admin")
    client = portal(org_p)
    response = client.login(admin.username)
    assert response.status_code == 302, response.text
    client.user = admin
    return client


# --- the browser (PITFALLS 24) -------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
# PITFALLS 24: Debian's chromium, never `playwright install`; the background-networking
# flags keep it from hammering the closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def chromium() -> str:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the portal's browser test needs Debian's chromium "
            "(`apt-get install -y chromium`; `playwright install` does not work here, "
            "PITFALLS 24)."
        )
    return str(CHROMIUM)


@pytest.fixture
def screenshots(tmp_path) -> Path:
    """Where the journey's screenshots go (PORTAL_SCREENSHOTS=dir keeps them)."""
    target = Path(os.environ.get("PORTAL_SCREENSHOTS") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target
