"""Secrets the server must read back (TOTP seeds, IdP/Stripe/TURN secrets, transcripts)
are encrypted at rest with a rotating key ring (DESIGN invariant 4).

The ring is siphera.keyring (the key-ring file, then `SECRET_KEYS`). Each key is key
material (a Fernet key from `Fernet.generate_key()`, or any long random string) from
which a Fernet key is derived with HKDF-SHA256. The active key encrypts; every key of the
ring (pending, active, old) decrypts, so `rotate()` re-encrypts stored values under the
active key, and an old key is retired only once nothing uses it any more
(orgs.services.key_rotation). Where encrypted values live is registered in
siphera.encrypted_at_rest.
"""

from __future__ import annotations

import base64
import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from siphera import keyring

__all__ = [
    "DecryptionError",
    "decrypt",
    "encrypt",
    "key_id_of",
    "key_ring",
    "needs_rotation",
    "rotate",
]

_HKDF_INFO = b"siphera secrets at rest v1"


class DecryptionError(Exception):
    """No key of the ring opens this value (a key was removed too early, or it was
    tampered with)."""


def _derive(material: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(
        material.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


@functools.cache
def _ring(materials: tuple[str, ...]) -> tuple[MultiFernet, Fernet, tuple[tuple[str, Fernet], ...]]:
    if not materials:
        raise RuntimeError("SECRET_KEYS is empty: at least one key is needed.")
    keys = [_derive(m) for m in materials]
    by_id = tuple((keyring.key_id(m), k) for m, k in zip(materials, keys, strict=True))
    return MultiFernet(keys), keys[0], by_id


def key_ring() -> MultiFernet:
    """The ring (siphera.keyring): the active key first, then pending and old keys."""
    return _ring(keyring.materials())[0]


def encrypt(plaintext: bytes | str) -> str:
    """Encrypt (and authenticate) with the active key; returns ASCII text for a TextField."""
    data = plaintext.encode() if isinstance(plaintext, str) else plaintext
    return key_ring().encrypt(data).decode("ascii")


def decrypt(token: str) -> bytes:
    """Decrypt with whichever key of the ring made `token`."""
    try:
        return key_ring().decrypt(token.encode("ascii"))
    except (InvalidToken, UnicodeEncodeError):
        raise DecryptionError("no key of SECRET_KEYS decrypts this value") from None


def needs_rotation(token: str) -> bool:
    """Whether `token` was made with a key other than the active one."""
    _, newest, _ = _ring(keyring.materials())
    try:
        newest.decrypt(token.encode("ascii"))
    except InvalidToken:
        return True
    return False


def rotate(token: str) -> str:
    """`token` re-encrypted under the active key (same plaintext)."""
    try:
        return key_ring().rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken:
        raise DecryptionError("no key of SECRET_KEYS decrypts this value") from None


def key_id_of(token: str) -> str | None:
    """The id (siphera.keyring) of the ring's key that made `token`, or None when no key
    of the ring opens it."""
    _, _, by_id = _ring(keyring.materials())
    try:
        data = token.encode("ascii")
    except UnicodeEncodeError:
        return None
    for kid, key in by_id:
        try:
            key.decrypt(data)
        except InvalidToken:
            continue
        return kid
    return None
