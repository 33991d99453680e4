"""The fast path (siphera.fast_http) answers exactly as Django does.

Every request is sent twice, to the suite's server (fast path on) and to a second web
process on the same database and Redis with FAST_HTTP=false, and the two answers compared:
status, body (ids and times aside) and headers. Both processes' metrics say which path
served it. Also: a send through the fast path reaches the recipient's queue, another org's
host or ids get what Django gives, and a database outage is a 503, not a 500.
"""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from messaging.tests.helpers import b64, envelope, start_conversation
from siphera.tests.test_metrics import scrape, value
from tests.fixtures import Api, host_of, make_user, register_device, server_with_env

# Framing (a length or chunks) and what differs per request.
VOLATILE_HEADERS = {"date", "server", "x-request-id", "content-length", "transfer-encoding"}
VOLATILE_FIELDS = {"id", "seq", "ts"}


@pytest.fixture(scope="module")
def django_server(tmp_path_factory):
    with server_with_env(
        tmp_path_factory.mktemp("django-path") / "server.log", FAST_HTTP="false"
    ) as live:
        yield live


def answer(response: httpx.Response) -> tuple:
    headers = {k: v for k, v in response.headers.items() if k not in VOLATILE_HEADERS}
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if isinstance(body, dict):
        body = {k: ("*" if k in VOLATILE_FIELDS else v) for k, v in body.items()}
    return response.status_code, body, headers


def both(server, django_server, host: str, method: str, path: str, **kwargs):
    """The same request to each server (with its own client_id where the body has
    CLIENT_ID): (fast answer, Django answer), after checking they are the same."""
    answers = []
    for live in (server, django_server):
        sent = dict(kwargs)
        if isinstance(sent.get("json"), dict) and sent["json"].get("client_id") == "CLIENT_ID":
            sent["json"] = {**sent["json"], "client_id": str(uuid.uuid4())}
        headers = {"Host": host, **sent.pop("headers", {})}
        answers.append(
            httpx.request(method, f"{live.url}{path}", headers=headers, timeout=15, **sent)
        )
    fast, slow = answers
    assert answer(fast) == answer(slow), (fast.text, slow.text)
    return fast, slow


def served(live) -> dict:
    samples = scrape(live.url)
    return {
        outcome: value(samples, "siphera_fast_http_requests_total", route="send", outcome=outcome)
        for outcome in ("served", "declined")
    }


@pytest.fixture
def pair(new_session, org_a):
    alice, bob = new_session(org_a), new_session(org_a)
    conversation = start_conversation(alice, bob)
    return alice, bob, conversation["id"]


def send_path(conversation_id) -> str:
    return f"/api/v1/conversations/{conversation_id}/messages"


def bearer(session, **extra) -> dict:
    return {"Authorization": f"Bearer {session.token}", **extra}


def test_a_send_is_served_by_the_fast_path_and_reaches_the_recipient(server, django_server, pair):
    alice, bob, conversation_id = pair
    before = served(server)
    body = {"client_id": "CLIENT_ID", "body": b64(b"hello"), "envelopes": [envelope(bob)]}
    fast, slow = both(
        server,
        django_server,
        alice.api.host,
        "POST",
        send_path(conversation_id),
        json=body,
        headers=bearer(alice),
    )
    assert fast.status_code == 201
    after = served(server)
    assert after["served"] == before["served"] + 1
    assert served(django_server)["served"] == 0  # FAST_HTTP=false serves nothing itself
    queued = bob.api.get("/api/v1/messages").json()
    ids = {frame["id"] for frame in queued}
    assert {fast.json()["id"], slow.json()["id"]} <= ids
    mine = next(frame for frame in queued if frame["id"] == fast.json()["id"])
    assert mine["seq"] == fast.json()["seq"]
    assert mine["sender"]["user_id"] == str(alice.user.pk) if "sender" in mine else True


def test_a_retry_with_the_same_client_id_returns_the_first_message(server, pair):
    alice, _bob, conversation_id = pair
    body = {"client_id": str(uuid.uuid4()), "body": b64(b"once")}
    first = alice.api.post(send_path(conversation_id), json=body)
    again = alice.api.post(send_path(conversation_id), json=body)
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()


@pytest.mark.parametrize(
    "case",
    [
        "missing_client_id",
        "bad_base64",
        "empty",
        "unknown_conversation",
        "not_a_uuid",
        "missing_device",
        "extra_device",
        "too_large",
        "bad_json",
        "json_array",
        "text_plain",
        "query_string",
        "accept_html",
        "request_id",
        "charset_latin1",
        "accept_quality",
        "utf8_charset",
    ],
)
def test_errors_and_declined_requests_match_django(server, django_server, pair, case):
    alice, bob, conversation_id = pair
    path = send_path(conversation_id)
    headers = bearer(alice)
    body: dict | None = {"client_id": "CLIENT_ID", "body": b64(b"x")}
    content = None
    if case == "missing_client_id":
        body = {"body": b64(b"x")}
    elif case == "bad_base64":
        body["body"] = "***"
    elif case == "empty":
        body = {"client_id": "CLIENT_ID"}
    elif case == "unknown_conversation":
        path = send_path(uuid.uuid4())
    elif case == "not_a_uuid":
        path = send_path("not-a-uuid")
    elif case == "missing_device":
        body["envelopes"] = []
    elif case == "extra_device":
        body["envelopes"] = [envelope(bob), envelope(alice), {**envelope(bob), "device_id": 999}]
    elif case == "too_large":
        body["body"] = b64(os.urandom(256 * 1024 + 1))
    elif case == "bad_json":
        body, content = None, b'{"client_id": '
        headers["Content-Type"] = "application/json"
    elif case == "json_array":
        body, content = None, b"[]"
        headers["Content-Type"] = "application/json"
    elif case == "text_plain":
        body, content = None, b'{"client_id": "x"}'
        headers["Content-Type"] = "text/plain"
    elif case == "query_string":
        path += "?x=1"
    elif case == "accept_html":
        headers["Accept"] = "text/html"
    elif case == "request_id":
        headers["X-Request-ID"] = "abc-123"
    elif case in ("charset_latin1", "utf8_charset"):
        charset = "latin-1" if case == "charset_latin1" else "UTF-8"
        body, content = None, b'{"client_id": "CLIENT", "body": "eA=="}'
        content = content.replace(b"CLIENT", str(uuid.uuid4()).encode())
        headers["Content-Type"] = f"application/json; charset={charset}"
    elif case == "accept_quality":
        headers["Accept"] = "application/json;q=0.9, */*;q=0.1"
    kwargs = {"json": body} if body is not None else {"content": content}
    fast, slow = both(
        server, django_server, alice.api.host, "POST", path, headers=headers, **kwargs
    )
    if case == "request_id":
        assert fast.headers["x-request-id"] == slow.headers["x-request-id"] == "abc-123"
    if case in ("request_id", "query_string", "charset_latin1", "accept_quality", "utf8_charset"):
        assert fast.status_code == 201
    else:
        assert fast.status_code >= 400, fast.text


def test_tokens_hosts_and_roles_match_django(
    server, django_server, pair, new_session, org_a, org_b
):
    alice, _bob, conversation_id = pair
    body = {"client_id": "CLIENT_ID", "body": b64(b"x")}
    path = send_path(conversation_id)
    host_a, host_b = host_of(org_a), host_of(org_b)

    # A token of another org, at that org's host: no such device there.
    fast, _ = both(server, django_server, host_b, "POST", path, json=body, headers=bearer(alice))
    assert fast.status_code == 401 and fast.json()["error"]["code"] == "invalid_token"
    # Another org's member, at their own host, naming this org's conversation: 404.
    carol = new_session(org_b)
    fast, _ = both(server, django_server, host_b, "POST", path, json=body, headers=bearer(carol))
    assert fast.status_code == 404
    # A host no org answers.
    fast, _ = both(
        server, django_server, "nobody.localhost", "POST", path, json=body, headers=bearer(alice)
    )
    assert fast.status_code == 404 and fast.json()["error"]["code"] == "unknown_org"
    # A made-up token, and a malformed Authorization header (declined: Django answers).
    fast, _ = both(
        server,
        django_server,
        host_a,
        "POST",
        path,
        json=body,
        headers={"Authorization": "Bearer sd_nope"},
    )
    assert fast.status_code == 401
    fast, _ = both(
        server,
        django_server,
        host_a,
        "POST",
        path,
        json=body,
        headers={"Authorization": "Token abc"},
    )
    assert fast.status_code == 401
    # A role without messaging.use.
    admin = new_session(org_a, role="admin")
    role = f"nomsg{uuid.uuid4().hex[:8]}"
    made = admin.api.post(
        "/api/v1/roles", json={"slug": role, "name": "No messaging", "codes": ["portal.access"]}
    )
    assert made.status_code == 201, made.text
    desk = make_user(org_a, role=role)
    device_id, token, _keys = register_device(Api(server, host_a), desk.username)
    fast, _ = both(
        server,
        django_server,
        host_a,
        "POST",
        path,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    )
    assert fast.status_code == 403 and fast.json()["error"]["code"] == "forbidden"
    # A member who is not in the conversation.
    dave = new_session(org_a)
    fast, _ = both(server, django_server, host_a, "POST", path, json=body, headers=bearer(dave))
    assert fast.status_code == 404


def test_a_revoked_device_is_refused_at_once(server, django_server, pair):
    alice, _bob, conversation_id = pair
    body = {"client_id": "CLIENT_ID", "body": b64(b"x")}
    path = send_path(conversation_id)
    extra = register_device(alice.api.as_device(None), alice.user.username, name="phone")
    device_id, token = extra[0], extra[1]
    headers = {"Authorization": f"Bearer {token}"}
    fast, _ = both(server, django_server, alice.api.host, "POST", path, json=body, headers=headers)
    assert fast.status_code == 201
    revoked = alice.api.delete(f"/api/v1/devices/{device_id}")
    assert revoked.status_code in (200, 204), revoked.text
    fast, _ = both(server, django_server, alice.api.host, "POST", path, json=body, headers=headers)
    assert fast.status_code == 401


def test_rate_limits_apply_on_the_fast_path(tmp_path, pair):
    # bob has made no API call yet (alice's were spent from leases of the suite server's
    # larger budget: siphera.ratelimit)
    _alice, bob, conversation_id = pair
    with server_with_env(tmp_path / "limited.log", RATE_LIMITS="api.user=10/60") as live:
        api = Api(live, bob.api.host, bob.token)
        codes = [
            api.post(
                send_path(conversation_id),
                json={"client_id": str(uuid.uuid4()), "body": b64(b"x")},
            )
            for _ in range(12)
        ]
        assert served(live)["served"] == 12
    statuses = [r.status_code for r in codes]
    assert statuses[0] == 201 and 429 in statuses, statuses
    assert statuses == sorted(statuses)  # accepted until the budget is spent, then refused
    refused = codes[-1]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1


def test_me_matches_django(server, django_server, new_session, org_a, org_b):
    alice = new_session(org_a)
    before = scrape(server.url)
    fast, _ = both(
        server, django_server, alice.api.host, "GET", "/api/v1/me", headers=bearer(alice)
    )
    assert fast.status_code == 200
    assert fast.json()["user_id"] == str(alice.user.pk)
    assert fast.json()["device_id"] == alice.device_id
    assert fast.json()["org"]["slug"] == org_a.slug
    after = scrape(server.url)
    key = ("siphera_fast_http_requests_total", frozenset({("route", "me"), ("outcome", "served")}))
    assert after[key] == before.get(key, 0) + 1
    for headers in (
        {"Authorization": "Bearer sph_d_unknown"},
        {},
        {"Accept": "text/html"},
        {"Content-Type": "text/plain"},
    ):
        fast, _ = both(
            server,
            django_server,
            alice.api.host,
            "GET",
            "/api/v1/me",
            headers={**bearer(alice), **headers} if "Authorization" not in headers else headers,
        )
    # Another org's host with this org's token; HEAD; a body on GET; a query string.
    fast, _ = both(
        server, django_server, host_of(org_b), "GET", "/api/v1/me", headers=bearer(alice)
    )
    assert fast.status_code == 401
    both(server, django_server, alice.api.host, "HEAD", "/api/v1/me", headers=bearer(alice))
    both(
        server,
        django_server,
        alice.api.host,
        "GET",
        "/api/v1/me",
        headers=bearer(alice),
        content=b"{}",
    )
    both(server, django_server, alice.api.host, "GET", "/api/v1/me?x=1", headers=bearer(alice))


def test_two_orgs_alternating_on_one_database_thread_never_see_each_other(
    tmp_path, new_session, org_a, org_b
):
    """Every fast-path request of the process runs on the same connection: the org of each
    request is its own, also right after one that failed inside its transaction."""
    from messaging.models import Message
    from siphera.tenancy import in_tenant

    a1, a2 = new_session(org_a), new_session(org_a)
    b1, b2 = new_session(org_b), new_session(org_b)
    conv_a = start_conversation(a1, a2)["id"]
    conv_b = start_conversation(b1, b2)["id"]
    with server_with_env(tmp_path / "one-thread.log", WS_DB_THREADS="1") as live:
        apis = {
            "a": (Api(live, host_of(org_a), a1.token), conv_a, a2, org_a),
            "b": (Api(live, host_of(org_b), b1.token), conv_b, b2, org_b),
        }
        for round_ in range(4):
            for name, (api, conversation, peer, org) in apis.items():
                me = api.get("/api/v1/me").json()
                assert me["org"]["slug"] == org.slug
                sent = api.post(
                    send_path(conversation),
                    json={"client_id": str(uuid.uuid4()), "body": b64(name.encode())},
                )
                assert sent.status_code == 201, sent.text
                assert sent.json()["seq"] == round_ + 1
                # Fails inside the send's transaction (an unknown device): rolled back.
                failed = api.post(
                    send_path(conversation),
                    json={
                        "client_id": str(uuid.uuid4()),
                        "body": b64(b"x"),
                        "envelopes": [{**envelope(peer), "device_id": 999}],
                    },
                )
                assert failed.status_code in (409, 410), failed.text
                other = conv_b if name == "a" else conv_a
                crossed = api.post(
                    send_path(other), json={"client_id": str(uuid.uuid4()), "body": b64(b"x")}
                )
                assert crossed.status_code == 404, crossed.text
    for org, conversation, body in ((org_a, conv_a, b"a"), (org_b, conv_b, b"b")):
        bodies = in_tenant(
            org,
            lambda c=conversation: list(
                Message.objects.filter(conversation_id=c).values_list("body", flat=True)
            ),
        )
        assert [bytes(b) for b in bodies] == [body] * 4


def test_a_busy_database_is_a_503_after_the_pool_timeout_not_an_endless_wait(
    tmp_path, new_session, org_a
):
    import threading

    import psycopg

    from tests.fixtures import test_database_url

    alice, bob = new_session(org_a), new_session(org_a)
    conversation = start_conversation(alice, bob)["id"]
    with server_with_env(
        tmp_path / "busy.log", WS_DB_THREADS="1", DATABASE_POOL_TIMEOUT_SECONDS="1"
    ) as live:
        api = Api(live, alice.api.host, alice.token)
        assert api.get("/api/v1/me").status_code == 200  # host and token now cached
        with psycopg.connect(test_database_url()) as locker:
            locker.execute(
                f'SELECT 1 FROM "{org_a.schema_name}".messaging_conversation'
                " WHERE id = %s FOR UPDATE",
                [conversation],
            )
            answers = []
            held = threading.Thread(
                target=lambda: answers.append(
                    api.post(
                        send_path(conversation),
                        json={"client_id": str(uuid.uuid4()), "body": b64(b"x")},
                    )
                )
            )
            held.start()  # takes the only database thread and waits for the row lock
            try:
                refused = None
                for _ in range(50):  # until the send holds the thread
                    refused = api.get("/api/v1/me")
                    if refused.status_code == 503:
                        break
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"]["code"] == "database_unavailable"
                assert refused.headers["Retry-After"] == "5"
            finally:
                locker.rollback()  # the lock goes: the held send goes through
            held.join(30)
        assert answers and answers[0].status_code == 201, answers
        assert api.get("/api/v1/me").status_code == 200


async def test_a_flood_of_rest_sends_leaves_the_sockets_database_threads_free(
    tmp_path, new_session, org_a
):
    # Given two database threads, of which the fast path may keep one busy, and a send
    # holding it (it waits for a row lock), when more sends arrive, then they wait their
    # turn outside the threads: a socket's frame is still answered at once, and every
    # send is stored once the lock goes.
    import asyncio
    import threading

    import psycopg

    from tests.fixtures import test_database_url
    from tests.ws import authed_socket, recv_type, send

    alice, bob = new_session(org_a), new_session(org_a)
    conversation = start_conversation(alice, bob)["id"]
    with server_with_env(
        tmp_path / "flood.log",
        WS_DB_THREADS="2",
        FAST_HTTP_DB_CALLS="1",
        DATABASE_POOL_TIMEOUT_SECONDS="60",
    ) as live:
        api = Api(live, alice.api.host, alice.token)
        assert api.get("/api/v1/me").status_code == 200
        ws = await authed_socket(live, bob, live=True)
        answers: list[httpx.Response] = []

        def post() -> None:
            body = {"client_id": str(uuid.uuid4()), "body": b64(b"x")}
            answers.append(api.post(send_path(conversation), json=body))

        with psycopg.connect(test_database_url(), autocommit=False) as locker:
            locker.execute(
                f'SELECT 1 FROM "{org_a.schema_name}".messaging_conversation'
                " WHERE id = %s FOR UPDATE",
                [conversation],
            )
            senders = [threading.Thread(target=post) for _ in range(5)]
            try:
                senders[0].start()
                await asyncio.to_thread(_until_waiting_for_a_lock, locker)
                for sender in senders[1:]:
                    sender.start()
                await asyncio.sleep(1)  # the four arrive and wait for the fast path's turn
                await send(ws, {"type": "devices", "ref": "free"})
                listed = await recv_type(ws, "devices", timeout=15)
                assert listed["ref"] == "free"
                assert answers == []  # nothing got past the lock meanwhile
            finally:
                locker.rollback()
            for sender in senders:
                await asyncio.to_thread(sender.join, 60)
        await ws.close()
    assert sorted(a.status_code for a in answers) == [201] * 5, [a.text for a in answers]
    assert sorted(a.json()["seq"] for a in answers) == [1, 2, 3, 4, 5]


def _until_waiting_for_a_lock(locker) -> None:
    """Until a session of this test database waits for a lock (the held send)."""
    import time

    import psycopg

    from tests.fixtures import test_database_url

    with psycopg.connect(test_database_url(), autocommit=True) as watcher:
        for _ in range(300):
            (waiting,) = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if waiting:
                return
            time.sleep(0.1)
    raise AssertionError("the send never waited for the row lock")


@pytest.mark.parametrize(
    "env",
    [
        {"FAST_HTTP_DB_CALLS": "0"},
        {"WS_DB_THREADS": "4", "FAST_HTTP_DB_CALLS": "5"},
        {"WS_DB_THREADS": "0"},
    ],
    ids=["no-calls", "more-calls-than-threads", "no-threads"],
)
def test_the_server_refuses_to_start_on_a_database_thread_budget_that_cannot_work(env, tmp_path):
    from siphera.tests.test_secret_key import start_server

    started = start_server(tmp_path, **env)
    assert started.returncode != 0
    output = started.stdout + started.stderr
    assert "FAST_HTTP_DB_CALLS between 1 and WS_DB_THREADS" in output, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
