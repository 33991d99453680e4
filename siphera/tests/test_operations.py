"""Operations: health probes on any host, JSON logs without secrets, the OpenAPI schema."""

import json

import httpx

from tests.fixtures import PASSWORD, host_of, login_grant, make_user
from tests.ws import authed_socket, recv, send


def test_health_answers_on_a_bare_ip_and_any_host(server):
    for host in (f"127.0.0.1:{server.port}", "10.1.2.3", "whatever.invalid"):
        response = httpx.get(f"{server.url}/health", headers={"Host": host})
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


def test_ready_checks_database_redis_migrations_and_the_key_ring(server):
    response = httpx.get(f"{server.url}/ready", headers={"Host": "10.0.0.7"})
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok", "migrations": "ok", "key_ring": "ok"},
    }


def test_ready_reports_degraded_when_redis_is_unreachable(tmp_path):
    """A second server pointed at a closed Redis port says so instead of claiming ready,
    but stays in rotation (200): it still serves without Redis (siphera.redis_outage)."""
    import subprocess
    import sys
    import time

    from tests.fixtures import ROOT, _free_port, child_env

    port = _free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "siphera.asgi:application", "--port", str(port)],
            cwd=ROOT,
            env=child_env(REDIS_URL=f"redis://127.0.0.1:{_free_port()}/0"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "degraded"
        assert body["checks"]["database"] == "ok"
        assert body["checks"]["redis"].startswith("error")
    finally:
        proc.terminate()
        proc.wait(10)


async def test_logs_are_json_with_request_id_and_org_and_never_secrets(server, org_a, new_session):
    session = new_session(org_a)
    user = make_user(org_a)
    grant = login_grant(session.api.as_device(None), user.username)
    response = session.api.get("/api/v1/me", headers={"X-Request-ID": "trace-me-123"})
    assert response.headers["X-Request-ID"] == "trace-me-123"
    async with await authed_socket(server, session) as ws:
        await send(ws, {"type": "auth", "token": session.token})
        await recv(ws)

    text = server.log_text()
    secrets = [session.token, grant, PASSWORD, session.keys.registration()["signing_key"]]
    for secret in secrets:
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    traced = [entry for entry in lines if entry.get("request_id") == "trace-me-123"]
    assert traced and traced[0]["org"] == "alpha" and traced[0]["path"] == "/api/v1/me"
    assert traced[0]["status"] == 200


def test_redaction_scrubs_tokens_that_reach_a_log_line():
    from siphera.logging import redact

    line = "auth with sph_d_abcDEF123-_x and Authorization: Bearer xyz.abc password=hunter2"
    cleaned = redact(line)
    for secret in ("sph_d_abcDEF123", "xyz.abc", "hunter2"):
        assert secret not in cleaned


def test_openapi_schema_and_docs_page_are_served_per_org(server, org_a):
    host = host_of(org_a)
    schema = httpx.get(
        f"{server.url}/api/v1/schema/", headers={"Host": host, "Accept": "application/json"}
    )
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/api/v1/auth/login", "/api/v1/devices", "/api/v1/me"):
        assert path in paths
    docs = httpx.get(f"{server.url}/api/v1/docs/", headers={"Host": host})
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    # the docs page loads its assets from this server, never a CDN
    assert "cdn" not in docs.text.lower() and "https://" not in docs.text
