"""WebSocket test client helpers (the `websockets` library, a real client)."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect


def open_socket(server, host: str, **kwargs):
    """Connect to /ws/v1 on 127.0.0.1 while sending `host` as the Host header
    (`*.localhost`/`*.test` do not resolve here: PITFALLS 19)."""
    return connect(
        f"ws://{host}:{server.port}/ws/v1",
        host="127.0.0.1",
        port=server.port,
        max_size=None,
        open_timeout=10,
        **kwargs,
    )


async def send(ws, frame: dict) -> None:
    await ws.send(json.dumps(frame))


async def recv(ws, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, frame_type: str, timeout: float = 5.0) -> dict:
    """Receive frames until one of `frame_type` arrives (others are skipped)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        frame = await recv(ws, max(remaining, 0.01))
        if frame["type"] == frame_type:
            return frame


async def authed_socket(server, session, *, live: bool = False):
    """An open socket of `session`'s device, past `auth` and `ready` — and, with
    `live=True`, past the queue drain (`queue.empty`), so only live frames follow."""
    from tests.fixtures import host_of

    ws = await open_socket(server, host_of(session.org))
    await send(ws, {"type": "auth", "token": session.token})
    ready = await recv_type(ws, "ready")
    assert ready["device_id"] == session.device_id
    if live:
        await recv_type(ws, "queue.empty")
    return ws


async def wait_closed(ws, timeout: float = 5.0) -> int | None:
    """Wait for the server to close the socket; return the close code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except TimeoutError:
        raise AssertionError(f"socket not closed within {timeout}s") from None
    except Exception:
        pass
    return ws.close_code
