"""Portal sessions: started only through here, so each carries its sign-in time and the
org's session lifetime; and the half-finished sign-in (password accepted, second factor
pending) kept between the two steps.

A session ends when the org's lifetime (orgs.services.policy) has passed since sign-in —
checked on every request, so shortening the policy shortens live sessions too — or when
the user is deactivated (`User.session_epoch` is part of the session's auth hash).
"""

from __future__ import annotations

import time

from django.contrib.auth import login as django_login
from django.http import HttpRequest

from orgs.services import policy

AUTH_AT = "portal_auth_at"
PENDING = "portal_pending"
PENDING_TTL_SECONDS = 300  # to enter the code (or enrol) after the password was accepted


def start(request: HttpRequest, user) -> None:
    """Sign `user` in: a new session key (no fixation), expiring with the org's policy."""
    request.session.pop(PENDING, None)
    django_login(request, user, backend="orgs.services.auth.PortalUserBackend")
    request.session[AUTH_AT] = int(time.time())
    request.session.set_expiry(policy.session_lifetime_seconds())


def is_expired(request: HttpRequest) -> bool:
    started = request.session.get(AUTH_AT)
    if started is None:
        return True
    return time.time() - started > policy.session_lifetime_seconds()


def set_pending(
    request: HttpRequest, user, *, enroll: bool, next_url: str, method: str = "password"
) -> None:
    """Remember that `user` passed the first step (`method`: a password, or an SSO
    sign-in "saml"/"oidc") and owes a code (or enrolment)."""
    request.session.cycle_key()
    request.session[PENDING] = {
        "user": str(user.pk),
        "at": int(time.time()),
        "enroll": enroll,
        "next": next_url,
        "method": method,
    }


def pending(request: HttpRequest) -> dict | None:
    """The pending sign-in of this browser, if it is recent enough."""
    state = request.session.get(PENDING)
    if not state or time.time() - state.get("at", 0) > PENDING_TTL_SECONDS:
        request.session.pop(PENDING, None)
        return None
    return state


def clear_pending(request: HttpRequest) -> None:
    request.session.pop(PENDING, None)
