"""Prometheus metrics (/metrics): real servers, real sockets and a real Celery worker;
every answer is read with prometheus-client's own text-format parser."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from messaging.tests.helpers import start_conversation
from tests.fixtures import ROOT, host_of, server_with_env, worker_with_env
from tests.ws import authed_socket, recv, recv_type, send


def _token() -> str:
    return os.environ["METRICS_TOKEN"]


def scrape(url: str, *, token: str | None = None, host: str | None = None, **headers) -> dict:
    """GET /metrics and parse it: {(sample name, frozenset(labels)): value}."""
    response = _get(url, token=token or _token(), host=host, **headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _get(url, *, token=None, host=None, **headers):
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if host:
        headers["Host"] = host
    return httpx.get(f"{url}/metrics", headers=headers, timeout=10)


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _wait_until(check, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


# --- what the relay counts ----------------------------------------------------------------


async def test_messages_between_two_real_clients_move_sent_delivered_acked_and_latency(
    server, org_a, new_session
):
    alice, bob = new_session(org_a), new_session(org_a)
    conversation = start_conversation(alice, bob)["id"]
    before = scrape(server.url)
    n = 5
    sender = await authed_socket(server, alice, live=True)
    receiver = await authed_socket(server, bob, live=True)
    try:
        during = scrape(server.url)
        assert (
            value(during, "siphera_websockets_open") == value(before, "siphera_websockets_open") + 2
        )
        for i in range(n):
            await send(
                sender,
                {
                    "type": "send",
                    "ref": i,
                    "conversation": conversation,
                    "client_id": str(uuid.uuid4()),
                    "body": "Y2lwaGVydGV4dA==",
                },
            )
            await recv_type(sender, "sent")
        ids = [(await recv_type(receiver, "message"))["id"] for _ in range(n)]
        await send(receiver, {"type": "ack", "ids": ids})
        await send(receiver, {"type": "ping", "ref": "after-ack"})
        await recv_type(receiver, "pong")  # frames run in order: the ack is done
    finally:
        await sender.close()
        await receiver.close()

    def sockets_closed() -> bool:
        now = scrape(server.url)
        return value(now, "siphera_websockets_open") == value(before, "siphera_websockets_open")

    assert _wait_until(sockets_closed)
    after = scrape(server.url)

    def moved(name: str) -> float:
        return value(after, name) - value(before, name)

    assert moved("siphera_messages_sent_total") == n
    assert moved("siphera_messages_delivered_total") == n
    assert moved("siphera_messages_acked_total") == n
    # Bob's socket had drained its backlog: every one of his deliveries was timed.
    assert moved("siphera_message_delivery_seconds_count") == n
    assert moved("siphera_message_delivery_seconds_sum") >= 0
    inf = value(after, "siphera_message_delivery_seconds_bucket", le="+Inf") - value(
        before, "siphera_message_delivery_seconds_bucket", le="+Inf"
    )
    assert inf == n
    # Every request of this test (the API calls, the scrapes) was counted by status class.
    assert value(after, "siphera_http_requests_total", status="2xx") > value(
        before, "siphera_http_requests_total", status="2xx"
    )


def test_queue_depth_counts_what_an_offline_device_has_not_acked(server, org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    conversation = start_conversation(alice, bob)["id"]
    for _ in range(3):
        response = alice.api.post(
            f"/api/v1/conversations/{conversation}/messages",
            json={"client_id": str(uuid.uuid4()), "body": "Y2lwaGVydGV4dA=="},
        )
        assert response.status_code == 201, response.text
    # PostgreSQL's statistics reach the gauge within seconds; Bob has 3 queued at least.
    assert _wait_until(
        lambda: value(scrape(server.url), "siphera_message_queue_depth") >= 3, timeout=30
    )
    queued = bob.api.get("/api/v1/messages")
    assert queued.status_code == 200 and len(queued.json()) == 3
    before = scrape(server.url)
    bob.api.post("/api/v1/messages/ack", json={"ids": [m["id"] for m in queued.json()]})
    after = scrape(server.url)
    assert (
        value(after, "siphera_messages_acked_total") - value(before, "siphera_messages_acked_total")
        == 3
    )


# --- who may scrape, and where -------------------------------------------------------------


def test_metrics_are_a_404_without_the_token_or_with_a_wrong_one(server):
    for headers in ({}, {"Authorization": f"Bearer {_token()}x"}, {"Authorization": _token()}):
        response = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
        assert response.status_code == 404
        assert "siphera_" not in response.text
        # The same answer as any path on a host no org answers: nothing is advertised.
        other = httpx.get(f"{server.url}/no-such-path", headers=headers, timeout=10)
        assert (response.status_code, response.json()) == (other.status_code, other.json())


def test_hostile_credentials_and_methods_get_the_404_never_a_500(server):
    for authorization, expected in (
        ("Bearer \xe9\xff" + _token(), 404),  # not ASCII (sent as Latin-1 bytes)
        ("Bearer " + "x" * 6000, 404),
        ("Bearer", 404),
        ("Basic " + _token(), 404),
        ("bearer  " + _token(), 200),  # any case, extra spaces: accepted
    ):
        response = httpx.get(
            f"{server.url}/metrics",
            headers=[(b"Authorization", authorization.encode("latin-1"))],
            timeout=10,
        )
        assert response.status_code == expected, authorization[:40]
    posted = httpx.post(
        f"{server.url}/metrics", headers={"Authorization": f"Bearer {_token()}"}, timeout=10
    )
    assert posted.status_code == 404


def test_an_org_host_never_serves_metrics_even_with_the_token(server, org_a, org_b):
    for org in (org_a, org_b):
        response = _get(server.url, token=_token(), host=host_of(org))
        assert response.status_code == 404
        assert "siphera_" not in response.text


def test_metrics_are_not_in_the_openapi_schema(server, org_a):
    schema = httpx.get(
        f"{server.url}/api/v1/schema/?format=json", headers={"Host": host_of(org_a)}, timeout=10
    ).json()
    assert not [p for p in schema["paths"] if "metrics" in p]


def test_the_permission_registry_lists_metrics_as_an_operator_route():
    from orgs import perm_registry
    from orgs.api.permissions import OPERATOR
    from orgs.roles import Perm

    routes = {e.route: e for e in perm_registry.operator_routes()}
    assert routes["metrics"].requires == OPERATOR
    # No role of any org holds it: an org's every code together does not open it.
    assert not routes["metrics"].allows(frozenset(Perm))


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """Two web processes (WEB_WORKERS=2) behind one trusted proxy, serving metrics to
    10.0.0.0/8 only (no token), with low per-IP request and per-user frame limits."""
    from siphera.settings_test import RATE_LIMITS_TEST

    log_path = tmp_path_factory.mktemp("metrics") / "server.log"
    with server_with_env(
        log_path,
        WEB_WORKERS="2",
        METRICS_TOKEN="",
        METRICS_ALLOWED_NETWORKS="10.0.0.0/8",
        TRUSTED_PROXY_COUNT="1",
        RATE_LIMITS=f"{RATE_LIMITS_TEST},http.ip=3/600,ws.frame.user=5/600",
    ) as live:
        yield live


def test_an_allowed_network_may_scrape_and_others_get_404(guarded):
    inside = {"X-Forwarded-For": "10.1.2.3"}
    assert _get(guarded.url, **inside).status_code == 200
    outside = _get(guarded.url, **{"X-Forwarded-For": "192.0.2.7"})
    assert outside.status_code == 404
    # Without the token setting, a bearer token opens nothing either.
    assert _get(guarded.url, token=_token(), **{"X-Forwarded-For": "192.0.2.7"}).status_code == 404


def test_requests_answered_by_either_web_process_add_up_by_status_class(guarded, org_a):
    inside = {"X-Forwarded-For": "10.1.2.3"}
    before = scrape(guarded.url, token="-", **inside)
    for i in range(6):  # org host, unknown org host: 404s in whichever process answers
        response = httpx.get(
            f"{guarded.url}/nowhere-{i}", headers={"Host": "nobody.invalid"}, timeout=10
        )
        assert response.status_code == 404
    # Several scrapes (each answered by either process) all see the 6 from both processes.
    for _ in range(4):
        after = scrape(guarded.url, token="-", **inside)
        moved = value(after, "siphera_http_requests_total", status="4xx") - value(
            before, "siphera_http_requests_total", status="4xx"
        )
        assert moved == 6


def test_a_rate_limit_refusal_is_counted_by_the_limits_name(guarded, org_a):
    inside = {"X-Forwarded-For": "10.1.2.3"}
    before = scrape(guarded.url, token="-", **inside)
    client_ip = f"203.0.113.{uuid.uuid4().int % 250 + 1}"
    answers = [
        httpx.get(
            f"{guarded.url}/api/v1/me",
            headers={"Host": host_of(org_a), "X-Forwarded-For": client_ip},
            timeout=10,
        ).status_code
        for _ in range(5)
    ]
    assert answers.count(429) == 2, answers
    after = scrape(guarded.url, token="-", **inside)
    refused = value(after, "siphera_rate_limit_refusals_total", limit="http.ip") - value(
        before, "siphera_rate_limit_refusals_total", limit="http.ip"
    )
    assert refused == 2
    assert (
        value(after, "siphera_http_requests_total", status="4xx")
        - value(before, "siphera_http_requests_total", status="4xx")
        == 5
    )  # 3 x 401 (no token) and 2 x 429


async def test_a_refused_socket_frame_is_counted_by_the_limits_name(guarded, org_a, new_session):
    inside = {"X-Forwarded-For": "10.1.2.3"}
    user = new_session(org_a)  # registered through the session's server: same database
    before = scrape(guarded.url, token="-", **inside)
    ws = await authed_socket(guarded, user)
    try:
        codes = []
        for i in range(8):
            await send(ws, {"type": "ping", "ref": i})
            reply = await recv(ws)
            while reply["type"] not in ("pong", "error"):
                reply = await recv(ws)
            codes.append(reply.get("code", "pong"))
    finally:
        await ws.close()
    assert codes.count("rate_limited") == 3, codes
    after = scrape(guarded.url, token="-", **inside)
    refused = value(after, "siphera_rate_limit_refusals_total", limit="ws.frame.user") - value(
        before, "siphera_rate_limit_refusals_total", limit="ws.frame.user"
    )
    assert refused == 3


# --- the Celery worker's own endpoint ------------------------------------------------------


def test_a_celery_task_run_and_a_failure_show_in_the_workers_metrics(tmp_path):
    from siphera.celery import app
    from tests.fixtures import _free_port

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    task = "orgs.tasks.dispatch_purge_expired_grants"
    with worker_with_env(
        tmp_path / "worker.log",
        pool=("--pool", "prefork", "--concurrency", "2"),  # counts from 2 processes add up
        CELERY_METRICS_PORT=str(port),
    ) as queue:
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 404  # no token
        for _ in range(3):
            app.send_task(task, queue=queue)
        app.send_task(task, args=["unexpected"], queue=queue)  # a TypeError in the worker

        def counted() -> bool:
            samples = scrape(url)
            runs = value(samples, "siphera_celery_task_seconds_count", task=task, state="success")
            failed = value(samples, "siphera_celery_task_failures_total", task=task)
            return runs == 3 and failed == 1

        assert _wait_until(counted, 60), (
            [(k, v) for k, v in scrape(url).items() if "celery" in k[0]],
            (tmp_path / "worker.log").read_text()[-3000:],
        )
        samples = scrape(url)
        assert value(samples, "siphera_celery_task_seconds_count", task=task, state="failure") == 1
        # The worker reports its tasks; the relay's figures are the web's to report.
        assert not [k for k in samples if k[0] == "siphera_message_queue_depth"]


# --- the dashboard and the docs -------------------------------------------------------------


def _exported_names() -> set[str]:
    from prometheus_client import Counter, Gauge, Histogram

    from siphera.metrics import instruments

    names = {"siphera_message_queue_depth"}
    for metric in vars(instruments).values():
        if isinstance(metric, (Counter, Gauge, Histogram)):
            names.add(metric._name + ("_total" if isinstance(metric, Counter) else ""))
    return names


def test_the_grafana_dashboard_is_valid_json_with_a_panel_for_every_metric():
    import json

    dashboard = json.loads((ROOT / "docs" / "grafana" / "siphera.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    missing = [name for name in sorted(_exported_names()) if name not in exprs]
    assert missing == []


def test_the_operations_guide_lists_every_metric():
    text = (ROOT / "docs" / "operations.md").read_text()
    assert [name for name in sorted(_exported_names()) if f"`{name}" not in text] == []


def test_open_sockets_leave_out_a_web_process_that_died_and_counters_keep_its_counts(tmp_path):
    # Two real processes count into one multiprocess directory, as WEB_WORKERS processes
    # do: one is killed (no clean exit), one stays. A scrape adds up both counters, but
    # only the live process's open sockets.
    import signal

    from siphera.metrics.exposition import _Processes

    script = (
        "import os, sys, time\n"
        "from siphera.metrics import instruments as m\n"
        "m.WEBSOCKETS_OPEN.inc(int(sys.argv[1])); m.MESSAGES_SENT.inc(int(sys.argv[1]))\n"
        "print('counted', flush=True); time.sleep(60)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(n)], cwd=ROOT, env=env, stdout=subprocess.PIPE
        )
        for n in (2, 5)
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == b"counted"
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(10)
        samples = {
            sample.name: sample.value
            for family in _Processes(str(tmp_path)).collect()
            for sample in family.samples
        }
        assert samples["siphera_websockets_open"] == 2
        assert samples["siphera_messages_sent_total"] == 7
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
