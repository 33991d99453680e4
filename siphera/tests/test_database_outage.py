"""PostgreSQL gone is a 503 the client can retry, never a 500, and the server recovers by
itself when it comes back.

The server under test reaches PostgreSQL through a TCP proxy in this process; cutting the
proxy (every open connection and the listener) is the database going away."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import uuid

import pytest
from websockets.exceptions import InvalidStatus

from messaging.tests.helpers import send_body, start_conversation
from tests import fixtures
from tests.fixtures import Api, host_of, server_with_env
from tests.ws import authed_socket, open_socket, recv_type, send, wait_closed


class TcpProxy:
    """127.0.0.1:<port> -> PostgreSQL, which can be cut and restored."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        """The database is back (if it was cut): listen on the same port again."""
        if self._listener is None:
            self.start()

    def database_url(self) -> str:
        """This run's DATABASE_URL, through this proxy."""
        from urllib.parse import urlsplit, urlunsplit

        real = urlsplit(fixtures.test_database_url())
        auth = real.netloc.rsplit("@", 1)[0] + "@" if "@" in real.netloc else ""
        return urlunsplit(real._replace(netloc=f"{auth}127.0.0.1:{self.port}"))

    @classmethod
    def to_database(cls) -> TcpProxy:
        """A started proxy to this run's PostgreSQL."""
        from urllib.parse import urlsplit

        real = urlsplit(fixtures.test_database_url())
        proxy = cls((real.hostname or "127.0.0.1", real.port or 5432))
        proxy.start()
        return proxy

    def cut(self) -> None:
        """The database goes away: no new connection, every open one dropped."""
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


@pytest.fixture
def proxied_server(tmp_path):
    proxy = TcpProxy.to_database()
    # A request waits DATABASE_POOL_TIMEOUT_SECONDS for a connection before its 503.
    with server_with_env(
        tmp_path / "server.log",
        DATABASE_URL=proxy.database_url(),
        DATABASE_POOL_TIMEOUT_SECONDS="1",
    ) as server:
        yield server, proxy
    proxy.cut()


async def test_the_api_answers_503_while_postgresql_is_gone_and_recovers(
    proxied_server, org_a, org_b, new_session
):
    server, proxy = proxied_server
    session = new_session(org_a)
    api = Api(server, host_of(org_a), session.token)
    assert api.get("/api/v1/me").status_code == 200
    assert api.get("/api/v1/calls").status_code == 200
    ws = await authed_socket(server, session, live=True)
    unauthenticated = await open_socket(server, host_of(org_a))
    before = start_conversation(session, new_session(org_a))["id"]
    retried = {"client_id": str(uuid.uuid4()), "body": "eA=="}

    proxy.cut()
    # A live socket hears that its frame could not be served, and stays open.
    await send(ws, {"type": "devices", "ref": "d"})
    error = await recv_type(ws, "error", timeout=15)
    assert error.get("ref") == "d", error
    assert (error["code"], error["retry_after"]) == ("database_unavailable", 5)
    await send(ws, {"type": "ping", "ref": "p"})
    assert (await recv_type(ws, "pong"))["ref"] == "p"
    # A socket whose `auth` the database cannot check is told so and closed with 1011 (try
    # again later), not 4401, which would tell the client its token is bad.
    await send(unauthenticated, {"type": "auth", "token": session.token})
    assert (await recv_type(unauthenticated, "error", timeout=15))["code"] == (
        "database_unavailable"
    )
    assert await wait_closed(unauthenticated) == 1011
    # A new socket gets in (its org's host is cached in the process: siphera.generations),
    # and its `auth` is answered the same way.
    late = await open_socket(server, host_of(org_a))
    await send(late, {"type": "auth", "token": session.token})
    assert (await recv_type(late, "error", timeout=15))["code"] == "database_unavailable"
    assert await wait_closed(late) == 1011
    # A host this process has not looked up yet cannot be: 503 with Retry-After, not a 500.
    with pytest.raises(InvalidStatus) as refused:
        await open_socket(server, host_of(org_b))
    assert refused.value.response.status_code == 503
    assert refused.value.response.headers["Retry-After"] == "5"

    # Requests that need the database get 503 with Retry-After, not a 500 (one that
    # needs only what the process has cached, like GET /api/v1/me, may still answer).
    for path in ("/api/v1/devices", "/api/v1/calls", "/api/v1/conversations"):
        response = api.get(path)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["code"] == "database_unavailable"
        assert response.headers["Retry-After"] == "5"
    # A REST send (served by siphera.fast_http) too, with nothing half-written.
    response = api.post(f"/api/v1/conversations/{before}/messages", json=retried)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response.headers["Retry-After"] == "5"
    ready = api.get("/ready")
    assert ready.status_code == 503

    # The socket's delivery reads its queue again 1 s and 5 s after `ready`; both fall
    # inside the outage by now, and the socket must outlive them (no 1011).
    await asyncio.sleep(6)

    proxy.start()  # the same port again
    assert api.get("/api/v1/me").status_code == 200
    # The client's retry of the refused send is stored once, as the conversation's first.
    response = api.post(f"/api/v1/conversations/{before}/messages", json=retried)
    assert response.status_code == 201, response.text
    assert response.json()["seq"] == 1
    await send(ws, {"type": "devices", "ref": "again"})
    devices = await recv_type(ws, "devices", timeout=15)
    assert devices["ref"] == "again"  # the DB thread replaced its broken connection
    # Delivery goes on: a message sent to this device now reaches the same socket.
    peer = new_session(org_a)
    conversation = start_conversation(peer, session)["id"]
    sent = send_body(peer, conversation)
    assert sent.status_code == 201, sent.text
    delivered = await recv_type(ws, "message", timeout=15)
    assert delivered["id"] == sent.json()["id"]
    await ws.close()
    log = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    assert any("database unavailable" in entry["msg"] for entry in log)
    # The outage's 503s are warnings with the cause in one line, not errors with a
    # traceback each; uvicorn's complaint after each refused handshake is not written.
    refused_requests = [e for e in log if e["logger"] == "django.request"]
    assert refused_requests and {e["level"] for e in refused_requests} == {"warning"}
    assert {e["status_code"] for e in refused_requests} == {503}
    assert not [e for e in refused_requests if "exc" in e]
    assert any(e.get("error", "").startswith("OperationalError") for e in refused_requests)
    assert not [e for e in log if "without completing handshake" in e["msg"]]
    assert not [e for e in log if e["level"] == "error"], [e for e in log if e["level"] == "error"]
