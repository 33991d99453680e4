"""The OpenID Connect callback: where the org's IdP sends the browser back with a code;
and the login initiation endpoint an IdP's app launcher (an Okta or Entra ID tile) opens.

Everything protocol-specific happens in orgs.sso.oidc; this view only reads the query,
turns refusals into the sign-in error page and hands a verified `Assertion` to
`sso_views.complete_sign_in`. The callback is a top-level GET from the IdP's site, so it
needs no CSRF token: `state` (single-use, unguessable, kept server-side) is the check.
"""

from __future__ import annotations

from urllib.parse import urlencode, urlsplit

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET

from admin_portal import sso_views
from admin_portal.decorators import portal_public
from orgs.audit_events import AuditEvent
from orgs.services import audit
from orgs.sso import flow, oidc, provider
from orgs.sso.models import IdentityProvider
from siphera.api_errors import ApiError

# Query values an IdP sends us are short; longer ones are refused unread.
_MAX_PARAM = 2000


@require_GET
@portal_public
def callback(request: HttpRequest) -> HttpResponse:
    """GET /sso/oidc/callback?code=...&state=... (or ?error=...&state=...)."""
    sso_views.check_rate(request)
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
        sso_request, assertion, id_token = oidc.complete(
            request, state=state, code=request.GET.get("code", "")[: _MAX_PARAM + 1]
        )
    except ApiError as exc:
        return sso_views.refuse(request, exc.code, exc.message, exc.status_code)
    response = sso_views.complete_sign_in(request, sso_request, assertion)
    _keep_logout_hint(request, assertion, id_token)
    return response


def _keep_logout_hint(request: HttpRequest, assertion, id_token: str) -> None:
    """Where the sign-in started a portal session (or its TOTP step), keep the ID token
    with it: the IdP's logout wants it back as `id_token_hint`."""
    sso = request.session.get(sso_views.SSO_SESSION)
    if (
        isinstance(sso, dict)
        and sso.get("kind") == IdentityProvider.OIDC
        and sso.get("subject") == assertion.subject
        and len(id_token) <= oidc.MAX_ID_TOKEN_CHARS
    ):
        request.session[sso_views.SSO_SESSION] = {**sso, "id_token": id_token}


@require_GET
@portal_public
def initiate(request: HttpRequest) -> HttpResponse:
    """GET /sso/oidc/initiate?iss=...&target_link_uri=... (OpenID Connect Core 4,
    third-party initiated login): the IdP asks us to start a sign-in with it. Nothing is
    trusted from the request but the issuer's name, which must be the org's IdP; the
    sign-in then runs exactly as one started here (GET /sso/login: rate limit, policy,
    state, nonce, PKCE), landing on `target_link_uri` when that is a page of this host."""
    idp = provider.get_provider()
    issuer = request.GET.get("iss", "")
    if idp is None or idp.kind != IdentityProvider.OIDC:
        return sso_views.refuse(
            request, "sso_not_configured", "OpenID Connect sign-in is not set up.", 404
        )
    if issuer != idp.config.get("issuer"):
        return sso_views.refuse(
            request,
            "sso_wrong_issuer",
            "This sign-in was started by an identity provider this organisation does not use.",
            400,
        )
    params = {"purpose": "portal"}
    target = request.GET.get("target_link_uri", "")[:_MAX_PARAM]
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        parts = urlsplit(target)
        params["next"] = parts.path + (f"?{parts.query}" if parts.query else "")
    return HttpResponseRedirect(f"{reverse('sso-login')}?{urlencode(params)}")


def _code_part(error: str) -> str:
    known = {"access_denied", "login_required", "consent_required", "interaction_required"}
    return error if error in known else "error"


def _error_message(error: str, described: str) -> str:
    if error == "access_denied":
        text = "The identity provider did not let you sign in to this app."
    else:
        text = f"The identity provider could not sign you in ({error})."
    return f"{text} {described}".strip() if described else text


def logout_redirect(request: HttpRequest) -> str | None:
    """For the portal's logout, called before the session ends: the IdP's end-session URL
    (RP-initiated logout, with the sign-in's ID token as hint) when this session came from
    an OpenID Connect sign-in and the IdP's discovery names an end_session_endpoint; None
    otherwise. Audited `sso.logout`."""
    sso = request.session.get(sso_views.SSO_SESSION)
    if not isinstance(sso, dict) or sso.get("kind") != IdentityProvider.OIDC:
        return None
    idp = IdentityProvider.objects.filter(pk=1, kind=IdentityProvider.OIDC).first()
    if idp is None:
        return None
    url = logout_url(request, idp, id_token_hint=str(sso.get("id_token") or ""))
    if url:
        audit.record(
            AuditEvent.SSO_LOGOUT,
            actor=audit.Actor.from_request(request),
            target_type="identity_provider",
            target_id=IdentityProvider.OIDC,
            data={"initiated_by": "sp"},
        )
    return url


def logout_url(
    request: HttpRequest, idp: IdentityProvider, *, id_token_hint: str = "", next_url: str = ""
) -> str | None:
    """Where to send the browser so the IdP ends its session too (None: it has no
    end_session_endpoint)."""
    return oidc.logout_url(request, idp, id_token_hint=id_token_hint, next_url=next_url)
