"""Pooled PostgreSQL connections never carry one org's schema into another org's request
(PITFALLS 26): a connection keeps the search_path of its last user, and django-tenants
skips `SET search_path` when its marker says the schema is already set, so the marker
must be cleared whenever a connection goes back to the pool, after an error too."""

from __future__ import annotations

import concurrent.futures
import uuid

import psycopg
import pytest

from tests import fixtures
from tests.fixtures import Api, host_of, make_user, server_with_env


def backends(app_name: str) -> set[int]:
    """PostgreSQL backends (pids) the server opened, by the application_name it sends."""
    with psycopg.connect(fixtures.test_database_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [app_name]
        ).fetchall()
    return {pid for (pid,) in rows}


@pytest.fixture
def small_pool(tmp_path):
    """A server whose pool holds at most two connections (one for HTTP, one for the
    socket threads), tagged with an application_name of its own; statements wait for a
    lock at most a second (so a test can make one fail inside a transaction)."""
    app_name = f"pool-test-{uuid.uuid4().hex[:12]}"
    with server_with_env(
        tmp_path / "server.log",
        DATABASE_POOL_SIZE="1",
        WS_DB_THREADS="1",
        PGAPPNAME=app_name,
        PGOPTIONS="-c lock_timeout=1000",
    ) as live:
        yield live, app_name


def devices_seen(api: Api) -> set[str]:
    response = api.get("/api/v1/devices")
    assert response.status_code == 200, response.text
    return {device["name"] for device in response.json()}


def test_two_orgs_alternating_on_every_pooled_connection_each_read_only_their_rows(
    small_pool, org_a, org_b, new_session
):
    live, app_name = small_pool
    a_name, b_name = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    alice = new_session(org_a, name=a_name)
    carol = new_session(org_b, name=b_name)
    apis = {
        a_name: Api(live, host_of(org_a), alice.token),
        b_name: Api(live, host_of(org_b), carol.token),
    }

    def round_(i: int) -> tuple[str, set[str]]:
        name = a_name if i % 2 == 0 else b_name
        return name, devices_seen(apis[name])

    # Four requests at a time over a pool of one HTTP connection: every request waits for
    # the connection the other org's request just gave back.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        first = list(pool.map(round_, range(40)))
        opened = backends(app_name)
        second = list(pool.map(round_, range(40, 80)))
    for name, seen in first + second:
        assert seen == {name}, f"{name}'s request read {seen}"
    # The connections were reused, not replaced: the same (at most two) backends served
    # all 80 requests.
    assert 1 <= len(opened) <= 2
    assert backends(app_name) == opened


def test_a_request_that_fails_inside_a_transaction_leaves_its_pooled_connection_clean(
    small_pool, org_a, org_b, new_session
):
    live, app_name = small_pool
    a_name, b_name = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    alice = new_session(org_a, name=a_name)
    bob = make_user(org_a)
    carol = new_session(org_b, name=b_name)
    api_a = Api(live, host_of(org_a), alice.token)
    api_b = Api(live, host_of(org_b), carol.token)
    assert devices_seen(api_a) == {a_name} and devices_seen(api_b) == {b_name}
    group = {"kind": "group", "members": [str(bob.pk)]}

    def conversations(api: Api) -> list[str]:
        response = api.get("/api/v1/conversations")
        assert response.status_code == 200, response.text
        return [c["id"] for c in response.json()]

    before = conversations(api_a)
    # Given org A's member table locked by another session, a group creation (conversation
    # row, then member rows, in one transaction) fails half way when its lock wait times out
    with psycopg.connect(fixtures.test_database_url()) as locker:
        locker.execute(
            f'LOCK TABLE "{org_a.schema_name}".messaging_member IN ACCESS EXCLUSIVE MODE'
        )
        failed = api_a.post("/api/v1/conversations", json=group)
        locker.rollback()
    # Then the client is told to retry, and nothing of the group was written
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"]["code"] == "database_unavailable"
    assert conversations(api_a) == before
    # And the connection that saw the error serves both orgs correctly afterwards
    for _ in range(5):
        assert devices_seen(api_b) == {b_name}
        assert devices_seen(api_a) == {a_name}
    created = api_a.post("/api/v1/conversations", json=group)
    assert created.status_code == 201, created.text
    assert created.json()["id"] in conversations(api_a)
    assert created.json()["id"] not in conversations(api_b)
    assert 1 <= len(backends(app_name)) <= 2
