"""Dead peers: the web process pings every socket and closes one whose pong does not come.

A server started with 1 s pings and a 1 s pong timeout (WS_PING_INTERVAL_SECONDS,
WS_PING_TIMEOUT_SECONDS) instead of 20 s/20 s. The dead peer is a raw TCP socket that
does the WebSocket handshake by hand: WebSocket libraries answer pings by themselves, so
only a client written out here can authenticate and then stop answering.
"""

import asyncio
import base64
import json
import os
import socket
import struct
import time

import pytest

from siphera import serve
from tests.fixtures import Api, Session, host_of, make_user, register_device, server_with_env
from tests.ws import authed_socket, recv, send

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


@pytest.fixture(scope="module")
def fast_ping_server(tmp_path_factory):
    log_path = tmp_path_factory.mktemp("heartbeat") / "server.log"
    with server_with_env(log_path, WS_PING_INTERVAL_SECONDS="1", WS_PING_TIMEOUT_SECONDS="1") as s:
        yield s


def _session(server, org) -> Session:
    user = make_user(org)
    api = Api(server, host_of(org))
    device_id, token, keys = register_device(api, user.username)
    return Session(org, user, device_id, token, keys, api.as_device(token))


class RawSocket:
    """A WebSocket client over a plain TCP socket: it answers pings only when told to."""

    def __init__(self, server, host: str):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /ws/v1 HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError
        self.buffer += chunk

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def send_frame(self, opcode: int, payload: bytes) -> None:
        assert len(payload) < 126
        mask = os.urandom(4)  # client frames must be masked
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def recv_frame(self) -> tuple[int, bytes]:
        """The next frame from the server (unfragmented, unmasked); EOFError once the
        server has closed the TCP connection."""
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._take(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._take(8))
        return first & 0x0F, self._take(length)

    def recv_json(self, *, answer_pings: bool) -> dict:
        while True:
            opcode, payload = self.recv_frame()
            if opcode == OP_TEXT:
                return json.loads(payload)
            if opcode == OP_PING and answer_pings:
                self.send_frame(OP_PONG, payload)


def test_a_peer_that_stops_answering_pings_is_closed_within_the_timeout(fast_ping_server, org_a):
    # Given a device authenticated on a raw socket that answers pings until it is ready
    session = _session(fast_ping_server, org_a)
    peer = RawSocket(fast_ping_server, host_of(org_a))
    peer.send_frame(OP_TEXT, json.dumps({"type": "auth", "token": session.token}).encode())
    assert peer.recv_json(answer_pings=True)["type"] == "ready"
    ready_at = time.monotonic()

    # When it goes silent: it still reads, but never answers another ping
    frames = []
    try:
        while True:
            frames.append(peer.recv_frame())
    except EOFError:
        closed_after = time.monotonic() - ready_at
    except TimeoutError:  # the socket's 5 s read timeout: pings are not 1 s/1 s
        pytest.fail(f"still open {time.monotonic() - ready_at:.1f} s later; frames: {frames}")
    finally:
        peer.sock.close()

    # Then the server pinged it, gave up a second later with 1011, and dropped the TCP
    # connection: at most one ping interval plus one pong timeout after it went silent
    opcodes = [opcode for opcode, _ in frames]
    assert OP_PING in opcodes, frames
    assert opcodes[-1] == OP_CLOSE, frames
    (close_code,) = struct.unpack("!H", frames[-1][1][:2])
    assert close_code == 1011, frames[-1]
    assert closed_after < 4, closed_after


async def test_a_client_that_answers_pings_stays_connected(fast_ping_server, org_a):
    # Given a device on a real client (the websockets library answers pings itself)
    session = _session(fast_ping_server, org_a)
    ws = await authed_socket(fast_ping_server, session, live=True)
    try:
        # When several ping rounds pass (pings every 1 s, 1 s to answer)
        await asyncio.sleep(3.5)
        # Then the socket is still open and serving frames
        await send(ws, {"type": "ping", "ref": 1})
        assert await recv(ws) == {"type": "pong", "ref": 1}
    finally:
        await ws.close()


def test_ping_settings_come_from_the_environment_and_refuse_nonsense(monkeypatch):
    monkeypatch.delenv("WS_PING_INTERVAL_SECONDS", raising=False)
    assert serve._seconds("WS_PING_INTERVAL_SECONDS", 20.0) == 20.0
    monkeypatch.setenv("WS_PING_INTERVAL_SECONDS", "2.5")
    assert serve._seconds("WS_PING_INTERVAL_SECONDS", 20.0) == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv("WS_PING_INTERVAL_SECONDS", bad)
        with pytest.raises(SystemExit):
            serve._seconds("WS_PING_INTERVAL_SECONDS", 20.0)
