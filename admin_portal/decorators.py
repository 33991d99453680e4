"""How every portal view is wrapped: security headers, service errors as HTML pages, and
the permission check (`@portal_perm(Perm.X)`) — permissions come from orgs.roles, never
from role names."""

from __future__ import annotations

import functools
from collections.abc import Callable

from django.contrib import messages
from django.contrib.auth import logout as end_session
from django.contrib.auth.views import redirect_to_login
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.cache import add_never_cache_headers

from admin_portal import sessions
from orgs.roles import Perm, has_perm
from siphera import ratelimit
from siphera.api_errors import ApiError

# Everything the portal loads comes from its own host (PITFALLS 25): a forgotten external
# URL is blocked by the browser, not just missed in review. No scripts at all.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)

View = Callable[..., HttpResponse]


def secure_headers(response: HttpResponse) -> HttpResponse:
    """Pages show org data: never cached, never framed, nothing loaded from elsewhere."""
    add_never_cache_headers(response)
    response.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.setdefault("Referrer-Policy", "same-origin")
    response.setdefault("X-Content-Type-Options", "nosniff")
    return response


def portal_view(view: View) -> View:
    """Base wrapper of every portal view: service errors become HTML (a 404-shaped
    ApiError is the ordinary 404 page, so another org's ids look like bad ids)."""

    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        try:
            response = view(request, *args, **kwargs)
        except ApiError as exc:
            if exc.status_code == 404:
                raise Http404(exc.message) from None
            response = render(
                request,
                "portal/error.html",
                {"title": "Request refused", "message": exc.message},
                status=exc.status_code,
            )
            for name, value in exc.headers.items():
                response[name] = value
        return secure_headers(response)

    return wrapped


def portal_public(view: View) -> View:
    """A page anyone may open (signing in and out, accepting an invitation), said
    explicitly: the permission registry lists a portal view wrapped by neither this nor
    `portal_perm` as undeclared, and the permission matrix test fails on it."""
    guarded = portal_view(view)
    guarded.required_perms = ()
    return guarded


def portal_perm(*perms: Perm) -> Callable[[View], View]:
    """Require a signed-in user whose role grants `portal.access` and every one of `perms`.

    Anonymous, or a session past the org's lifetime -> redirect to the login page (with
    `next`); signed in without the permission -> a 403 page. Checked on every request, so
    a role change, a deactivation or a shorter session policy takes effect at once. Each
    signed-in request spends the user's `portal.user` rate limit (429 page when over).

    The codes are kept on the view as `required_perms`: the permission registry
    (orgs.perm_registry) reads them for the permission matrix test.
    """
    needed = (Perm.PORTAL_ACCESS, *perms)

    def decorate(view: View) -> View:
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            user = request.user
            if user.is_authenticated and sessions.is_expired(request):
                end_session(request)
                messages.info(request, "Your session has ended; please sign in again.")
                user = request.user
            if not user.is_authenticated:
                return redirect_to_login(request.get_full_path())
            ratelimit.enforce_named("portal.user", user.pk)
            sessions.touch(request)
            missing = [perm for perm in needed if not has_perm(user, perm)]
            if missing:
                return render(
                    request,
                    "portal/error.html",
                    {
                        "title": "Not allowed",
                        "message": "Your role does not include access to this page.",
                        "missing": missing,
                    },
                    status=403,
                )
            return view(request, *args, **kwargs)

        guarded = portal_view(wrapped)
        guarded.required_perms = needed
        return guarded

    return decorate
