"""The `csrf_token` of templates: Django's token, made with one read of the OS's random
source instead of one per character.

Django masks the CSRF secret anew on every render (so a compressed page does not leak it,
BREACH), drawing the 32-character mask with `secrets.choice`, one `getrandom` system call
per character, and 32 more for a new secret. Each of those calls releases the GIL: under
load, with the event loop and other requests' threads waiting for it, the portal's
dashboard handed the GIL over some 60 times per page for its one sign-out form. Here each
random string costs one call. The tokens are Django's own format (mask + cipher of the
secret over CSRF_ALLOWED_CHARS), checked by Django's unchanged CsrfViewMiddleware; the
mask stays uniform (bytes past the largest multiple of the alphabet's size are dropped,
not folded) and new per render; the secret's cookie is set and renewed as Django does.
"""

from __future__ import annotations

import os

from django.http import HttpRequest
from django.middleware.csrf import CSRF_ALLOWED_CHARS, CSRF_SECRET_LENGTH
from django.utils.functional import SimpleLazyObject

_INDEX = {char: i for i, char in enumerate(CSRF_ALLOWED_CHARS)}
_SIZE = len(CSRF_ALLOWED_CHARS)
# Bytes below this map onto the alphabet evenly (248 = 4 x 62); the rest are dropped.
_UNBIASED = 256 - 256 % _SIZE


def random_string(length: int = CSRF_SECRET_LENGTH) -> str:
    """`length` characters of CSRF_ALLOWED_CHARS, each uniform and independent, from one
    os.urandom read (rarely two: a byte is dropped with probability 8/256)."""
    chars: list[str] = []
    while len(chars) < length:
        chars.extend(CSRF_ALLOWED_CHARS[b % _SIZE] for b in os.urandom(length + 8) if b < _UNBIASED)
    return "".join(chars[:length])


def _mask(secret: str) -> str:
    mask = random_string()
    cipher = "".join(
        CSRF_ALLOWED_CHARS[(_INDEX[s] + _INDEX[m]) % _SIZE]
        for s, m in zip(secret, mask, strict=True)
    )
    return mask + cipher


def get_token(request: HttpRequest) -> str:
    """django.middleware.csrf.get_token with one random read per string: the request's
    secret (a new one, sent as the cookie, when the request has none), masked anew."""
    secret = request.META.get("CSRF_COOKIE")
    if secret is None:
        secret = random_string()
        request.META["CSRF_COOKIE"] = secret
    # As Django does: the cookie is sent again with the response, renewing its expiry.
    request.META["CSRF_COOKIE_NEEDS_UPDATE"] = True
    return _mask(secret)


def csrf(request: HttpRequest) -> dict:
    """Context processor replacing Django's built-in `csrf` one (listed after it in
    TEMPLATES, so its `csrf_token` wins); evaluated only by a template that uses it."""
    return {"csrf_token": SimpleLazyObject(lambda: get_token(request))}
