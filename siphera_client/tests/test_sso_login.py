"""The reference client signs in through the org's single sign-on as a native app should
(RFC 8252): a loopback listener, the browser through the real OpenID provider of the OIDC
tests, the one-time code exchanged with the PKCE verifier, then an ordinary device."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from orgs.accounts.models import User
from orgs.tests import test_oidc
from siphera.tenancy import in_tenant
from siphera_client.api import ApiError
from siphera_client.client import Client
from siphera_client.tests.conftest import PASSPHRASE

# The OIDC tests' real OpenID provider and their org set-up, shared rather than copied.
idp = test_oidc.idp
oidc_org = test_oidc.oidc_org
_honest_provider = test_oidc._honest_provider
person = test_oidc.person


def browser_for(setup, server, seen: list[str]):
    """A browser that follows the sign-in: Siphera -> the IdP -> Siphera -> the app."""

    async def open_url(url: str) -> None:
        seen.append(url)
        async with httpx.AsyncClient(timeout=10) as http:
            start = await http.get(url, headers={"Host": setup.host})
            assert start.status_code == 302, start.text
            at_idp = await http.get(start.headers["location"])
            assert at_idp.status_code == 302, at_idp.text
            back = urlsplit(at_idp.headers["location"])
            done = await http.get(
                f"{server.url}{back.path}?{back.query}", headers={"Host": setup.host}
            )
            assert done.status_code == 302, done.text
            assert done.headers["location"].startswith("http://127.0.0.1:")
            app = await http.get(done.headers["location"])
            assert app.status_code == 200 and b"close this window" in app.content

    return open_url


async def test_the_reference_client_registers_a_device_through_single_sign_on(
    oidc_org, idp, server, tmp_path
):
    setup = oidc_org(auth_method="none")
    idp.user = person()
    seen: list[str] = []
    client = await Client.register(
        server=server.url,
        host=setup.host,
        username="",
        password=None,
        sso=browser_for(setup, server, seen),
        state_path=tmp_path / "sso.json",
        passphrase=PASSPHRASE,
    )
    async with client:
        me = await client.api.me()
    user = in_tenant(setup.org, User.objects.get, external_id=idp.user["sub"])
    assert me["user_id"] == str(user.pk) == client.user_id
    assert client.store.data["username"] == user.username == idp.user["preferred_username"]
    # The app asked for a PKCE sign-in with a loopback redirect; no grant in any URL.
    [url] = seen
    assert "purpose=client" in url and "code_challenge=" in url
    assert "sph_g_" not in url


async def test_a_refused_sso_sign_in_leaves_no_state_file(oidc_org, idp, server, tmp_path):
    setup = oidc_org(auth_method="none")
    idp.deny = True  # the person declines at the IdP: nothing comes back to the app

    async def declining_browser(url: str) -> None:
        async with httpx.AsyncClient(timeout=10) as http:
            start = await http.get(url, headers={"Host": setup.host})
            await http.get(start.headers["location"])

    state = tmp_path / "refused.json"
    with pytest.raises(ApiError) as refused:
        await Client.register(
            server=server.url,
            host=setup.host,
            username="",
            password=None,
            sso=declining_browser,
            state_path=state,
            passphrase=PASSPHRASE,
            sso_timeout=2,
        )
    assert refused.value.code == "sso_timeout"
    assert not state.exists()
