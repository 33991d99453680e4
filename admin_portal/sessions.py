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
from django.contrib.auth import update_session_auth_hash
from django.http import HttpRequest

from orgs.accounts.models import User
from orgs.services import audit, policy, portal_sessions
from siphera.net import client_ip

AUTH_AT = "portal_auth_at"
PENDING = "portal_pending"
PENDING_TTL_SECONDS = 300  # to enter the code (or enrol) after the password was accepted


def start(request: HttpRequest, user) -> None:
    """Sign `user` in: a new session key (no fixation), expiring with the org's policy."""
    request.session.pop(PENDING, None)
    django_login(request, user, backend="orgs.services.auth.PortalUserBackend")
    request.session[AUTH_AT] = int(time.time())
    request.session.set_expiry(policy.session_lifetime_seconds())
    # django_login gave the session its final key (the admins' list names it by that)
    portal_sessions.do_record_session(
        user, request.session.session_key, actor=audit.Actor.from_request(request, user)
    )


# How often a session's "last used" is written, at most (per web process): a page view
# must not cost a write.
TOUCH_EVERY_SECONDS = 60
_touched: dict[str, float] = {}


def touch(request: HttpRequest) -> None:
    """Note that this signed-in session was used (orgs.services.portal_sessions), at most
    once a minute per session and process."""
    key = request.session.session_key
    now = time.monotonic()
    if not key or now - _touched.get(key, -TOUCH_EVERY_SECONDS) < TOUCH_EVERY_SECONDS:
        return
    if len(_touched) > 10_000:
        _touched.clear()  # bounded: an entry only saves a write
    _touched[key] = now
    portal_sessions.do_touch_session(key, ip=client_ip(request))


def keep_after_password_change(request: HttpRequest) -> None:
    """The user changed their own password in this browser: keep this session (a new key,
    the new auth hash) while every other one ends."""
    old_key = request.session.session_key
    user = User.objects.get(pk=request.user.pk)  # with the new password hash
    update_session_auth_hash(request, user)  # a new key, saved with the response
    portal_sessions.do_rekey_session(old_key, request.session.session_key)


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
