"""Bearer secrets: random, prefixed (so logs can scrub them), stored only as sha256."""

import hashlib
import secrets

DEVICE_TOKEN_PREFIX = "sph_d_"  # noqa: S105 (a prefix, not a secret)
LOGIN_GRANT_PREFIX = "sph_g_"


def new_secret(prefix: str) -> tuple[str, str]:
    """Return (secret, its hash). 256 random bits, so a plain sha256 suffices as the hash."""
    secret = prefix + secrets.token_urlsafe(32)
    return secret, hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
