"""Signing in and out of the portal, with the second factor, and accepting an invitation.

Sign-in is two steps when the user has MFA (or the org's policy requires it): the
password, then the code — the password is never sent twice and never put in a page. A
user whom the policy requires to use MFA and who has none yet sets it up right there
(QR code), then is signed in.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import logout as end_session
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from admin_portal import sessions
from admin_portal.decorators import portal_public
from admin_portal.forms import LoginForm, OtpForm, SetPasswordForm
from admin_portal.qr import qr_svg
from orgs.accounts.models import User
from orgs.roles import Perm, has_perm
from orgs.services import audit, auth, mfa, policy, users
from orgs.sso import provider as sso_provider
from siphera import ratelimit
from siphera.api_errors import ApiError
from siphera.net import client_ip


def _next_url(request: HttpRequest) -> str:
    """Where to go after login: a local path from `next`, or the dashboard."""
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse("portal:dashboard")


def _with_headers(response: HttpResponse, headers: dict) -> HttpResponse:
    for name, value in headers.items():
        response[name] = value
    return response


@require_http_methods(["GET", "POST"])
@portal_public
def login_view(request: HttpRequest) -> HttpResponse:
    next_url = _next_url(request)
    if request.user.is_authenticated and has_perm(request.user, Perm.PORTAL_ACCESS):
        if not sessions.is_expired(request):
            return redirect(next_url)
        end_session(request)
    form = LoginForm(request.POST if request.method == "POST" else None)
    status, headers = 200, {}
    if form.is_bound and form.is_valid():
        username = form.cleaned_data["username"]
        try:
            user = auth.check_portal_login(
                username=username,
                password=form.cleaned_data["password"],
                actor=audit.Actor.from_request(request),
            )
        except ApiError as exc:
            if exc.code in ("otp_required", "mfa_enrollment_required"):
                # The password was right: remember who, ask for the code (or enrolment).
                pending_user = User.objects.get(username=users.normalize_username(username))
                enroll = exc.code == "mfa_enrollment_required"
                sessions.set_pending(request, pending_user, enroll=enroll, next_url=next_url)
                return redirect("portal:login-enroll" if enroll else "portal:login-otp")
            form.add_error(None, exc.message)
            # 403 (no portal access, method disabled) and 429 (rate limited) say something
            # a client can act on; a wrong password is an ordinary form error.
            status = exc.status_code if exc.status_code in (403, 429) else 200
            headers = exc.headers
        else:
            sessions.start(request, user)
            return redirect(next_url)
    current = policy.get_org_policy()
    context = {
        "form": form,
        "next": next_url,
        "sso": sso_provider.get_provider() if current.sso_login else None,
        "password_login": current.password_login,
    }
    response = render(request, "portal/login.html", context, status=status)
    return _with_headers(response, headers)


def _pending_user(request: HttpRequest, *, enroll: bool) -> tuple[dict | None, User | None]:
    state = sessions.pending(request)
    if state is None or state["enroll"] != enroll:
        return None, None
    user = User.objects.filter(pk=state["user"], is_active=True).first()
    return (state, user) if user else (None, None)


def _restart(request: HttpRequest) -> HttpResponse:
    sessions.clear_pending(request)
    messages.info(request, "Please sign in again.")
    return redirect("portal:login")


@require_http_methods(["GET", "POST"])
@portal_public
def login_otp(request: HttpRequest) -> HttpResponse:
    """Step two: the TOTP or recovery code of a user whose password was just accepted."""
    state, user = _pending_user(request, enroll=False)
    if user is None:
        return _restart(request)
    form = OtpForm(request.POST if request.method == "POST" else None)
    status, headers = 200, {}
    if form.is_bound and form.is_valid():
        try:
            auth.check_portal_second_factor(
                user.pk,
                form.cleaned_data["otp"],
                actor=audit.Actor.from_request(request),
                first=state.get("method", "password"),
            )
        except ApiError as exc:
            if exc.code == "invalid_credentials":
                return _restart(request)
            form.add_error("otp", exc.message)
            status = exc.status_code if exc.status_code in (403, 429) else 200
            headers = exc.headers
        else:
            sessions.start(request, user)
            return redirect(state["next"])
    response = render(
        request, "portal/login_otp.html", {"form": form, "subject": user}, status=status
    )
    return _with_headers(response, headers)


def enrollment_context(user: User) -> dict:
    """What the enrolment partial shows: the QR code and the secret of the pending
    enrolment (None before it is started)."""
    enrollment = mfa.pending_enrollment(user)
    if enrollment is None:
        return {"enrollment": None}
    return {
        "enrollment": enrollment,
        "qr": qr_svg(enrollment.otpauth_uri, title="QR code for your authenticator app"),
        "secret_groups": " ".join(
            enrollment.secret[i : i + 4] for i in range(0, len(enrollment.secret), 4)
        ),
    }


@require_http_methods(["GET", "POST"])
@portal_public
def login_enroll(request: HttpRequest) -> HttpResponse:
    """The org requires MFA and this user has none: set it up, then sign in."""
    state, user = _pending_user(request, enroll=True)
    if user is None:
        return _restart(request)
    actor = audit.Actor.from_request(request, user=user)
    form = OtpForm(request.POST if request.POST.get("action") == "confirm" else None)
    status = 200
    if request.method == "POST" and request.POST.get("action") == "start":
        mfa.check_start_enrollment(user, actor=actor)
        return redirect("portal:login-enroll")
    if form.is_bound and form.is_valid():
        try:
            confirmed = mfa.check_confirm_enrollment(user, form.cleaned_data["otp"], actor=actor)
        except ApiError as exc:
            form.add_error("otp", exc.message)
            status = exc.status_code if exc.status_code == 429 else 200
        else:
            first = state.get("method", "password")
            auth.do_record_portal_login(user, actor=actor, method=f"{first}+totp")
            sessions.start(request, user)
            return render(
                request,
                "portal/recovery_codes.html",
                {"codes": confirmed.recovery_codes, "continue_url": state["next"]},
            )
    context = {"form": form, "subject": user, **enrollment_context(user)}
    return render(request, "portal/login_enroll.html", context, status=status)


@require_POST
@portal_public
def logout_view(request: HttpRequest) -> HttpResponse:
    # (they import sso_views, which imports this module)
    from admin_portal import oidc_views, saml_views

    idp_logout = None
    if request.user.is_authenticated:
        auth.do_record_portal_logout(request.user, actor=audit.Actor.from_request(request))
        # An SSO session: the IdP ends its session too (SAML SP-initiated single logout,
        # OpenID Connect RP-initiated logout).
        idp_logout = saml_views.logout_redirect(request) or oidc_views.logout_redirect(request)
    end_session(request)
    if idp_logout:
        return saml_views.leave_for_idp(request, idp_logout)
    messages.info(request, "You have been signed out.")
    return redirect("portal:login")


@require_http_methods(["GET", "POST"])
@portal_public
def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """An invited user sets their password (public: the link is the proof)."""
    ip = client_ip(request)
    if ip:
        ratelimit.enforce_named("invitation.ip", ip)
    invite = users.access_invitation(token)  # 404 page when not live
    form = SetPasswordForm(request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        try:
            users.check_accept_invitation(
                token, form.cleaned_data["password"], actor=audit.Actor.from_request(request)
            )
        except ApiError as exc:
            form.add_error("password", exc.message)
        else:
            return render(request, "portal/invitation_done.html", {"subject": invite.user})
    return render(request, "portal/invitation.html", {"form": form, "subject": invite.user})
