"""Transport: the Siphera HTTP API and the `/ws/v1` socket, nothing cryptographic.

Every call goes to `server` (e.g. http://127.0.0.1:8000) and names the org by its host
(`host`, sent as the Host header) so a client can reach an org whose domain does not
resolve locally. Binary fields travel as standard base64, as PROTOCOL.md fixes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import inspect
import itertools
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


class ApiError(Exception):
    """A non-2xx answer: `status`, the machine-readable `code`, and the whole JSON body in
    `data` (409 carries `missing`/`extra`/`stale`, 410 carries `stale`)."""

    def __init__(self, status: int, code: str, message: str, data: dict | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.data = status, code, message, data or {}

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        try:
            data = response.json()
        except ValueError:
            data = {}
        error = data.get("error") if isinstance(data, dict) else None
        if not isinstance(error, dict):
            error = {"code": "http_error", "message": response.reason_phrase}
        return cls(response.status_code, error.get("code", ""), error.get("message", ""), data)


class Api:
    """The HTTP API of one org, as one device (once it has a token)."""

    def __init__(
        self, server: str, host: str | None = None, token: str | None = None, timeout=30.0
    ):
        self.server = server.rstrip("/")
        self.host = host or urlsplit(self.server).netloc
        self.token = token
        self.http = httpx.AsyncClient(base_url=self.server, timeout=timeout)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, *, auth: str | None = None, **kwargs) -> Any:
        headers = {"Host": self.host}
        if auth is not None:
            headers["Authorization"] = auth
        elif self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        response = await self.http.request(method, path, headers=headers, **kwargs)
        if response.status_code >= 300:
            raise ApiError.from_response(response)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    # --- login and devices ---------------------------------------------------------------
    async def login(self, username: str, password: str, otp: str | None = None) -> str:
        """A single-use login grant."""
        body = {"username": username, "password": password}
        if otp:
            body["otp"] = otp
        return (await self._call("POST", "/api/v1/auth/login", json=body))["grant"]

    async def sso_grant(
        self,
        open_browser: Callable[[str], Awaitable[None] | None],
        *,
        otp: str | None = None,
        timeout: float = 300.0,
    ) -> str:
        """A single-use login grant through the org's single sign-on, as RFC 8252 has
        native apps do it: a one-shot listener on 127.0.0.1 receives the browser back with
        a one-time code, which is exchanged with this sign-in's PKCE verifier.

        `open_browser(url)` shows the URL to the person (the system browser; tests drive
        one). Raises ApiError `sso_timeout` when no answer comes within `timeout`.
        """
        verifier = secrets.token_urlsafe(64)
        challenge = (
            base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
            .rstrip(b"=")
            .decode()
        )
        answer: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()

        async def on_browser(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
            try:
                line = (await asyncio.wait_for(reader.readline(), 10)).decode("latin-1")
                target = line.split(" ")[1] if line.count(" ") >= 2 else "/"
                params = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
                body = b"Signed in: you can close this window and return to the app.\n"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body
                )
                await writer.drain()
                if "code" in params and not answer.done():
                    answer.set_result(params)
            except (TimeoutError, ConnectionError, IndexError):
                pass
            finally:
                writer.close()

        listener = await asyncio.start_server(on_browser, "127.0.0.1", 0)
        try:
            port = listener.sockets[0].getsockname()[1]
            query = urlencode(
                {
                    "purpose": "client",
                    "redirect_uri": f"http://127.0.0.1:{port}/sso-callback",
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                }
            )
            opened = open_browser(f"{self.server}/sso/login?{query}")
            if inspect.isawaitable(opened):
                await opened
            try:
                params = await asyncio.wait_for(answer, timeout)
            except TimeoutError:
                raise ApiError(408, "sso_timeout", "No answer from the browser.") from None
        finally:
            listener.close()
        body = {"code": params["code"], "code_verifier": verifier}
        if otp:
            body["otp"] = otp
        return (await self._call("POST", "/api/v1/auth/sso/token", json=body))["grant"]

    async def register_device(self, grant: str, registration: dict) -> tuple[int, str]:
        """Register a device with its public keys; returns (device id, bearer token)."""
        answer = await self._call(
            "POST", "/api/v1/devices", json=registration, auth=f"Grant {grant}"
        )
        return answer["device_id"], answer["token"]

    async def me(self) -> dict:
        return await self._call("GET", "/api/v1/me")

    async def my_devices(self) -> list[dict]:
        return await self._call("GET", "/api/v1/devices")

    async def revoke_device(self, device_id: int) -> None:
        await self._call("DELETE", f"/api/v1/devices/{device_id}")

    # --- keys ----------------------------------------------------------------------------
    async def upload_keys(
        self, *, signed_prekey: dict | None = None, one_time_prekeys: list[dict] = ()
    ) -> None:
        body: dict = {"one_time_prekeys": list(one_time_prekeys)}
        if signed_prekey is not None:
            body["signed_prekey"] = signed_prekey
        await self._call("PUT", "/api/v1/keys", json=body)

    async def key_count(self) -> dict:
        return await self._call("GET", "/api/v1/keys/count")

    async def claim_bundles(self, user_id: str, device_id: int | None = None) -> dict:
        """Claim a bundle per current device of `user_id` (one one-time prekey each)."""
        params = {"device_id": device_id} if device_id is not None else None
        return await self._call("GET", f"/api/v1/keys/{user_id}", params=params)

    # --- conversations and messages -----------------------------------------------------
    async def create_conversation(self, kind: str, members: list[str]) -> dict:
        return await self._call(
            "POST", "/api/v1/conversations", json={"kind": kind, "members": members}
        )

    async def conversation(self, conversation_id: str) -> dict:
        return await self._call("GET", f"/api/v1/conversations/{conversation_id}")

    async def conversations(self) -> list[dict]:
        return await self._call("GET", "/api/v1/conversations")

    async def add_members(self, conversation_id: str, user_ids: list[str]) -> dict:
        return await self._call(
            "POST",
            f"/api/v1/conversations/{conversation_id}/members",
            json={"user_ids": user_ids},
        )

    async def remove_member(self, conversation_id: str, user_id: str) -> None:
        """Remove a member (group admins), or leave (your own user id)."""
        await self._call("DELETE", f"/api/v1/conversations/{conversation_id}/members/{user_id}")

    async def set_member_role(self, conversation_id: str, user_id: str, role: str) -> dict:
        """Promote (`admin`) or demote (`member`) a group member (group admins)."""
        return await self._call(
            "PATCH",
            f"/api/v1/conversations/{conversation_id}/members/{user_id}",
            json={"role": role},
        )

    async def update_conversation(self, conversation_id: str, **changes: bytes | None) -> dict:
        """Set a group's `title` and/or `topic` (ciphertext the caller encrypted; None
        clears it). Group admins."""
        payload = {name: None if value is None else b64(value) for name, value in changes.items()}
        return await self._call("PATCH", f"/api/v1/conversations/{conversation_id}", json=payload)

    async def history(
        self,
        conversation_id: str,
        *,
        after_seq: int = 0,
        limit: int = 100,
        thread: str | None = None,
    ) -> list[dict]:
        """The stored history (or, with `thread`, that thread: its root, then its replies)."""
        params: dict = {"after_seq": after_seq, "limit": limit}
        if thread is not None:
            params["thread"] = thread
        return await self._call(
            "GET", f"/api/v1/conversations/{conversation_id}/messages", params=params
        )

    async def read_state(self, conversation_id: str) -> dict:
        """`{conversation, last_seq, read_seq, unread_count, mention_count}`."""
        return await self._call("GET", f"/api/v1/conversations/{conversation_id}/read")

    async def mark_read(self, conversation_id: str, up_to_seq: int) -> dict:
        return await self._call(
            "POST",
            f"/api/v1/conversations/{conversation_id}/read",
            json={"up_to_seq": up_to_seq},
        )

    async def send_message(
        self,
        conversation_id: str,
        *,
        client_id: str,
        body: bytes | None,
        envelopes: list[dict] | None,
        thread: str | None = None,
        mentions: list[str] | None = None,
    ) -> dict:
        payload: dict = {"client_id": client_id}
        if body is not None:
            payload["body"] = b64(body)
        if envelopes is not None:
            payload["envelopes"] = envelopes
        if thread is not None:
            payload["thread"] = thread
        if mentions:
            payload["mentions"] = mentions
        return await self._call(
            "POST", f"/api/v1/conversations/{conversation_id}/messages", json=payload
        )

    async def queued_messages(self, limit: int = 100) -> list[dict]:
        return await self._call("GET", "/api/v1/messages", params={"limit": limit})

    async def ack(self, ids: list[str]) -> None:
        await self._call("POST", "/api/v1/messages/ack", json={"ids": ids})

    # --- users and calls -------------------------------------------------------------------
    async def find_users(self, query: str) -> list[dict]:
        """`GET /api/v1/users?q=` (needs `users.view`: admins): users matching `query`."""
        return await self._call("GET", "/api/v1/users", params={"q": query})

    async def turn_credentials(self) -> dict:
        """`GET /api/v1/calls/turn`: `{"urls", "username", "credential", "ttl"}`; 503
        `turn_not_configured` when the server has no TURN."""
        return await self._call("GET", "/api/v1/calls/turn")


class SocketClosed(Exception):
    def __init__(self, code: int | None):
        super().__init__(f"socket closed ({code})")
        self.code = code


class Socket:
    """An authenticated `/ws/v1` socket. A reader task files frames that answer a request
    (same `ref`) with that request and queues every other frame for `next_frame`."""

    def __init__(self, ws: ClientConnection, ready: dict):
        self.ws, self.ready = ws, ready
        self.frames: asyncio.Queue[dict | None] = asyncio.Queue()
        self._pending: dict[str, asyncio.Future] = {}
        self._refs = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, server: str, host: str, token: str) -> Socket:
        url = urlsplit(server)
        scheme = "wss" if url.scheme == "https" else "ws"
        ws = await connect(
            f"{scheme}://{host}/ws/v1",
            host=url.hostname,
            port=url.port or (443 if scheme == "wss" else 80),
            max_size=None,
            open_timeout=20,
        )
        await ws.send(json.dumps({"type": "auth", "token": token}))
        try:
            ready = json.loads(await asyncio.wait_for(ws.recv(), 20))
        except Exception:
            await ws.close()
            raise SocketClosed(ws.close_code) from None
        if ready.get("type") != "ready":
            await ws.close()
            raise SocketClosed(ws.close_code)
        return cls(ws, ready)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = json.loads(raw)
                ref = frame.get("ref")
                waiter = self._pending.pop(str(ref), None) if ref is not None else None
                if waiter is not None and not waiter.done():
                    waiter.set_result(frame)
                else:
                    await self.frames.put(frame)
        except Exception:  # closed by the server or the network: reported below
            pass
        finally:
            for waiter in self._pending.values():
                if not waiter.done():
                    waiter.set_exception(SocketClosed(self.ws.close_code))
            await self.frames.put(None)

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    async def send(self, frame: dict) -> None:
        await self.ws.send(json.dumps(frame))

    async def request(self, frame: dict, timeout: float = 20.0) -> dict:
        """Send a frame with a fresh `ref` and wait for the frame that answers it."""
        ref = f"c{next(self._refs)}"
        waiter = asyncio.get_running_loop().create_future()
        self._pending[ref] = waiter
        await self.send({**frame, "ref": ref})
        try:
            return await asyncio.wait_for(waiter, timeout)
        finally:
            self._pending.pop(ref, None)

    async def next_frame(self) -> dict:
        """The next unsolicited frame; SocketClosed once the socket is gone."""
        frame = await self.frames.get()
        if frame is None:
            await self.frames.put(None)  # keep reporting the close to later callers
            raise SocketClosed(self.ws.close_code)
        return frame

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
