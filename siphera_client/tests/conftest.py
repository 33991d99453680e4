"""Fixtures for the reference client's tests: real clients against the real server."""

from __future__ import annotations

import itertools

import pytest

from calls.tests.coturn import turn_deployment  # noqa: F401  (a fixture: coturn + server)
from siphera_client.client import Client
from tests.fixtures import PASSWORD, host_of

PASSPHRASE = "local state passphrase"


@pytest.fixture
async def make_client(server, tmp_path):
    """Factory: register a new device of `user` (a tests.fixtures.make_user user) through
    the reference client, its state in a file of its own. Closed at teardown."""
    made: list[Client] = []
    numbers = itertools.count(1)

    async def make(org, user, name: str = "laptop", *, connect: bool = True, **kwargs) -> Client:
        client = await Client.register(
            server=server.url,
            host=host_of(org),
            username=user.username,
            password=PASSWORD,
            state_path=tmp_path / f"{user.username}-{name}-{next(numbers)}.json",
            passphrase=PASSPHRASE,
            device_name=name,
            **kwargs,
        )
        made.append(client)
        if connect:
            await client.connect()
        return client

    yield make
    for client in made:
        await client.close()
