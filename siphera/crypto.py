"""Secrets the server must read back (TOTP seeds, IdP/Stripe/TURN secrets, transcripts)
are encrypted at rest with a rotating key ring (DESIGN invariant 4).

`SECRET_KEYS` lists the ring, newest first, comma-separated. Each entry is key material
(a Fernet key from `Fernet.generate_key()`, or any long random string) from which a
Fernet key is derived with HKDF-SHA256. The newest key encrypts; every key decrypts, so a
new key can be put in front at any time, `rotate()` re-encrypts stored values under it,
and an old key is removed only once nothing uses it any more.
"""

from __future__ import annotations

import base64
import functools

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings

__all__ = ["DecryptionError", "decrypt", "encrypt", "key_ring", "needs_rotation", "rotate"]

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
def _ring(materials: tuple[str, ...]) -> tuple[MultiFernet, Fernet]:
    if not materials:
        raise RuntimeError("SECRET_KEYS is empty: at least one key is needed.")
    keys = [_derive(m) for m in materials]
    return MultiFernet(keys), keys[0]


def key_ring() -> MultiFernet:
    """The ring from settings.SECRET_KEYS (newest first)."""
    return _ring(tuple(settings.SECRET_KEYS))[0]


def encrypt(plaintext: bytes | str) -> str:
    """Encrypt (and authenticate) with the newest key; returns ASCII text for a TextField."""
    data = plaintext.encode() if isinstance(plaintext, str) else plaintext
    return key_ring().encrypt(data).decode("ascii")


def decrypt(token: str) -> bytes:
    """Decrypt with whichever key of the ring made `token`."""
    try:
        return key_ring().decrypt(token.encode("ascii"))
    except (InvalidToken, UnicodeEncodeError):
        raise DecryptionError("no key of SECRET_KEYS decrypts this value") from None


def needs_rotation(token: str) -> bool:
    """Whether `token` was made with a key other than the newest."""
    _, newest = _ring(tuple(settings.SECRET_KEYS))
    try:
        newest.decrypt(token.encode("ascii"))
    except InvalidToken:
        return True
    return False


def rotate(token: str) -> str:
    """`token` re-encrypted under the newest key (same plaintext)."""
    try:
        return key_ring().rotate(token.encode("ascii")).decode("ascii")
    except InvalidToken:
        raise DecryptionError("no key of SECRET_KEYS decrypts this value") from None
