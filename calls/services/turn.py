"""TURN relay credentials in coturn's REST-API scheme ("use-auth-secret",
draft-uberti-behave-turn-rest).

Siphera and the TURN servers share secrets (`TURN_SECRETS`); nothing is stored per user.
A credential is

    username   = "<unix time it expires>:<user id>"
    credential = base64(HMAC-SHA1(secret, username))

and coturn, configured with `use-auth-secret` and the same `static-auth-secret`, recomputes
the HMAC and refuses a username whose time has passed. coturn checks only when an
allocation is made: a call that outlives its credential keeps its relay.

Guarantees:
- The newest secret (the first of `TURN_SECRETS`) signs; the others only tell the operator
  which secrets coturn must still accept while a rotation is under way
  (docs/operations.md, "TURN").
- No secret or credential is ever logged or put into an error.
- Without TURN configured the caller gets a 503 `turn_not_configured`, never a 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from django.conf import settings

from siphera import ratelimit
from siphera.api_errors import ApiError

TURN_NOT_CONFIGURED = "turn_not_configured"  # 503: this deployment hands out no TURN


@dataclass(frozen=True)
class TurnCredentials:
    urls: list[str]
    username: str
    credential: str
    ttl: int  # seconds from issue until coturn refuses a new allocation with it


def sign(secret: str, username: str) -> str:
    """coturn's password for `username` under `secret`: base64 of HMAC-SHA1."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def make_credentials(
    user_id: str, *, urls: list[str], secret: str, ttl: int, now: float
) -> TurnCredentials:
    """Credentials for `user_id` valid from `now` for `ttl` seconds, signed with `secret`."""
    username = f"{int(now) + ttl}:{user_id}"
    return TurnCredentials(
        urls=list(urls), username=username, credential=sign(secret, username), ttl=ttl
    )


def is_configured() -> bool:
    # settings.py refuses URLs without secrets (and the reverse) at start-up.
    return bool(settings.TURN_URLS and settings.TURN_SECRETS)


def issue_credentials(user) -> TurnCredentials:
    """Short-lived TURN credentials for `user`, signed with the newest secret.

    Raises a 503 `turn_not_configured` ApiError when the deployment has no TURN, and a
    429 `rate_limited` one past the `calls.turn.user` limit (counted only when TURN is
    configured: a client probing a deployment without TURN spends nothing)."""
    if not is_configured():
        raise ApiError(
            503,
            TURN_NOT_CONFIGURED,
            "This server hands out no TURN credentials (TURN_URLS and TURN_SECRETS are "
            "not set); calls can still connect without a relay.",
        )
    ratelimit.enforce_named("calls.turn.user", user.pk)
    return make_credentials(
        str(user.pk),
        urls=settings.TURN_URLS,
        secret=settings.TURN_SECRETS[0],
        ttl=settings.TURN_TTL_SECONDS,
        now=time.time(),
    )
