"""The org's activity figures (GET /api/v1/org/activity, the portal dashboard's): users
seen lately, messages per UTC day, and the sockets open now in every web process."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from types import SimpleNamespace

from django.utils import timezone

from messaging.models import Message
from messaging.services import stats
from messaging.tests.helpers import send_body, start_conversation
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, make_user, unique
from tests.ws import authed_socket, wait_closed


async def sockets_counted(org, sockets: int, *, within: float = 20.0) -> tuple[int, int]:
    """Wait until the presence store counts `sockets` open sockets of `org` (a socket
    registers there in the background just after its `ready` frame)."""
    from orgs.services import presence

    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = await asyncio.to_thread(in_tenant, org, presence.connected_now)
        if found and found[0] == sockets:
            return found
        assert asyncio.get_running_loop().time() < deadline, found
        await asyncio.sleep(0.1)


def activity(session) -> dict:
    response = session.api.get("/api/v1/org/activity")
    assert response.status_code == 200, response.text
    return response.json()


def test_messages_are_counted_per_utc_day_without_events(server, new_session):
    org = create_org(unique("act"))
    alice, bob = new_session(org, role="admin"), new_session(org)
    conversation = start_conversation(alice, bob)["id"]
    for _ in range(3):
        assert send_body(alice, conversation).status_code == 201
    # Two of them moved to three days ago (metadata only: what the chart counts)
    today = timezone.now().astimezone(dt.UTC).date()
    three_days_ago = timezone.now() - dt.timedelta(days=3)

    def backdate():
        ids = list(Message.objects.filter(kind=Message.MESSAGE).values_list("pk", flat=True)[:2])
        Message.objects.filter(pk__in=ids).update(created_at=three_days_ago)

    in_tenant(org, backdate)
    days = {d["date"]: d["count"] for d in activity(alice)["messages_per_day"]}
    assert len(days) == stats.CHART_DAYS
    assert days[today.isoformat()] == 1
    assert days[three_days_ago.astimezone(dt.UTC).date().isoformat()] == 2
    assert sum(days.values()) == 3  # the conversation's creation event is not counted
    # Out-of-range windows are clamped, never an error
    clamped = in_tenant(org, stats.messages_per_day, 10_000)
    assert len(clamped) == stats.MAX_DAYS
    assert len(in_tenant(org, stats.messages_per_day, -5)) == 1


def test_active_users_are_those_seen_lately(server, new_session):
    org = create_org(unique("act"))
    make_user(org)  # never seen: not active
    watcher = new_session(org, role="admin")  # registered a device: logged in, seen
    body = activity(watcher)
    assert body["active_days"] == 7
    assert body["active_users"] == 1


async def test_open_sockets_are_counted_across_two_web_processes(
    server, second_server, new_session
):
    org = create_org(unique("act"))
    admin, alice = new_session(org, role="admin"), new_session(org)
    phone = new_session(org, alice.user, name="phone")
    assert (activity(admin)["open_sockets"], activity(admin)["connected_users"]) == (0, 0)
    # Alice's laptop on one web process, her phone on the other
    one = await authed_socket(server, alice)
    two = await authed_socket(second_server, phone)
    other_org = create_org(unique("act"))
    stranger = new_session(other_org)
    three = await authed_socket(server, stranger)  # another org's: not counted
    await sockets_counted(other_org, 1)
    try:
        await sockets_counted(org, 2)
        body = await asyncio.to_thread(activity, admin)
        assert (body["open_sockets"], body["connected_users"]) == (2, 1)
        # The same answer through the other process
        admin.api = admin.api.__class__(second_server, admin.api.host, admin.token)
        body = await asyncio.to_thread(activity, admin)
        assert (body["open_sockets"], body["connected_users"]) == (2, 1)
    finally:
        await two.close()
    await wait_closed(two, timeout=5)
    await sockets_counted(org, 1)
    body = await asyncio.to_thread(activity, admin)
    assert (body["open_sockets"], body["connected_users"]) == (1, 1)
    await one.close()
    await three.close()
    # Counting reads only the org's connected users, and forgets those who left
    await sockets_counted(org, 0)
    await sockets_counted(other_org, 0)
    from orgs.services import presence_store

    for each in (org, other_org):
        assert presence_store._client().scard(presence_store._key("c", each.schema_name)) == 0


def test_members_without_portal_access_are_refused(server, new_session):
    org = create_org(unique("act"))
    member = new_session(org)
    response = member.api.get("/api/v1/org/activity")
    assert response.status_code == 403
    assert response.json()["permission"] == "portal.access"


def test_with_redis_gone_the_counts_say_unknown_instead_of_failing(tmp_path, org_a):
    from admin_portal.tests.conftest import Portal
    from tests.fixtures import Api, RedisProcess, host_of, register_device, server_with_env

    redis_process = RedisProcess(tmp_path)
    redis_process.start()
    try:
        with server_with_env(
            tmp_path / "server.log",
            REDIS_URL=redis_process.url,
            CELERY_BROKER_URL=redis_process.url,
        ) as live:
            admin = make_user(org_a, role="admin")
            api = Api(live, host_of(org_a))
            _, token, _ = register_device(api, admin.username)
            browser = Portal(live, org_a)
            assert browser.login(admin.username).status_code == 302
            redis_process.stop()
            body = api.as_device(token).get("/api/v1/org/activity")
            assert body.status_code == 200, body.text
            assert body.json()["open_sockets"] is None
            assert body.json()["connected_users"] is None
            page = browser.get("/portal/")
            assert page.status_code == 200, page.text[:300]
            assert 'data-testid="open-sockets">—<' in page.text
    finally:
        redis_process.stop()


def test_the_counts_are_kept_for_a_while_and_the_socket_count_stays_live(tmp_path):
    """With DASHBOARD_CACHE_SECONDS the database's counts come from the process's copy
    until it expires (the front page of the portal must not count 14 days of messages on
    every view); the open sockets are counted at each request."""
    from tests.fixtures import Api, host_of, register_device, server_with_env

    org = create_org(unique("act"))
    alice, bob = make_user(org, role="admin"), make_user(org)
    with server_with_env(tmp_path / "server.log", DASHBOARD_CACHE_SECONDS="3") as live:
        api = Api(live, host_of(org))
        device_id, token, _ = register_device(api, alice.username)
        admin = api.as_device(token)
        first = admin.get("/api/v1/org/activity").json()
        conversation = admin.post(
            "/api/v1/conversations", json={"kind": "direct", "members": [str(bob.pk)]}
        ).json()["id"]
        sent = admin.post(
            f"/api/v1/conversations/{conversation}/messages",
            json={"client_id": str(uuid.uuid4()), "body": "AAAA"},
        )
        assert sent.status_code == 201, sent.text

        def total(body):
            return sum(day["count"] for day in body["messages_per_day"])

        # Within the window: the same counts (the message is not in them yet)
        assert total(admin.get("/api/v1/org/activity").json()) == total(first) == 0

        async def with_a_socket_open():
            device = SimpleNamespace(org=org, token=token, device_id=device_id)
            ws = await authed_socket(live, device)
            try:
                await sockets_counted(org, 1)
                return await asyncio.to_thread(lambda: admin.get("/api/v1/org/activity").json())
            finally:
                await ws.close()

        assert asyncio.run(with_a_socket_open())["open_sockets"] == 1  # live, not cached
        # After it: counted again
        deadline = time.monotonic() + 30
        while total(admin.get("/api/v1/org/activity").json()) != 1:
            assert time.monotonic() < deadline, "the counts were never refreshed"
            time.sleep(0.5)
