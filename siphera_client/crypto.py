"""Olm and Megolm for one device, with vodozemac (no home-made cryptography).

Keys published to the server (PROTOCOL.md "Login and devices", "Keys"):
- identity key = the Olm account's Curve25519 identity key;
- signing key = the Olm account's Ed25519 key;
- one-time prekeys = Olm one-time keys (their Olm key ids, as integers);
- signed prekey = the Olm fallback key, signed with the account's Ed25519 key over its raw
  32 bytes (the server verifies exactly that). Olm accepts a pre-key message made with the
  fallback key just like one made with a one-time key, so it is the last resort a claim
  hands out when a device has no one-time key left.

Envelope types (the `type` of a per-device envelope):
- 0: an Olm pre-key message (the session is new to the recipient);
- 1: an Olm normal message;
- 2: no Olm payload: the recipient already holds the Megolm session of this message's
  `body` (see client.py: group messages always address every device, so the server's
  device-coverage check tells the sender about devices it does not know yet).

Every decrypted payload is JSON naming its conversation (and, for Olm, the sending and the
receiving device); a payload whose names do not match the frame it came in is refused.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass

import vodozemac as vz

from siphera_client.store import Store

ENVELOPE_PREKEY = 0
ENVELOPE_NORMAL = 1
ENVELOPE_KEY_HELD = 2

MEGOLM_ALGORITHM = "megolm.v1"
# Rotate a conversation's outbound Megolm session after this many messages or this age
# (as Matrix clients do), and whenever a device that held it is gone.
MEGOLM_ROTATE_MESSAGES = 100
MEGOLM_ROTATE_SECONDS = 7 * 24 * 3600


class CryptoError(Exception):
    """A message that cannot be decrypted or authenticated."""


class IdentityChanged(CryptoError):
    """The directory announced other keys for a device already met (device ids are never
    reused, so this is either a server bug or an attack)."""


def std_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _vz_to_raw(text: str) -> bytes:
    """vodozemac prints unpadded base64."""
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _raw_to_vz(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _key_id(olm_key_id: str) -> int:
    """Olm key ids are unpadded base64 of a big-endian u64 counter; the server takes an int."""
    value = int.from_bytes(_vz_to_raw(olm_key_id), "big")
    if value >= 2**31:
        raise CryptoError("Olm key id out of the server's range.")
    return value


def _device_key(user_id: str, device_id: int) -> str:
    return f"{user_id}:{device_id}"


@dataclass(frozen=True)
class Peer:
    """A device met through the directory, with its pinned public keys (standard b64)."""

    user_id: str
    device_id: int
    identity_key: str
    signing_key: str

    @property
    def key(self) -> str:
        return _device_key(self.user_id, self.device_id)


class Crypto:
    """The account, Olm sessions and Megolm sessions of this device. Call `flush()` (the
    client does, through `save`) to write them to the store."""

    def __init__(self, store: Store):
        self.store = store
        data = store.data
        key = store.pickle_key
        self.account = (
            vz.Account.from_pickle(data["account"], key) if "account" in data else vz.Account()
        )
        self._olm: dict[str, list[tuple[vz.Session, float]]] = {
            peer: [(vz.Session.from_pickle(s["pickle"], key), s["used"]) for s in sessions]
            for peer, sessions in data.get("olm", {}).items()
        }
        self._outbound = {
            conv: (vz.GroupSession.from_pickle(o["pickle"], key), o)
            for conv, o in data.get("outbound", {}).items()
        }
        self._inbound = {
            sid: (vz.InboundGroupSession.from_pickle(i["pickle"], key), i)
            for sid, i in data.get("inbound", {}).items()
        }
        data.setdefault("pins", {})

    def flush(self) -> None:
        """Put every pickle into the store's data (the caller saves the file)."""
        key = self.store.pickle_key
        data = self.store.data
        data["account"] = self.account.pickle(key)
        data["olm"] = {
            peer: [{"pickle": s.pickle(key), "used": used} for s, used in sessions]
            for peer, sessions in self._olm.items()
        }
        data["outbound"] = {
            conv: {**meta, "pickle": session.pickle(key)}
            for conv, (session, meta) in self._outbound.items()
        }
        data["inbound"] = {
            sid: {**meta, "pickle": session.pickle(key)}
            for sid, (session, meta) in self._inbound.items()
        }

    # --- this device's public keys ----------------------------------------------------------
    @property
    def identity_key(self) -> str:
        return std_b64(self.account.curve25519_key.to_bytes())

    @property
    def signing_key(self) -> str:
        return std_b64(_vz_to_raw(self.account.ed25519_key.to_base64()))

    def _sign(self, raw: bytes) -> str:
        return std_b64(_vz_to_raw(self.account.sign(raw).to_base64()))

    def new_signed_prekey(self) -> dict:
        """A new Olm fallback key, signed over its raw bytes. The previous fallback key
        keeps working (vodozemac keeps one previous) for messages already on their way."""
        self.account.generate_fallback_key()
        ((olm_id, public),) = self.account.fallback_key.items()
        raw = public.to_bytes()
        return {"id": _key_id(olm_id), "key": std_b64(raw), "signature": self._sign(raw)}

    def new_one_time_prekeys(self, count: int) -> list[dict]:
        """`count` new Olm one-time keys plus any generated but not yet published."""
        if count > 0:
            self.account.generate_one_time_keys(count)
        return [
            {"id": _key_id(olm_id), "key": std_b64(public.to_bytes())}
            for olm_id, public in sorted(self.account.one_time_keys.items())
        ]

    def mark_published(self) -> None:
        """The server holds the keys last generated: stop offering them again."""
        self.account.mark_keys_as_published()

    @property
    def one_time_target(self) -> int:
        """How many one-time keys to keep on the server (vodozemac's recommendation)."""
        return self.account.max_number_of_one_time_keys

    def registration(self, name: str, one_time: int | None = None) -> dict:
        """The body of POST /api/v1/devices (public halves only)."""
        return {
            "name": name,
            "identity_key": self.identity_key,
            "signing_key": self.signing_key,
            "signed_prekey": self.new_signed_prekey(),
            "one_time_prekeys": self.new_one_time_prekeys(
                self.one_time_target if one_time is None else one_time
            ),
        }

    # --- pinned keys of other devices ----------------------------------------------------
    def pin(self, user_id: str, device_id: int, identity_key: str, signing_key: str) -> Peer:
        """Remember a device's keys the first time it is seen (trust on first use); refuse
        other keys for it later."""
        pins = self.store.data["pins"]
        key = _device_key(user_id, device_id)
        held = pins.get(key)
        if held is None:
            pins[key] = {"identity_key": identity_key, "signing_key": signing_key}
        elif held != {"identity_key": identity_key, "signing_key": signing_key}:
            raise IdentityChanged(
                f"Device {device_id} of user {user_id} now announces other keys; refusing."
            )
        return Peer(user_id, device_id, identity_key, signing_key)

    def pinned(self, user_id: str, device_id: int) -> Peer | None:
        held = self.store.data["pins"].get(_device_key(user_id, device_id))
        return Peer(user_id, device_id, **held) if held else None

    # --- Olm (pairwise) -------------------------------------------------------------------
    def has_session(self, peer: Peer) -> bool:
        return bool(self._olm.get(peer.key))

    def drop_sessions(self, user_id: str, device_id: int) -> None:
        self._olm.pop(_device_key(user_id, device_id), None)

    def start_session(self, peer: Peer, bundle: dict) -> bool:
        """Open an outbound Olm session from a claimed bundle: its one-time prekey, or the
        signed prekey when none was left (whose signature must verify with the pinned
        signing key). Returns whether a one-time key was used."""
        signed = bundle.get("signed_prekey")
        one_time = bundle.get("one_time_prekey")
        if signed is not None:
            try:
                vz.Ed25519PublicKey.from_base64(
                    _raw_to_vz(base64.b64decode(peer.signing_key))
                ).verify_signature(
                    base64.b64decode(signed["key"]),
                    vz.Ed25519Signature.from_base64(
                        _raw_to_vz(base64.b64decode(signed["signature"]))
                    ),
                )
            except (vz.SignatureException, vz.KeyException, ValueError) as exc:
                raise CryptoError(f"Signed prekey of {peer.key} does not verify: {exc}") from None
        prekey = one_time or signed
        if prekey is None:
            raise CryptoError(f"The bundle of {peer.key} has no prekey at all.")
        session = self.account.create_outbound_session(
            vz.Curve25519PublicKey.from_bytes(base64.b64decode(peer.identity_key)),
            vz.Curve25519PublicKey.from_bytes(base64.b64decode(prekey["key"])),
        )
        self._olm.setdefault(peer.key, []).insert(0, (session, time.time()))
        return one_time is not None

    def olm_encrypt(self, peer: Peer, payload: dict) -> tuple[int, bytes]:
        """Encrypt a JSON payload for one device with its most recently used session."""
        sessions = self._olm.get(peer.key)
        if not sessions:
            raise CryptoError(f"No Olm session with {peer.key}.")
        session, _ = sessions[0]
        message_type, ciphertext = session.encrypt(_json(payload)).to_parts()
        sessions[0] = (session, time.time())
        return message_type, ciphertext

    def olm_decrypt(self, peer: Peer, message_type: int, ciphertext: bytes) -> dict:
        """Decrypt an envelope from `peer`: with a session we hold, or — for a pre-key
        message — a new inbound session (consuming our one-time key, or using our fallback
        key). Olm authenticates the sender's identity key, which is the pinned one."""
        if message_type not in (ENVELOPE_PREKEY, ENVELOPE_NORMAL):
            raise CryptoError(f"Not an Olm envelope type: {message_type}.")
        try:
            message = vz.AnyOlmMessage.from_parts(message_type, ciphertext)
        except (vz.DecodeException, ValueError) as exc:
            raise CryptoError(f"Malformed Olm message: {exc}") from None
        sessions = self._olm.setdefault(peer.key, [])
        pre_key = message.to_pre_key() if message_type == ENVELOPE_PREKEY else None
        for index, (session, _) in enumerate(sessions):
            if pre_key is not None and not session.session_matches(pre_key):
                continue
            try:
                plaintext = session.decrypt(message)
            except vz.OlmDecryptionException:
                continue
            sessions.pop(index)
            sessions.insert(0, (session, time.time()))
            return _parse(plaintext)
        if pre_key is None:
            raise CryptoError(f"No Olm session with {peer.key} decrypts this message.")
        try:
            session, plaintext = self.account.create_inbound_session(
                vz.Curve25519PublicKey.from_bytes(base64.b64decode(peer.identity_key)), pre_key
            )
        except (vz.SessionCreationException, vz.KeyException) as exc:
            raise CryptoError(f"Cannot open a session from {peer.key}: {exc}") from None
        sessions.insert(0, (session, time.time()))
        return _parse(plaintext)

    # --- Megolm (group) ---------------------------------------------------------------------
    def outbound_group(self, conversation: str) -> tuple[vz.GroupSession, dict]:
        """This device's current Megolm session for a conversation (a new one when none,
        or when the current one is due for rotation)."""
        held = self._outbound.get(conversation)
        if held is not None:
            _, meta = held
            due = (
                meta["sent"] >= MEGOLM_ROTATE_MESSAGES
                or time.time() - meta["created"] >= MEGOLM_ROTATE_SECONDS
            )
            if not due:
                return held
        session = vz.GroupSession()
        meta = {"created": time.time(), "sent": 0, "shared": []}
        self._outbound[conversation] = (session, meta)
        # Our own other devices learn it like anyone else; this device keeps an inbound
        # copy so that it can read the history it sent.
        self._add_inbound(
            session.session_key,
            conversation,
            self.store.data["user_id"],
            self.store.data["device_id"],
        )
        return session, meta

    def has_outbound(self, conversation: str) -> bool:
        return conversation in self._outbound

    def discard_outbound(self, conversation: str) -> None:
        """Stop using the conversation's session (a member or a device left)."""
        self._outbound.pop(conversation, None)

    def discard_outbound_shared_with(self, peer_keys: set[str], conversation=None) -> int:
        """Stop using every outbound session (of `conversation`, or of all) that one of
        `peer_keys` ("user:device") holds. Returns how many were dropped."""
        doomed = [
            conv
            for conv, (_, meta) in self._outbound.items()
            if (conversation is None or conv == conversation) and peer_keys & set(meta["shared"])
        ]
        for conv in doomed:
            del self._outbound[conv]
        return len(doomed)

    def room_key(self, conversation: str, peer: Peer) -> dict:
        """The Olm payload that hands `peer` the current Megolm session, from its current
        index on (earlier messages stay unreadable to it)."""
        session, _ = self.outbound_group(conversation)
        return {
            "kind": "room_key",
            "conversation": conversation,
            "algorithm": MEGOLM_ALGORITHM,
            "session_id": session.session_id,
            "session_key": session.session_key.to_base64(),
            **self._addressing(peer),
        }

    def group_encrypt(self, conversation: str, payload: dict) -> bytes:
        """The message `body`: the Megolm ciphertext with the session id receivers look up."""
        session, meta = self.outbound_group(conversation)
        ciphertext = session.encrypt(_json({**payload, "conversation": conversation}))
        meta["sent"] += 1
        return _json(
            {
                "v": 1,
                "algorithm": MEGOLM_ALGORITHM,
                "session_id": session.session_id,
                "ciphertext": ciphertext.to_base64(),
            }
        )

    def accept_room_key(self, payload: dict, sender: Peer, conversation: str) -> None:
        """Store a Megolm session handed over by `sender` through Olm. It is bound to that
        device and conversation: a body decrypted with it must come from both."""
        if payload.get("conversation") != conversation:
            raise CryptoError("A room key for another conversation.")
        try:
            key = vz.SessionKey(payload["session_key"])
            session = vz.InboundGroupSession(key)
        except (KeyError, vz.SessionKeyDecodeException, ValueError) as exc:
            raise CryptoError(f"Malformed room key: {exc}") from None
        if session.session_id != payload.get("session_id"):
            raise CryptoError("The room key does not match its session id.")
        held = self._inbound.get(session.session_id)
        if held is not None:
            old, meta = held
            if (meta["user_id"], meta["device_id"]) != (sender.user_id, sender.device_id):
                raise CryptoError("A room key for a session another device owns.")
            if old.first_known_index <= session.first_known_index:
                return  # we already read from an earlier index on
        self._inbound[session.session_id] = (
            session,
            {
                "conversation": conversation,
                "user_id": sender.user_id,
                "device_id": sender.device_id,
            },
        )

    def _add_inbound(self, key: vz.SessionKey, conversation: str, user_id: str, device_id: int):
        session = vz.InboundGroupSession(key)
        self._inbound[session.session_id] = (
            session,
            {"conversation": conversation, "user_id": user_id, "device_id": device_id},
        )

    def group_decrypt(self, body: bytes, *, conversation: str, user_id: str, device_id: int):
        """Decrypt a message `body` sent by (user_id, device_id) in `conversation`."""
        try:
            header = json.loads(body)
            session_id = header["session_id"]
            message = vz.MegolmMessage.from_base64(header["ciphertext"])
        except (ValueError, KeyError, TypeError, vz.DecodeException) as exc:
            raise CryptoError(f"Malformed group message: {exc}") from None
        if header.get("algorithm") != MEGOLM_ALGORITHM:
            raise CryptoError(f"Unknown algorithm {header.get('algorithm')!r}.")
        held = self._inbound.get(session_id)
        if held is None:
            raise CryptoError(f"No room key for Megolm session {session_id}.")
        session, meta = held
        if (meta["conversation"], meta["user_id"], meta["device_id"]) != (
            conversation,
            user_id,
            device_id,
        ):
            raise CryptoError("The Megolm session belongs to another sender or conversation.")
        try:
            decrypted = session.decrypt(message)
        except vz.MegolmDecryptionException as exc:
            raise CryptoError(f"Megolm: {exc}") from None
        payload = _parse(decrypted.plaintext)
        if payload.get("conversation") != conversation:
            raise CryptoError("The message names another conversation.")
        return payload

    def _addressing(self, peer: Peer) -> dict:
        data = self.store.data
        return {
            "from": {"user_id": data["user_id"], "device_id": data["device_id"]},
            "to": {"user_id": peer.user_id, "device_id": peer.device_id},
        }

    def direct_payload(self, conversation: str, peer: Peer, content: dict) -> dict:
        return {"kind": "text", "conversation": conversation, **content, **self._addressing(peer)}

    def check_addressing(self, payload: dict, sender: Peer, conversation: str) -> None:
        """An Olm payload must name this conversation, its sender and this device."""
        data = self.store.data
        if (
            payload.get("conversation") != conversation
            or payload.get("from") != {"user_id": sender.user_id, "device_id": sender.device_id}
            or payload.get("to") != {"user_id": data["user_id"], "device_id": data["device_id"]}
        ):
            raise CryptoError("The envelope is addressed to another device or conversation.")


def _json(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _parse(plaintext: bytes) -> dict:
    try:
        payload = json.loads(plaintext)
    except ValueError:
        raise CryptoError("The decrypted payload is not JSON.") from None
    if not isinstance(payload, dict):
        raise CryptoError("The decrypted payload is not a JSON object.")
    return payload
