"""Where a client connects from, behind a trusted proxy (siphera.net): the address that
devices' "last seen", portal sessions, audit entries and rate limits use. Some proxies
write the client's port into X-Forwarded-For (`203.0.113.9:4711`, `[2001:db8::7]:443`);
an entry that is no address at all is ignored for the peer's (and no address is noted when
that is none either). A client behind either must still register devices and sign in its
sockets (they were a 400 and an `internal_error`)."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect

from orgs.accounts.models import Device
from siphera.net import address
from siphera.tenancy import in_tenant
from tests.fixtures import Api, DeviceKeys, host_of, login_grant, make_user, server_with_env
from tests.ws import recv, send


@pytest.mark.parametrize(
    ("written", "meant"),
    [
        ("203.0.113.9", "203.0.113.9"),
        (" 203.0.113.9:4711 ", "203.0.113.9"),
        ("2001:db8::7", "2001:db8::7"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        ("[2001:DB8::7]", "2001:db8::7"),
        ("garbage", None),
        ("1.2.3.4:5:6", None),
        ("", None),
        (None, None),
        ("unknown", None),
    ],
)
def test_an_address_is_read_with_or_without_the_proxys_port(written, meant):
    assert address(written) == meant


@pytest.fixture(scope="module")
def proxied(_database, tmp_path_factory):
    """A web process that trusts one proxy's X-Forwarded-For."""
    log = tmp_path_factory.mktemp("proxied") / "server.log"
    with server_with_env(log, TRUSTED_PROXY_COUNT="1") as live:
        yield live


def _register(api: Api, username: str, forwarded: str):
    grant = login_grant(api, username)
    return api.post(
        "/api/v1/devices",
        json=DeviceKeys.generate().registration(),
        headers={"Authorization": f"Grant {grant}", "X-Forwarded-For": forwarded},
    )


def _last_seen(org, user, device_id) -> str | None:
    return in_tenant(
        org,
        lambda: Device.objects.values_list("last_seen_ip", flat=True).get(
            user=user, device_id=device_id
        ),
    )


async def _socket_auth(server, org, token: str, forwarded: str) -> dict:
    async with connect(
        f"ws://{host_of(org)}:{server.port}/ws/v1",
        host="127.0.0.1",
        port=server.port,
        additional_headers={"X-Forwarded-For": forwarded},
        open_timeout=10,
    ) as ws:
        await send(ws, {"type": "auth", "token": token})
        return await recv(ws, timeout=10)


@pytest.mark.parametrize(
    ("forwarded", "seen"),
    [
        ("203.0.113.9:4711", "203.0.113.9"),
        ("[2001:db8::7]:443", "2001:db8::7"),
        # Not an address: none is noted (uvicorn, which trusts a proxy on 127.0.0.1 as
        # its FORWARDED_ALLOW_IPS says, has put the same entry in the socket's peer).
        ("garbage", None),
    ],
)
def test_devices_register_and_sockets_sign_in_behind_a_proxy_writing_ports(
    org_a, proxied, forwarded, seen
):
    user = make_user(org_a)
    api = Api(proxied, host_of(org_a))
    registered = _register(api, user.username, forwarded)
    assert registered.status_code == 201, registered.text
    device_id, token = registered.json()["device_id"], registered.json()["token"]
    assert _last_seen(org_a, user, device_id) == seen

    in_tenant(org_a, lambda: Device.objects.filter(user=user).update(last_seen_ip=None))
    first = asyncio.run(_socket_auth(proxied, org_a, token, forwarded))
    assert first["type"] == "ready", first
    assert _last_seen(org_a, user, device_id) == seen
