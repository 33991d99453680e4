"""SAML 2.0 endpoints of an org's service provider, under /sso/saml/ on the org's host.

- `metadata` (GET): the SP metadata an IdP admin loads (entity id = this URL).
- `acs` (POST, HTTP-POST binding): the IdP's answer to a sign-in. It comes in a cross-site
  POST that carries no session cookie under SameSite=Lax (PITFALLS 12), so nothing here
  depends on the session: the `SsoRequest` row named by InResponseTo is the state, and the
  view is CSRF-exempt (the IdP's signature is the proof).
- `sls` (GET, HTTP-Redirect binding): single logout. A LogoutRequest from the IdP ends the
  portal sessions of that person's SSO session and answers with a signed LogoutResponse;
  a LogoutResponse answers the LogoutRequest the portal's logout sent (`logout_redirect`).

Everything protocol-specific is in orgs.sso.saml; refusals are the sign-in error page
(`sso_views.refuse`, audited), never a 500.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.sessions.models import Session
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from admin_portal import sso_views
from admin_portal.decorators import portal_public, secure_headers
from orgs.audit_events import AuditEvent
from orgs.services import audit
from orgs.sso import provider, saml
from orgs.sso.models import IdentityProvider
from siphera.api_errors import ApiError

SSO_SESSION = sso_views.SSO_SESSION


def _saml_provider() -> IdentityProvider | None:
    idp = provider.get_provider()
    return idp if idp is not None and idp.kind == IdentityProvider.SAML else None


def _not_configured(request: HttpRequest) -> HttpResponse:
    return sso_views.refuse(
        request, "sso_not_configured", "SAML single sign-on is not set up for this org.", 404
    )


@require_GET
@portal_public
def metadata(request: HttpRequest) -> HttpResponse:
    """GET /sso/saml/metadata: this org's SP metadata (404 when the org uses OIDC)."""
    idp = provider.get_provider()
    if idp is not None and idp.kind != IdentityProvider.SAML:
        return _not_configured(request)
    xml = saml.sp_metadata(request, idp)
    response = HttpResponse(xml, content_type="application/samlmetadata+xml; charset=utf-8")
    response["Content-Disposition"] = 'inline; filename="siphera-sp-metadata.xml"'
    return response


@csrf_exempt
@require_POST
@portal_public
def acs(request: HttpRequest) -> HttpResponse:
    """POST /sso/saml/acs: SAMLResponse (+ RelayState, ignored: where to land comes from
    the sign-in's own row, never from the IdP's round trip)."""
    sso_views.check_rate(request)
    idp = _saml_provider()
    if idp is None:
        return _not_configured(request)
    try:
        sso_request, assertion, name_id = saml.check_response(request, idp)
    except ApiError as exc:
        return sso_views.refuse(request, exc.code, exc.message, exc.status_code)
    response = sso_views.complete_sign_in(request, sso_request, assertion)
    if sso_request is not None and sso_request.nonce:
        response.delete_cookie(
            saml.binding_cookie_name(sso_request.pk), path=saml.ACS_PATH, samesite="None"
        )
    remembered = request.session.get(SSO_SESSION)
    if isinstance(remembered, dict) and remembered.get("subject") == assertion.subject:
        # What a LogoutRequest for this session must name (SAML single logout).
        request.session[SSO_SESSION] = {**remembered, **name_id}
    return response


@csrf_exempt
@require_http_methods(["GET", "POST"])
@portal_public
def sls(request: HttpRequest) -> HttpResponse:
    """/sso/saml/sls: a LogoutRequest from the IdP (IdP-initiated single logout) or the
    IdP's LogoutResponse to ours; HTTP-Redirect (GET, what our metadata announces) or
    HTTP-POST (CSRF-exempt like the ACS: the IdP's signature is the check)."""
    sso_views.check_rate(request)
    idp = _saml_provider()
    if idp is None:
        return _not_configured(request)
    params = request.POST if request.method == "POST" else request.GET
    if not (params.get("SAMLRequest") or params.get("SAMLResponse")):
        return sso_views.refuse(
            request,
            "sso_invalid_logout",
            "A single logout message is a SAMLRequest or SAMLResponse.",
            400,
        )
    actor = audit.Actor.from_request(request)
    try:
        if params.get("SAMLRequest"):
            who, answer_url = saml.check_logout_request(request, idp)
        else:
            saml.check_logout_response(request, idp)
            messages.info(request, "You have been signed out here and at your identity provider.")
            return redirect("portal:login")
    except ApiError as exc:
        return sso_views.refuse(request, exc.code, exc.message, exc.status_code)
    ended = do_end_sso_sessions(who["name_id"], who["session_indexes"])
    audit.record(
        AuditEvent.SSO_LOGOUT,
        actor=actor,
        target_type="identity_provider",
        target_id=IdentityProvider.SAML,
        data={"initiated_by": "idp", "sessions_ended": ended},
    )
    return redirect(answer_url)


def do_end_sso_sessions(name_id: str, session_indexes: list[str]) -> int:
    """End every live portal session that a SAML sign-in of `name_id` started (only those
    of the named SessionIndexes, when the IdP names any). Returns how many ended."""
    if not name_id:
        return 0
    wanted = set(session_indexes or [])
    doomed = []
    for row in Session.objects.filter(expire_date__gt=timezone.now()).iterator():
        try:
            sso = row.get_decoded().get(SSO_SESSION)
        except Exception:  # noqa: S112 (an undecodable session is nobody's)
            continue
        if not isinstance(sso, dict) or sso.get("kind") != IdentityProvider.SAML:
            continue
        if sso.get("name_id") != name_id:
            continue
        if wanted and sso.get("session_index") not in wanted:
            continue
        doomed.append(row.session_key)
    Session.objects.filter(session_key__in=doomed).delete()
    return len(doomed)


def logout_redirect(request: HttpRequest) -> str | None:
    """For the portal's logout, called before the session ends: the IdP's SLO URL with a
    signed LogoutRequest when this session came from a SAML sign-in and the IdP has a
    single logout service; None otherwise. Audited `sso.logout`."""
    sso = request.session.get(SSO_SESSION)
    if not isinstance(sso, dict) or sso.get("kind") != IdentityProvider.SAML:
        return None
    idp = _saml_provider()
    try:
        url = saml.logout_url(request, idp, sso)
    except Exception:  # a broken IdP setting must not keep anyone signed in here
        return None
    if url:
        audit.record(
            AuditEvent.SSO_LOGOUT,
            actor=audit.Actor.from_request(request),
            target_type="identity_provider",
            target_id=IdentityProvider.SAML,
            data={"initiated_by": "sp"},
        )
    return url


def leave_for_idp(request: HttpRequest, url: str) -> HttpResponse:
    """A page that sends the browser on to the IdP's logout (a meta refresh with a link:
    a form's 302 to another origin would be blocked by the portal's CSP form-action)."""
    response = render(request, "portal/sso_logout.html", {"url": url})
    return secure_headers(response)
