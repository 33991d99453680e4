"""The OpenID Connect callback: where the org's IdP sends the browser back with a code.

Everything protocol-specific happens in orgs.sso.oidc; this view only reads the query,
turns refusals into the sign-in error page and hands a verified `Assertion` to
`sso_views.complete_sign_in`. The callback is a top-level GET from the IdP's site, so it
needs no CSRF token: `state` (single-use, unguessable, kept server-side) is the check.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET

from admin_portal import sso_views
from admin_portal.decorators import portal_public
from orgs.sso import flow, oidc
from orgs.sso.models import IdentityProvider
from siphera.api_errors import ApiError

# Query values an IdP sends us are short; longer ones are refused unread.
_MAX_PARAM = 2000


@require_GET
@portal_public
def callback(request: HttpRequest) -> HttpResponse:
    """GET /sso/oidc/callback?code=...&state=... (or ?error=...&state=...)."""
    state = request.GET.get("state", "")
    if not state or len(state) > _MAX_PARAM:
        return sso_views.refuse(
            request, "sso_request_unknown", "The identity provider's answer names no sign-in.", 400
        )
    error = request.GET.get("error", "")
    try:
        if error:
            # Use the sign-in up, so the same state cannot be answered again.
            flow.check_take_request(state, kind=IdentityProvider.OIDC)
            described = request.GET.get("error_description", "")[:300]
            message = _error_message(error[:100], described)
            return sso_views.refuse(request, f"sso_idp_{_code_part(error)}", message)
        sso_request, assertion = oidc.complete(
            request, state=state, code=request.GET.get("code", "")[: _MAX_PARAM + 1]
        )
    except ApiError as exc:
        return sso_views.refuse(request, exc.code, exc.message, exc.status_code)
    return sso_views.complete_sign_in(request, sso_request, assertion)


def _code_part(error: str) -> str:
    known = {"access_denied", "login_required", "consent_required", "interaction_required"}
    return error if error in known else "error"


def _error_message(error: str, described: str) -> str:
    if error == "access_denied":
        text = "The identity provider did not let you sign in to this app."
    else:
        text = f"The identity provider could not sign you in ({error})."
    return f"{text} {described}".strip() if described else text


def logout_url(request: HttpRequest, idp: IdentityProvider, *, next_url: str = "") -> str | None:
    """Where to send the browser so the IdP ends its session too (None: it has no
    end_session_endpoint). For the portal's logout."""
    return oidc.logout_url(request, idp, next_url=next_url)
