"""The browser side of every SSO sign-in, whatever the protocol.

`start` (GET /sso/login) sends the browser to the IdP through the protocol module's
`begin`. The protocol's answer view (SAML ACS, OIDC callback) checks what only it can
check, then hands an `Assertion` to `complete_sign_in`, which finishes alike for both:

- `portal`: the same portal session a password sign-in starts, after the org's TOTP
  unless the org trusts the IdP's multi-factor statement and the IdP made it;
- `client`: the browser goes back to the app's redirect URI with a one-time code that the
  app exchanges (with its PKCE verifier) for a login grant at POST /api/v1/auth/sso/token;
- `test`: an owner's test sign-in; what the IdP sent is shown and kept, nobody is signed in.

Refusals are an error page with a stable code, audited `sso.login_refused`.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from admin_portal import sessions
from admin_portal.decorators import portal_perm, portal_public, secure_headers
from admin_portal.forms import SsoForm
from admin_portal.login_views import _next_url
from orgs.accounts.models import User
from orgs.audit_events import AuditEvent
from orgs.roles import Perm, has_perm
from orgs.services import audit, auth, mfa, policy
from orgs.sso import flow, provider, provisioning
from orgs.sso.models import IdentityProvider, SsoRequest
from orgs.sso.provisioning import Assertion
from siphera import ratelimit
from siphera.api_errors import ApiError
from siphera.net import client_ip

# What the portal session remembers of an SSO sign-in (single logout needs it).
SSO_SESSION = "portal_sso"


class AppRedirect(HttpResponseRedirect):
    """A redirect to an app's private-use scheme (flow.check_client_redirect_uri vetted it)."""

    @property
    def allowed_schemes(self):  # type: ignore[override]
        return ["http", "https", *settings.SSO_CLIENT_REDIRECT_SCHEMES]


def refuse(request: HttpRequest, code: str, message: str, status: int = 403) -> HttpResponse:
    """The sign-in error page for a refused SSO sign-in, audited `sso.login_refused`."""
    audit.record(
        AuditEvent.SSO_LOGIN_REFUSED,
        actor=audit.Actor.from_request(request),
        target_type="identity_provider",
        data={"code": code},
    )
    response = render(
        request,
        "portal/sso_error.html",
        {"title": "Single sign-on refused", "message": message, "code": code},
        status=status,
    )
    return secure_headers(response)


def check_rate(request: HttpRequest) -> None:
    """Every SSO step (start, the IdP's answer, single logout) spends the client IP's
    `sso.ip` budget: an answer can mean parsing up to 1 MiB of XML and checking signatures,
    so a flood is cut off long before the general per-IP limit (429 page)."""
    ip = client_ip(request)
    if ip:
        ratelimit.enforce_named("sso.ip", ip)


@require_GET
@portal_public
def start(request: HttpRequest) -> HttpResponse:
    """GET /sso/login?purpose=portal|client|test: off to the org's IdP.

    `portal` (the default) takes `next`; `client` needs `redirect_uri` (loopback or an
    allowed app scheme) and `code_challenge` (PKCE S256); `test` is for a signed-in owner
    and works while SSO sign-in is still off, so the set-up can be tried first.
    """
    check_rate(request)
    purpose = request.GET.get("purpose", SsoRequest.PORTAL)
    if purpose not in flow.PURPOSES:
        raise ApiError(400, "invalid_purpose", "purpose is portal, client or test.")
    idp = provider.get_provider()
    if idp is None:
        raise ApiError(404, "sso_not_configured", "Single sign-on is not set up for this org.")
    return_to, challenge = "", ""
    if purpose == SsoRequest.TEST:
        if not (request.user.is_authenticated and has_perm(request.user, Perm.ORG_MANAGE)):
            raise ApiError(403, "forbidden", "Only an owner signed in to the portal can test.")
    elif not policy.get_org_policy().sso_login:
        raise ApiError(403, "sso_disabled", "This org does not offer single sign-on.")
    if purpose == SsoRequest.PORTAL:
        return_to = _next_url(request)
    elif purpose == SsoRequest.CLIENT:
        return_to = flow.check_client_redirect_uri(request.GET.get("redirect_uri", ""))
        challenge = flow.check_code_challenge(request.GET.get("code_challenge", ""))
        if request.GET.get("code_challenge_method", "S256") != "S256":
            raise ApiError(400, "invalid_code_challenge", "code_challenge_method is S256.")
    url = provider.protocol(idp.kind).begin(
        request, idp, purpose=purpose, return_to=return_to, code_challenge=challenge
    )
    response = HttpResponseRedirect(url)
    # A protocol may bind the sign-in to this browser with a cookie (orgs.sso.saml).
    for cookie in getattr(request, "sso_cookies", ()):
        response.set_cookie(**cookie)
    return response


def complete_sign_in(
    request: HttpRequest, sso_request: SsoRequest | None, assertion: Assertion
) -> HttpResponse:
    """Finish an SSO sign-in whose protocol checks passed (`sso_request` None: an
    IdP-initiated SAML sign-in, which the protocol accepted only where the org allows it;
    it is a portal sign-in)."""
    idp = provider.get_provider()
    if idp is None:
        return refuse(request, "sso_not_configured", "Single sign-on is not set up.", 404)
    purpose = sso_request.purpose if sso_request is not None else SsoRequest.PORTAL
    actor = audit.Actor.from_request(request)
    if purpose == SsoRequest.TEST:
        result = provider.do_record_test(idp, assertion, actor=actor)
        preview = provisioning.preview(idp, assertion)
        response = render(
            request,
            "portal/sso_test_result.html",
            {"result": result, "preview": preview, "idp": idp},
        )
        return secure_headers(response)
    if not policy.get_org_policy().sso_login:
        return refuse(request, "sso_disabled", "This org does not offer single sign-on.")
    try:
        user = provisioning.check_sso_user(idp, assertion, actor=actor)
        actor = actor.with_user(user)
        method = flow.method_for(idp, idp_mfa=assertion.mfa)
        if purpose == SsoRequest.CLIENT:
            return AppRedirect(flow.do_issue_client_code(sso_request, user, method=method))
        auth.check_portal_access(user, actor=actor)
    except ApiError as exc:
        return refuse(request, exc.code, exc.message, exc.status_code)
    return _start_portal_session(request, idp, user, assertion, sso_request, method, actor)


def _start_portal_session(
    request: HttpRequest,
    idp: IdentityProvider,
    user: User,
    assertion: Assertion,
    sso_request: SsoRequest | None,
    method: str,
    actor: audit.Actor,
) -> HttpResponse:
    next_url = (sso_request.return_to if sso_request else "") or reverse("portal:dashboard")
    if not method.endswith("+idp_mfa"):
        try:
            method = mfa.check_login_second_factor(user, None, actor=actor, first=idp.kind)
        except ApiError as exc:
            if exc.code not in ("otp_required", "mfa_enrollment_required"):
                return refuse(request, exc.code, exc.message, exc.status_code)
            enroll = exc.code == "mfa_enrollment_required"
            sessions.set_pending(request, user, enroll=enroll, next_url=next_url, method=idp.kind)
            _remember_sso(request, idp, assertion)
            return redirect("portal:login-enroll" if enroll else "portal:login-otp")
    auth.do_record_portal_login(user, actor=actor, method=method)
    sessions.start(request, user)
    _remember_sso(request, idp, assertion)
    return redirect(next_url)


def _remember_sso(request: HttpRequest, idp: IdentityProvider, assertion: Assertion) -> None:
    request.session[SSO_SESSION] = {
        "kind": idp.kind,
        "subject": assertion.subject,
        "session_index": assertion.session_index,
    }


# --- the owner's settings page -----------------------------------------------------------------


def _initial(idp: IdentityProvider | None) -> dict:
    if idp is None:
        return {"kind": "saml", "display_name": "single sign-on", "jit_provisioning": True}
    config = idp.config or {}
    mapping = idp.attribute_map or {}
    return {
        "kind": idp.kind,
        "display_name": idp.display_name,
        "metadata_url": config.get("metadata_url", ""),
        "issuer": config.get("issuer", ""),
        "client_id": config.get("client_id", ""),
        "subject_attribute": idp.subject_attribute,
        **{f"map_{key}": mapping.get(key, "") for key in provider.ATTRIBUTE_KEYS},
        **{flag: getattr(idp, flag) for flag in provider.FLAGS},
        "group_roles": "\n".join(f"{r.group} = {r.role}" for r in provisioning.group_roles()),
    }


@require_http_methods(["GET", "POST"])
@portal_perm(Perm.ORG_MANAGE)
def settings_page(request: HttpRequest) -> HttpResponse:
    """Set up the IdP, map attributes and groups, run a test sign-in, remove it."""
    idp = provider.get_provider()
    actor = audit.Actor.from_request(request)
    if request.method == "POST" and request.POST.get("action") == "remove":
        provider.check_remove(actor=actor)  # 409 page while passwords are off
        messages.success(request, "Single sign-on removed; SSO sign-in is off.")
        return redirect("portal:sso")
    form = SsoForm(request.POST if request.method == "POST" else None, initial=_initial(idp))
    status = 200
    if form.is_bound and form.is_valid():
        try:
            entries = form.group_role_entries()
        except ValidationError as exc:
            form.add_error("group_roles", exc)
        else:
            payload = form.settings_payload()
            if idp is not None and idp.kind == payload["kind"] and not payload["config"]:
                del payload["config"]  # nothing typed: keep the stored protocol settings
            try:
                with transaction.atomic():
                    provider.check_configure(payload, actor=actor)
                    provisioning.check_set_group_roles(entries, actor=actor)
            except ApiError as exc:
                if exc.status_code == 429:
                    raise
                form.add_error(None, exc.message)
                status = 400
            else:
                messages.success(request, "Single sign-on settings saved.")
                return redirect("portal:sso")
    if form.is_bound and not form.is_valid():
        status = 400
    host = request.get_host()
    scheme = "https" if request.is_secure() else "http"
    context = {
        "nav": "sso",
        "form": form,
        "idp": idp,
        "view": provider.public_view(idp) if idp else None,
        "policy": policy.get_org_policy(),
        "sp": {
            "entity_id": f"{scheme}://{host}/sso/saml/metadata",
            "acs": f"{scheme}://{host}/sso/saml/acs",
            "sls": f"{scheme}://{host}/sso/saml/sls",
            "oidc_redirect": f"{scheme}://{host}/sso/oidc/callback",
        },
    }
    return render(request, "portal/sso.html", context, status=status)
