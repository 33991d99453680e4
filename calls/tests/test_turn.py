"""GET /api/v1/calls/turn: TURN credentials in coturn's REST-API scheme, checked against a
real coturn (`turnserver`, Debian's package, which `make test` installs).

Each coturn here runs on a free loopback port with a config written by
scripts/ensure_coturn.sh --config (calls/tests/coturn.py, shared with the aiortc call test);
aioice's TURN client (what aiortc uses) allocates a relay with the credentials Siphera
hands out and sends a datagram through it to a UDP echo peer and back.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs

import pytest
from aioice import stun
from aioice.turn import create_turn_endpoint

from calls.tests.coturn import Coturn, coturn
from orgs.services import audit
from orgs.services import roles as role_service
from siphera.settings_test import RATE_LIMITS_TEST
from siphera.tenancy import in_tenant
from tests.fixtures import ROOT, Api, child_env, host_of, make_user, server_with_env, unique

NEW_SECRET = "turn-new-" + "n" * 24
OLD_SECRET = "turn-old-" + "o" * 24
TTL = 600


# --- a TURN client ---------------------------------------------------------------------------


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self):
        self.received: asyncio.Queue = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.received.put_nowait((data, addr))


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(b"echo:" + data, addr)


def _server_of(url: str) -> tuple[tuple[str, int], str]:
    """(host, port), transport of a `turn:host:port?transport=...` URL."""
    scheme, _, rest = url.partition(":")
    assert scheme == "turn", url
    hostport, _, query = rest.partition("?")
    host, _, port = hostport.rpartition(":")
    transport = parse_qs(query).get("transport", ["udp"])[0]
    return (host, int(port)), transport


async def relay_round_trip(url: str, username: str, credential: str) -> bytes:
    """Allocate a relay on the TURN server of `url` with these credentials, send a datagram
    through it to a UDP echo peer on loopback and return what comes back. Raises
    stun.TransactionFailed when the server refuses the allocation."""
    server, transport = _server_of(url)
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    relay = None
    try:
        relay, inbox = await asyncio.wait_for(
            create_turn_endpoint(_Inbox, server, username, credential, transport=transport),
            60,
        )
        assert relay.get_extra_info("sockname")[0] == "127.0.0.1"  # relay-ip of the config
        relay.sendto(b"ping", echo.get_extra_info("sockname"))
        data, peer = await asyncio.wait_for(inbox.received.get(), 60)
        assert peer == echo.get_extra_info("sockname")
        return data
    finally:
        if relay is not None:
            relay.close()
        echo.close()


async def refused_with(url: str, username: str, credential: str) -> int:
    """The STUN error code the TURN server refuses the allocation with."""
    with pytest.raises(stun.TransactionFailed) as refused:
        await relay_round_trip(url, username, credential)
    return refused.value.response.attributes["ERROR-CODE"][0]


def signed(secret: str, username: str) -> str:
    """The scheme, computed here independently of calls.services.turn."""
    return base64.b64encode(
        hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    ).decode()


# --- servers ---------------------------------------------------------------------------------


@dataclass
class Rotation:
    """Mid-rotation: coturn accepts both secrets, Siphera signs with the new one."""

    coturn: Coturn
    server: object  # LiveServer with TURN_SECRETS=new,old


@pytest.fixture(scope="module")
def rotating(tmp_path_factory) -> Iterator[Rotation]:
    base = tmp_path_factory.mktemp("turn")
    with coturn(base / "coturn-both", NEW_SECRET, OLD_SECRET) as turn:
        with server_with_env(
            base / "server.log",
            TURN_URLS=turn.urls(),
            TURN_SECRETS=f"{NEW_SECRET},{OLD_SECRET}",
            TURN_TTL_SECONDS=str(TTL),
        ) as live:
            yield Rotation(coturn=turn, server=live)


def _session_on(live, session) -> Api:
    """`session`'s device token, sent to another server process of the same deployment."""
    return Api(live, host_of(session.org), session.token)


def _credentials(api: Api) -> dict:
    response = api.get("/api/v1/calls/turn")
    assert response.status_code == 200, response.text
    return response.json()


# --- the credential --------------------------------------------------------------------------


def test_credentials_follow_the_turn_rest_api_scheme(rotating, new_session, org_a):
    # Given a member's device, and a server whose TURN_SECRETS are "new,old"
    session = new_session(org_a)
    before = time.time()
    # When it asks for TURN credentials
    response = _session_on(rotating.server, session).get("/api/v1/calls/turn")
    # Then they are signed with the newest secret for "<expiry>:<user id>"
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"urls", "username", "credential", "ttl"}
    assert body["urls"] == rotating.coturn.urls().split(",")
    assert body["ttl"] == TTL
    expiry, _, user_id = body["username"].partition(":")
    assert user_id == str(session.user.pk)
    assert before + TTL - 1 <= int(expiry) <= time.time() + TTL
    assert body["credential"] == signed(NEW_SECRET, body["username"])
    assert response.headers["Cache-Control"] == "private, no-store"


def test_neither_secret_nor_credential_reaches_the_log(rotating, new_session, org_a):
    body = _credentials(_session_on(rotating.server, new_session(org_a)))
    log = rotating.server.log_text()
    assert "/api/v1/calls/turn" in log  # the access line was written
    for secret in (NEW_SECRET, OLD_SECRET, body["credential"]):
        assert secret not in log
        assert secret not in rotating.coturn.log_path.read_text(errors="replace")


# --- against coturn ----------------------------------------------------------------------------


async def test_coturn_relays_with_the_credentials_siphera_hands_out(rotating, new_session, org_a):
    # Given credentials from Siphera (one URL per transport: UDP and TCP)
    body = _credentials(_session_on(rotating.server, new_session(org_a)))
    assert len(body["urls"]) == 2
    for url in body["urls"]:
        # When a TURN client allocates a relay with them and sends through it
        echoed = await relay_round_trip(url, body["username"], body["credential"])
        # Then coturn accepted them and relayed both ways
        assert echoed == b"echo:ping", url


async def test_coturn_refuses_a_tampered_credential(rotating, new_session, org_a):
    body = _credentials(_session_on(rotating.server, new_session(org_a)))
    url = body["urls"][0]
    wrong_password = signed("not-the-secret", body["username"])
    assert await refused_with(url, body["username"], wrong_password) == 401
    # Someone else's user id (or a later expiry) under the same credential is refused too
    expiry, _, _ = body["username"].partition(":")
    assert await refused_with(url, f"{expiry}:{unique()}", body["credential"]) == 401
    assert await refused_with(url, f"{int(expiry) + 3600}:x", body["credential"]) == 401


async def test_coturn_refuses_an_expired_credential(rotating, new_session, org_a):
    # Given a credential signed with the right secret whose time has passed
    session = new_session(org_a)
    username = f"{int(time.time()) - 5}:{session.user.pk}"
    # Then coturn refuses it, while the same one with a future expiry is relayed
    url = rotating.coturn.urls().split(",")[0]
    assert await refused_with(url, username, signed(NEW_SECRET, username)) == 401
    fresh = f"{int(time.time()) + 60}:{session.user.pk}"
    assert await relay_round_trip(url, fresh, signed(NEW_SECRET, fresh)) == b"echo:ping"


async def test_a_relay_opened_before_expiry_keeps_working_after_it(rotating, new_session, org_a):
    # Given a relay allocated with a credential that expires in a moment
    session = new_session(org_a)
    expiry = int(time.time()) + 2
    username = f"{expiry}:{session.user.pk}"
    server, _ = _server_of(rotating.coturn.urls().split(",")[0])
    loop = asyncio.get_running_loop()
    first, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    second, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    relay, inbox = await create_turn_endpoint(
        _Inbox, server, username, signed(NEW_SECRET, username)
    )
    try:
        relay.sendto(b"before", first.get_extra_info("sockname"))
        assert (await asyncio.wait_for(inbox.received.get(), 60))[0] == b"echo:before"
        # When the credential has expired
        while time.time() < expiry + 2:
            await asyncio.sleep(0.5)
        # Then the relay still reaches a new peer (a permission and a channel binding,
        # both authenticated with the expired username): coturn checks at allocation
        relay.sendto(b"after", second.get_extra_info("sockname"))
        data, peer = await asyncio.wait_for(inbox.received.get(), 60)
        assert (data, peer) == (b"echo:after", second.get_extra_info("sockname"))
    finally:
        relay.close()
        first.close()
        second.close()


async def test_coturn_refuses_a_credential_signed_with_a_secret_it_does_not_know(
    rotating, new_session, org_a, tmp_path
):
    # Given a Siphera still signing with a secret this coturn was never given
    with server_with_env(
        tmp_path / "server.log", TURN_URLS=rotating.coturn.urls(), TURN_SECRETS="unknown-secret"
    ) as stray:
        body = _credentials(_session_on(stray, new_session(org_a)))
    # Then coturn refuses its credentials
    assert await refused_with(body["urls"][0], body["username"], body["credential"]) == 401


async def test_a_rotation_keeps_calls_working_when_coturn_knows_both_secrets(
    rotating, new_session, org_a, tmp_path
):
    # Given a Siphera from before the rotation (old secret only) and one after it (new
    # secret first), both pointing at a coturn configured with both secrets
    session = new_session(org_a)
    with server_with_env(
        tmp_path / "before.log", TURN_URLS=rotating.coturn.urls(), TURN_SECRETS=OLD_SECRET
    ) as before:
        old = _credentials(_session_on(before, session))
    new = _credentials(_session_on(rotating.server, session))
    assert old["credential"] == signed(OLD_SECRET, old["username"])
    assert new["credential"] == signed(NEW_SECRET, new["username"])
    # Then credentials from either are relayed
    url = new["urls"][0]
    assert await relay_round_trip(url, old["username"], old["credential"]) == b"echo:ping"
    assert await relay_round_trip(url, new["username"], new["credential"]) == b"echo:ping"
    # But a coturn that was not given the new secret first refuses the new credentials:
    # the order of the procedure (docs/operations.md) matters
    with coturn(tmp_path / "coturn-old", OLD_SECRET) as not_yet:
        url = not_yet.urls().split(",")[0]
        assert await refused_with(url, new["username"], new["credential"]) == 401
        assert await relay_round_trip(url, old["username"], old["credential"]) == b"echo:ping"


# --- who may ask ----------------------------------------------------------------------------


def test_an_unauthenticated_call_is_refused(api_for, org_a):
    response = api_for(org_a).get("/api/v1/calls/turn")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


def test_a_role_without_calls_use_is_refused(new_session, org_a):
    # Given a custom role that may message but not call
    slug = unique("nocalls")
    in_tenant(
        org_a,
        role_service.check_create_role,
        slug=slug,
        name="No calls " + slug,
        codes=["messaging.use"],
        actor=audit.Actor.system("tests"),
    )
    session = new_session(org_a, make_user(org_a, role=slug))
    # When its device asks for TURN credentials, then it is refused naming calls.use
    response = session.api.get("/api/v1/calls/turn")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert response.json()["permission"] == "calls.use"


def test_another_orgs_token_is_refused(new_session, org_a, org_b):
    # Given a device of org B, when it asks org A's host, then it is unknown there
    intruder = new_session(org_b)
    response = Api(intruder.api.server, host_of(org_a), intruder.token).get("/api/v1/calls/turn")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"
    assert "credential" not in response.text


def test_without_turn_configured_the_answer_is_503_turn_not_configured(
    new_session, org_a, tmp_path
):
    session = new_session(org_a)
    with server_with_env(tmp_path / "server.log", TURN_URLS="", TURN_SECRETS="") as bare:
        response = _session_on(bare, session).get("/api/v1/calls/turn")
        # Permission checks still come first
        anonymous = Api(bare, host_of(org_a)).get("/api/v1/calls/turn")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "turn_not_configured"
    assert anonymous.status_code == 401


def test_credentials_are_rate_limited_per_user(new_session, org_a, tmp_path):
    alice, bob = new_session(org_a), new_session(org_a)
    limits = f"{RATE_LIMITS_TEST},calls.turn.user=2/60"
    with server_with_env(tmp_path / "server.log", RATE_LIMITS=limits) as live:
        as_alice = _session_on(live, alice)
        assert [as_alice.get("/api/v1/calls/turn").status_code for _ in range(2)] == [200, 200]
        limited = as_alice.get("/api/v1/calls/turn")
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 0 < int(limited.headers["Retry-After"]) <= 60
        # And bob's budget is his own
        assert _session_on(live, bob).get("/api/v1/calls/turn").status_code == 200


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TURN_URLS": "turn:127.0.0.1:3478", "TURN_SECRETS": ""}, "set together"),
        ({"TURN_URLS": "", "TURN_SECRETS": "a-secret-value"}, "set together"),
        ({"TURN_URLS": "http://turn.example.com", "TURN_SECRETS": "a-secret-value"}, "not a turn"),
        ({"TURN_TTL_SECONDS": "5"}, "between 60 and 86400"),
        ({"TURN_TTL_SECONDS": "604800"}, "between 60 and 86400"),
    ],
)
def test_a_half_or_wrongly_configured_turn_stops_start_up(env, message):
    # The settings module itself refuses, so web, worker and manage.py all stop at once,
    # and the message never includes a secret.
    result = subprocess.run(
        [sys.executable, "-c", "import siphera.settings"],
        cwd=ROOT,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "a-secret-value" not in result.stderr
