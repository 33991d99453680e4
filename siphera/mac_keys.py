"""HMAC keys derived from the server's key ring (siphera.keyring: the key-ring file, then
SECRET_KEYS), one family per purpose.

Each key of the ring yields, through HKDF-SHA256 with the purpose in its `info`, a 32-byte
MAC key that is independent of the encryption key and of every other purpose's key. The
active key signs; every key of the ring (pending, active, old) still verifies, so what
older keys signed keeps verifying while they stay in the ring.

A signature carries the short public id of the key that made it (the first 16 hex digits
of SHA-256 over the derived key: it names the key without revealing it), so a verifier
picks the right key instead of trying them all.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from siphera import keyring

__all__ = ["MacKey", "find", "newest", "purpose_id", "ring_id"]


@dataclass(frozen=True)
class MacKey:
    """One derived key: `id` is public, `secret` never leaves the process."""

    id: str
    secret: bytes = field(repr=False)

    def sign(self, data: bytes) -> str:
        """HMAC-SHA256 of `data`, lower-case hex."""
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()

    def verifies(self, data: bytes, mac: str) -> bool:
        """Whether `mac` is this key's HMAC of `data` (constant-time comparison)."""
        return hmac.compare_digest(self.sign(data), mac or "")


@functools.cache
def _keys(purpose: str, materials: tuple[str, ...]) -> tuple[MacKey, ...]:
    if not materials:
        raise RuntimeError("SECRET_KEYS is empty: at least one key is needed.")
    info = f"siphera mac v1: {purpose}".encode()
    keys = []
    for material in materials:
        secret = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(
            material.encode()
        )
        keys.append(MacKey(hashlib.sha256(secret).hexdigest()[:16], secret))
    return tuple(keys)


def ring(purpose: str) -> tuple[MacKey, ...]:
    """The purpose's keys, the signing one first (one per key of the ring)."""
    return _keys(purpose, keyring.materials())


def newest(purpose: str) -> MacKey:
    """The key that signs now: derived from the ring's active key."""
    return ring(purpose)[0]


def purpose_id(purpose: str, material: str) -> str:
    """The id a key of the ring has as `purpose`'s MAC key (e.g. an audit entry's
    `key_id`)."""
    return _keys(purpose, (material,))[0].id


def ring_id(purpose: str, mac_key_id: str) -> str | None:
    """The ring key id (siphera.keyring) behind `purpose`'s MAC key `mac_key_id`, if the
    ring still has it."""
    for key in keyring.ring():
        if purpose_id(purpose, key.material) == mac_key_id:
            return key.id
    return None


def find(purpose: str, key_id: str) -> MacKey | None:
    """The key with this id, or None when no key of the ring has it (removed, or never
    ours)."""
    return next((key for key in ring(purpose) if key.id == key_id), None)
