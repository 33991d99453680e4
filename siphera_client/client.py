"""The reference client: one device of one user, end to end encrypted.

- 1:1 (`direct`) messages: one Olm envelope per device (the other user's devices and this
  user's other devices); no `body`.
- group messages: a Megolm `body` for everyone, plus one envelope per device: an Olm
  envelope handing over the Megolm session to a device that does not have it yet, or an
  empty type-2 envelope to a device that does. Addressing every device on every message
  lets the server's coverage check (409/410) tell the sender at once about a new device,
  a new member or a revoked device, so nobody receives a body without its key.
- On 409 (missing/extra devices) or 410 (stale devices) the client learns the devices
  from the answer (claiming bundles for the missing ones), forgets the others, rotates the
  group session when a device that held it is gone, and retries once.
- Receiving: over `/ws/v1`, every `message` frame is decrypted, the state file saved, then
  the message acknowledged; delivered receipts are sent when the queue has no more frames
  waiting, read receipts when the application calls `mark_read`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass

from siphera_client.api import Api, ApiError, Socket, SocketClosed, b64, unb64
from siphera_client.crypto import (
    ENVELOPE_KEY_HELD,
    ENVELOPE_NORMAL,
    ENVELOPE_PREKEY,
    Crypto,
    CryptoError,
    Peer,
)
from siphera_client.store import Store

log = logging.getLogger("siphera_client")

SIGNED_PREKEY_ROTATE_SECONDS = 7 * 24 * 3600
SEEN_IDS_KEPT = 2000  # message ids remembered, so a redelivery is acked, not re-decrypted
MAX_KEYS_PER_UPLOAD = 100  # the server's per-request limit
CALL_FRAMES_KEPT = 200  # call frames kept for a siphera_client.calls.Phone that may never read


def is_call_frame(frame: dict) -> bool:
    """Frames for siphera_client.calls: `call.*`, and errors answering a frame a Phone
    sent (their `ref` is `call:<what>:<call id>`)."""
    kind = frame.get("type", "")
    return kind.startswith("call.") or (
        kind == "error" and str(frame.get("ref", "")).startswith("call:")
    )


@dataclass
class Received:
    """One `message` frame, decrypted. `kind` is `text`, `event` (membership) or
    `undecryptable` (then `error` says why; the message was acknowledged all the same)."""

    id: str
    conversation: str
    seq: int
    ts: str
    sender_user: str | None
    sender_device: int | None
    kind: str
    text: str | None = None
    event: dict | None = None
    error: str | None = None
    thread: str | None = None


@dataclass
class Stats:
    """Counters a test or an operator can read."""

    sessions_from_one_time_key: int = 0
    sessions_from_signed_prekey: int = 0
    retries_409: int = 0
    retries_410: int = 0
    group_sessions_rotated: int = 0
    keys_uploaded: int = 0
    undecryptable: int = 0


class Client:
    """A registered device. Build it with `register` (new device) or `open` (state file)."""

    def __init__(self, store: Store, *, crypto: Crypto | None = None, auto_top_up=True):
        self.store = store
        data = store.data
        self.crypto = crypto or Crypto(store)
        self.api = Api(data["server"], data["host"], token=store.unseal(data["token"]))
        self.auto_top_up = auto_top_up
        self.socket: Socket | None = None
        self.inbox: asyncio.Queue[Received | None] = asyncio.Queue()
        self.notices: asyncio.Queue[dict] = asyncio.Queue()  # receipt / typing frames
        # call.* frames for a siphera_client.calls.Phone (the newest CALL_FRAMES_KEPT)
        self.call_frames: asyncio.Queue[dict] = asyncio.Queue()
        self.drained = asyncio.Event()  # set at `queue.empty`
        self.stats = Stats()
        self._processor: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._delivered: dict[str, int] = {}
        data.setdefault("directory", {})
        data.setdefault("conversations", {})
        data.setdefault("direct", {})
        data.setdefault("seen", [])
        self._seen = set(data["seen"])

    # --- lifecycle ---------------------------------------------------------------------
    @classmethod
    async def register(
        cls,
        *,
        server: str,
        host: str | None,
        username: str,
        password: str | None,
        state_path,
        passphrase: str,
        device_name: str = "siphera-client",
        otp: str | None = None,
        one_time_keys: int | None = None,
        auto_top_up: bool = True,
        sso=None,
        sso_timeout: float = 300.0,
    ) -> Client:
        """Log in, create an Olm account, register it as a new device, save the state.

        With `sso` (a callable that shows a URL to the person: Api.sso_grant) and no
        password, the login is the org's single sign-on."""
        store = Store.create(state_path, passphrase)
        api = Api(server, host)
        store.data.update(server=api.server, host=api.host, username=username)
        crypto = Crypto(store)
        try:
            if password is None and sso is not None:
                grant = await api.sso_grant(sso, otp=otp, timeout=sso_timeout)
            else:
                grant = await api.login(username, password, otp)
            registration = crypto.registration(device_name, one_time_keys)
            # The private halves are on disk before the server hands them out.
            crypto.flush()
            store.save()
            device_id, token = await api.register_device(grant, registration)
        except BaseException:
            store.path.unlink(missing_ok=True)  # no device: leave no state file behind
            await api.aclose()
            raise
        try:
            crypto.mark_published()
            store.data.update(
                device_id=device_id, token=store.seal(token), signed_prekey_at=time.time()
            )
            crypto.flush()
            store.save()  # the token is shown once: keep it before anything else
            api.token = token
            me = await api.me()
            store.data.update(user_id=me["user_id"], username=me["username"])
            store.save()
        finally:
            await api.aclose()
        return cls(store, crypto=crypto, auto_top_up=auto_top_up)

    @classmethod
    def open(cls, state_path, passphrase: str, **kwargs) -> Client:
        return cls(Store.open(state_path, passphrase), **kwargs)

    @property
    def user_id(self) -> str:
        return self.store.data["user_id"]

    @property
    def device_id(self) -> int:
        return self.store.data["device_id"]

    def save(self) -> None:
        self.crypto.flush()
        self.store.data["seen"] = list(self.store.data["seen"])[-SEEN_IDS_KEPT:]
        self.store.save()

    async def connect(self) -> None:
        """Open the socket and start decrypting what arrives (queued messages first)."""
        self.socket = await Socket.open(self.api.server, self.api.host, self.api.token)
        self.drained.clear()
        self._processor = asyncio.create_task(self._process())

    async def close(self) -> None:
        if self._processor is not None:
            self._processor.cancel()
            with contextlib.suppress(BaseException):
                await self._processor
            self._processor = None
        if self.socket is not None:
            await self.socket.close()
            self.socket = None
        await self.api.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # --- keys --------------------------------------------------------------------------
    async def top_up_keys(self, *, force: bool = False) -> dict:
        """Bring the server's one-time prekeys back to the target and rotate the signed
        prekey once a week. Returns what was uploaded."""
        async with self._lock:
            counts = await self.api.key_count()
            target = self.crypto.one_time_target
            held = counts["one_time"]
            uploaded = {"one_time": 0, "signed_prekey": False}
            one_time: list[dict] = []
            if force or held < target // 2:
                pending = len(self.crypto.account.one_time_keys)
                want = min(target - held, MAX_KEYS_PER_UPLOAD) - pending
                one_time = self.crypto.new_one_time_prekeys(max(want, 0))[:MAX_KEYS_PER_UPLOAD]
            signed = None
            age = time.time() - self.store.data.get("signed_prekey_at", 0)
            if age >= SIGNED_PREKEY_ROTATE_SECONDS:
                signed = self.crypto.new_signed_prekey()
            if not one_time and signed is None:
                return uploaded
            self.save()  # private halves first
            await self.api.upload_keys(signed_prekey=signed, one_time_prekeys=one_time)
            self.crypto.mark_published()
            if signed is not None:
                self.store.data["signed_prekey_at"] = time.time()
            self.save()
            self.stats.keys_uploaded += len(one_time)
            uploaded.update(one_time=len(one_time), signed_prekey=signed is not None)
            log.info("keys uploaded: %s one-time, signed prekey %s", len(one_time), bool(signed))
            return uploaded

    # --- devices and members -------------------------------------------------------------
    def _directory(self) -> dict:
        return self.store.data["directory"]

    def _learn(self, user_id: str, device: dict) -> Peer:
        return self.crypto.pin(
            user_id, device["device_id"], device["identity_key"], device["signing_key"]
        )

    async def _refresh_devices(self, user_id: str) -> None:
        """The user's current devices (not this one): from a `devices` frame when the socket
        is up (nothing consumed), else by claiming their bundles (which also opens the Olm
        sessions that are missing)."""
        ids = []
        if self.socket is not None:
            reply = await self.socket.request({"type": "devices", "user_id": user_id})
            if reply.get("type") == "error":
                raise ApiError(404, reply.get("code", ""), reply.get("message", ""))
            for device in reply["devices"]:
                if (user_id, device["device_id"]) != (self.user_id, self.device_id):
                    self._learn(user_id, device)
                    ids.append(device["device_id"])
        else:
            answer = await self.api.claim_bundles(user_id)
            for bundle in answer["devices"]:
                peer = self._learn(user_id, bundle)
                if not self.crypto.has_session(peer):
                    self._start_session(peer, bundle)
                ids.append(bundle["device_id"])
        self._directory()[user_id] = sorted(ids)

    def _start_session(self, peer: Peer, bundle: dict) -> None:
        if self.crypto.start_session(peer, bundle):
            self.stats.sessions_from_one_time_key += 1
        else:
            self.stats.sessions_from_signed_prekey += 1

    async def _ensure_session(self, peer: Peer) -> bool:
        """Open an Olm session with `peer` from a freshly claimed bundle if we have none.
        False when the device is gone (404)."""
        if self.crypto.has_session(peer):
            return True
        try:
            answer = await self.api.claim_bundles(peer.user_id, peer.device_id)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        (bundle,) = answer["devices"]
        self._start_session(self._learn(peer.user_id, bundle), bundle)
        return True

    async def _members(self, conversation_id: str, *, refresh: bool = False) -> list[str]:
        cached = self.store.data["conversations"].get(conversation_id)
        if cached is None or refresh:
            answer = await self.api.conversation(conversation_id)
            cached = {"kind": answer["kind"], "members": [m["user_id"] for m in answer["members"]]}
            self.store.data["conversations"][conversation_id] = cached
        return cached["members"]

    async def _targets(self, conversation_id: str) -> list[Peer]:
        """Every current device of every member but this one, with an Olm session each."""
        peers = []
        for user_id in await self._members(conversation_id):
            if user_id not in self._directory():
                await self._refresh_devices(user_id)
            for device_id in list(self._directory().get(user_id, [])):
                if (user_id, device_id) == (self.user_id, self.device_id):
                    continue
                peer = self.crypto.pinned(user_id, device_id)
                if peer is None or not await self._ensure_session(peer):
                    self._directory()[user_id].remove(device_id)
                    continue
                peers.append(peer)
        return peers

    async def _repair(self, conversation_id: str, error: ApiError) -> None:
        """Learn from a 409/410 which devices to address: claim the missing ones, forget
        the extra and stale ones, and stop using a group session a lost device held."""
        data = error.data
        members = set(await self._members(conversation_id, refresh=True))
        for device in data.get("missing", []):
            user_id, device_id = device["user_id"], device["device_id"]
            try:
                answer = await self.api.claim_bundles(user_id, device_id)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                continue
            (bundle,) = answer["devices"]
            peer = self._learn(user_id, bundle)
            if not self.crypto.has_session(peer):
                self._start_session(peer, bundle)
            known = self._directory().setdefault(user_id, [])
            if device_id not in known:
                known.append(device_id)
        stale = {f"{d['user_id']}:{d['device_id']}" for d in data.get("stale", [])}
        extra = {f"{d['user_id']}:{d['device_id']}" for d in data.get("extra", [])}
        for device in data.get("extra", []) + data.get("stale", []):
            # An extra device of a user who left is still that user's device (it stays in
            # the directory for other conversations); of a member, it is not current.
            if device in data.get("extra", []) and device["user_id"] not in members:
                continue
            known = self._directory().get(device["user_id"], [])
            if device["device_id"] in known:
                known.remove(device["device_id"])
        for device in data.get("stale", []):
            self.crypto.drop_sessions(device["user_id"], device["device_id"])
        # A revoked device held every group session shared with it; a device that is no
        # longer addressed here (its user left) held this conversation's. Neither may read
        # what comes next.
        rotated = self.crypto.discard_outbound_shared_with(stale)
        rotated += self.crypto.discard_outbound_shared_with(extra, conversation_id)
        self.stats.group_sessions_rotated += rotated

    # --- sending ------------------------------------------------------------------------
    async def direct_conversation(self, user_id: str) -> str:
        """The direct conversation with `user_id` (created on first use)."""
        known = self.store.data["direct"].get(user_id)
        if known:
            return known
        answer = await self.api.create_conversation("direct", [user_id])
        self.store.data["direct"][user_id] = answer["id"]
        self.store.data["conversations"][answer["id"]] = {
            "kind": answer["kind"],
            "members": [m["user_id"] for m in answer["members"]],
        }
        self.save()
        return answer["id"]

    async def create_group(self, member_ids: list[str]) -> str:
        answer = await self.api.create_conversation("group", member_ids)
        self.store.data["conversations"][answer["id"]] = {
            "kind": answer["kind"],
            "members": [m["user_id"] for m in answer["members"]],
        }
        self.save()
        return answer["id"]

    async def send(self, conversation_id: str, text: str) -> dict:
        """Send `text` in a conversation: Olm envelopes in a direct one, Megolm in a group."""
        await self._members(conversation_id)  # caches the conversation's kind
        kind = self.store.data["conversations"][conversation_id]["kind"]
        if kind == "group":
            return await self.send_group(conversation_id, text)
        return await self.send_olm(conversation_id, text)

    async def send_direct(self, user_id: str, text: str) -> dict:
        """Send `text` to `user_id`: an Olm envelope per device of theirs and of ours."""
        conversation_id = await self.direct_conversation(user_id)
        return await self.send_olm(conversation_id, text)

    async def send_olm(self, conversation_id: str, text: str) -> dict:
        """Send `text` in any conversation as pairwise Olm envelopes only (no `body`)."""

        def build(peers: list[Peer]):
            envelopes = []
            for peer in peers:
                payload = self.crypto.direct_payload(conversation_id, peer, {"text": text})
                message_type, ciphertext = self.crypto.olm_encrypt(peer, payload)
                envelopes.append(_envelope(peer, message_type, ciphertext))
            return None, envelopes, lambda: None

        return await self._send(conversation_id, build)

    async def send_group(self, conversation_id: str, text: str) -> dict:
        """Send `text` in a group: one Megolm `body`, the session handed to new devices."""

        def build(peers: list[Peer]):
            session, meta = self.crypto.outbound_group(conversation_id)
            shared = set(meta["shared"])
            envelopes, newly = [], []
            for peer in peers:
                if peer.key in shared:
                    envelopes.append(
                        _envelope(peer, ENVELOPE_KEY_HELD, session.session_id.encode())
                    )
                    continue
                room_key = self.crypto.room_key(conversation_id, peer)
                message_type, ciphertext = self.crypto.olm_encrypt(peer, room_key)
                envelopes.append(_envelope(peer, message_type, ciphertext))
                newly.append(peer.key)
            # The keys above were taken at the index this body is encrypted with.
            body = self.crypto.group_encrypt(conversation_id, {"kind": "text", "text": text})

            def done():
                meta["shared"] = sorted(shared | set(newly))

            return body, envelopes, done

        return await self._send(conversation_id, build)

    async def _send(self, conversation_id: str, build) -> dict:
        client_id = str(uuid.uuid4())  # the same on the retry: the server never doubles it
        async with self._lock:
            for attempt in range(2):
                peers = await self._targets(conversation_id)
                body, envelopes, done = build(peers)
                self.save()  # ratchets moved; sessions opened
                try:
                    result = await self.api.send_message(
                        conversation_id, client_id=client_id, body=body, envelopes=envelopes
                    )
                except ApiError as exc:
                    if exc.status not in (409, 410) or attempt:
                        raise
                    if exc.status == 409:
                        self.stats.retries_409 += 1
                    else:
                        self.stats.retries_410 += 1
                    log.info("device list changed (%s); retrying once", exc.status)
                    await self._repair(conversation_id, exc)
                    continue
                done()
                self.save()
                return result
        raise AssertionError("unreachable")

    # --- receiving ----------------------------------------------------------------------
    async def _peer(self, user_id: str, device_id: int) -> Peer | None:
        peer = self.crypto.pinned(user_id, device_id)
        if peer is None:
            await self._refresh_devices(user_id)
            peer = self.crypto.pinned(user_id, device_id)
        return peer

    async def _decrypt(self, frame: dict) -> Received:
        conversation = frame["conversation"]
        sender = frame.get("sender") or {}
        received = Received(
            id=frame["id"],
            conversation=conversation,
            seq=frame["seq"],
            ts=frame["ts"],
            sender_user=sender.get("user_id"),
            sender_device=sender.get("device_id"),
            kind="text",
            thread=frame.get("thread"),
        )
        if frame.get("event") is not None:
            received.kind, received.event = "event", frame["event"]
            self._on_membership(conversation, frame["event"])
            return received
        try:
            peer = await self._peer(received.sender_user, received.sender_device)
            if peer is None:
                raise CryptoError("Unknown sending device.")
            envelope = frame.get("envelope")
            if envelope is not None and envelope["type"] in (ENVELOPE_PREKEY, ENVELOPE_NORMAL):
                payload = self.crypto.olm_decrypt(peer, envelope["type"], unb64(envelope["body"]))
                self.crypto.check_addressing(payload, peer, conversation)
                if payload.get("kind") == "room_key":
                    self.crypto.accept_room_key(payload, peer, conversation)
                elif payload.get("kind") == "text":
                    received.text = payload.get("text")
            if frame.get("body") is not None:
                payload = self.crypto.group_decrypt(
                    unb64(frame["body"]),
                    conversation=conversation,
                    user_id=peer.user_id,
                    device_id=peer.device_id,
                )
                received.text = payload.get("text")
            if received.text is None:
                raise CryptoError("No content for this device.")
        except (CryptoError, ApiError, KeyError, TypeError, ValueError) as exc:
            received.kind, received.error = "undecryptable", str(exc)
            self.stats.undecryptable += 1
            log.warning("message %s undecryptable: %s", frame.get("id"), exc)
        return received

    def _on_membership(self, conversation: str, event: dict) -> None:
        # The member list changed: read it again before the next send.
        self.store.data["conversations"].pop(conversation, None)
        left = event.get("action") in ("member.removed", "member.left")
        if left and self.crypto.has_outbound(conversation):
            # Whoever left held the group session: the next message uses a new one.
            self.crypto.discard_outbound(conversation)
            self.stats.group_sessions_rotated += 1

    async def _handle(self, frame: dict) -> None:
        message_id = frame["id"]
        if message_id in self._seen:  # redelivered after we saved but before the ack
            await self.socket.send({"type": "ack", "ids": [message_id]})
            return
        async with self._lock:
            received = await self._decrypt(frame)
            self._seen.add(message_id)
            self.store.data["seen"].append(message_id)
            self.save()  # before the ack: a consumed one-time key must not be lost
        await self.socket.send({"type": "ack", "ids": [message_id]})
        if received.kind != "event" and received.sender_user != self.user_id:
            conv = received.conversation
            self._delivered[conv] = max(self._delivered.get(conv, 0), received.seq)
        await self.inbox.put(received)

    async def _flush_receipts(self) -> None:
        pending, self._delivered = self._delivered, {}
        for conversation, seq in pending.items():
            await self.socket.send(
                {
                    "type": "receipt",
                    "conversation": conversation,
                    "kind": "delivered",
                    "up_to_seq": seq,
                }
            )

    async def mark_read(self, conversation_id: str, up_to_seq: int) -> None:
        """Tell the other members this user read the conversation up to `up_to_seq`."""
        if self.socket is not None:
            await self.socket.send(
                {
                    "type": "receipt",
                    "conversation": conversation_id,
                    "kind": "read",
                    "up_to_seq": up_to_seq,
                }
            )

    async def _process(self) -> None:
        try:
            if self.auto_top_up:
                await self.top_up_keys()
            while True:
                frame = await self.socket.next_frame()
                kind = frame.get("type")
                if kind == "message":
                    await self._handle(frame)
                elif kind == "queue.empty":
                    self.drained.set()
                elif kind == "keys.low":
                    if self.auto_top_up:
                        await self.top_up_keys()
                elif kind in ("receipt", "typing"):
                    await self.notices.put(frame)
                elif is_call_frame(frame):
                    self._file_call_frame(frame)
                elif kind == "device.revoked":
                    log.warning("this device was revoked")
                elif kind == "error":
                    log.warning("error frame: %s %s", frame.get("code"), frame.get("message"))
                if self.socket.frames.empty() and self._delivered:
                    await self._flush_receipts()
        except SocketClosed as exc:
            log.info("socket closed (%s)", exc.code)
            self._file_call_frame({"type": "socket.closed", "code": exc.code})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("receive loop failed")
        finally:
            await self.inbox.put(None)

    def _file_call_frame(self, frame: dict) -> None:
        if self.call_frames.qsize() >= CALL_FRAMES_KEPT:  # nobody reads them: keep the newest
            self.call_frames.get_nowait()
        self.call_frames.put_nowait(frame)

    async def receive(self, count: int, timeout: float = 30.0) -> list[Received]:
        """The next `count` messages (decrypted, acknowledged). Raises TimeoutError."""
        out: list[Received] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(out) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            item = await asyncio.wait_for(self.inbox.get(), max(remaining, 0.01))
            if item is None:
                await self.inbox.put(None)
                raise SocketClosed(self.socket.close_code if self.socket else None)
            out.append(item)
        return out

    async def fetch_queued(self, limit: int = 100) -> list[Received]:
        """Without a socket: decrypt and acknowledge the queued messages over REST."""
        frames = await self.api.queued_messages(limit)
        out = []
        for frame in frames:
            if frame["id"] in self._seen:
                await self.api.ack([frame["id"]])
                continue
            async with self._lock:
                received = await self._decrypt(frame)
                self._seen.add(frame["id"])
                self.store.data["seen"].append(frame["id"])
                self.save()
            await self.api.ack([frame["id"]])
            out.append(received)
        return out


def _envelope(peer: Peer, message_type: int, ciphertext: bytes) -> dict:
    return {
        "user_id": peer.user_id,
        "device_id": peer.device_id,
        "type": message_type,
        "body": b64(ciphertext),
    }
