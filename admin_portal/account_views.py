"""The signed-in user's own account: profile (name, title, time zone, picture), password,
and two-factor authentication (TOTP with a QR code, recovery codes). Any role with portal
access manages their own; the services (orgs.services.profiles, .passwords, .mfa) check
and audit as they do for the API."""

from __future__ import annotations

from django.contrib import messages
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from admin_portal import sessions
from admin_portal.decorators import portal_perm
from admin_portal.forms import AvatarForm, OtpForm, PasswordChangeForm, ProfileForm
from admin_portal.login_views import enrollment_context
from orgs.services import audit, mfa, passwords, policy, profiles
from siphera.api_errors import ApiError


def _profile_page(request: HttpRequest, form: ProfileForm, avatar_form: AvatarForm, status=200):
    return render(
        request,
        "portal/account.html",
        {
            "nav": "account",
            "form": form,
            "avatar_form": avatar_form,
            "time_zones": sorted(profiles.time_zones()),
            "can_use_password": policy.password_login_allowed(request.user),
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
@portal_perm()
def account(request: HttpRequest) -> HttpResponse:
    """Your profile: display name, job title and time zone."""
    user = request.user
    initial = {name: getattr(user, name) for name in profiles.FIELDS}
    form = ProfileForm(request.POST if request.method == "POST" else None, initial=initial)
    status = 200
    if form.is_bound and form.is_valid():
        try:
            profiles.check_update_profile(
                user, dict(form.cleaned_data), actor=audit.Actor.from_request(request)
            )
        except ApiError as exc:
            if exc.status_code == 429:
                raise
            form.add_error(None, exc.message)
            status = 400
        else:
            messages.success(request, "Profile saved.")
            return redirect("portal:account")
    elif form.is_bound:
        status = 400
    return _profile_page(request, form, AvatarForm(), status)


@require_POST
@portal_perm()
def account_avatar(request: HttpRequest) -> HttpResponse:
    """Upload a new picture, or remove it (`action=remove`)."""
    actor = audit.Actor.from_request(request)
    if request.POST.get("action") == "remove":
        profiles.check_remove_avatar(request.user, actor=actor)
        messages.success(request, "Picture removed.")
        return redirect("portal:account")
    avatar_form = AvatarForm(request.POST, request.FILES)
    if avatar_form.is_valid():
        upload = avatar_form.cleaned_data["avatar"]
        try:
            profiles.check_set_avatar(request.user, upload.read(), actor=actor)
        except ApiError as exc:
            if exc.status_code == 429:
                raise
            avatar_form.add_error("avatar", exc.message)
        else:
            messages.success(request, "Picture saved.")
            return redirect("portal:account")
    initial = {name: getattr(request.user, name) for name in profiles.FIELDS}
    return _profile_page(request, ProfileForm(initial=initial), avatar_form, status=400)


@require_GET
@portal_perm()
def account_avatar_image(request: HttpRequest) -> HttpResponse:
    """Your own picture (the page shows it; the API serves everyone's)."""
    response = FileResponse(profiles.open_avatar(request.user), content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response


@require_http_methods(["GET", "POST"])
@portal_perm()
def account_password(request: HttpRequest) -> HttpResponse:
    """Change your own password. Every device and every other portal session of yours is
    signed out; this browser stays signed in."""
    form = PasswordChangeForm(request.POST if request.method == "POST" else None)
    status = 200
    if form.is_bound and form.is_valid():
        try:
            passwords.check_change_password(
                request.user,
                current=form.cleaned_data["current"],
                new=form.cleaned_data["password"],
                actor=audit.Actor.from_request(request),
            )
        except ApiError as exc:
            if exc.status_code == 429:
                raise
            field = {
                "invalid_credentials": "current",
                "weak_password": "password",
                "same_password": "password",
            }.get(exc.code)
            form.add_error(field, exc.message)
            status = 400
        else:
            sessions.keep_after_password_change(request)
            messages.success(
                request,
                "Password changed. Your devices and other portal sessions were signed out.",
            )
            return redirect("portal:account")
    elif form.is_bound:
        status = 400
    return render(
        request,
        "portal/account_password.html",
        {
            "nav": "account",
            "form": form,
            "can_use_password": policy.password_login_allowed(request.user),
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
@portal_perm()
def account_mfa(request: HttpRequest) -> HttpResponse:
    user = request.user
    actor = audit.Actor.from_request(request)
    action = request.POST.get("action") if request.method == "POST" else None
    form = OtpForm(request.POST if action in ("confirm", "disable", "regenerate") else None)
    status = 200
    if action == "start":
        try:
            mfa.check_start_enrollment(user, actor=actor)
        except ApiError as exc:
            messages.error(request, exc.message)
        return redirect("portal:account-mfa")
    if form.is_bound and form.is_valid():
        otp = form.cleaned_data["otp"]
        try:
            if action == "confirm":
                codes = mfa.check_confirm_enrollment(user, otp, actor=actor).recovery_codes
                return _show_codes(request, codes, "Two-factor authentication is on.")
            if action == "regenerate":
                codes = mfa.check_regenerate_recovery_codes(user, otp, actor=actor)
                return _show_codes(request, codes, "New recovery codes; the old ones are void.")
            mfa.check_disable(user, otp, actor=actor)
        except ApiError as exc:
            if exc.status_code == 429:
                raise
            form.add_error("otp", exc.message)
            status = 400
        else:
            messages.success(request, "Two-factor authentication is off.")
            return redirect("portal:account-mfa")
    context = {
        "nav": "account",
        "form": form,
        "action": action,
        "status": mfa.mfa_status(user),
        **enrollment_context(user),
    }
    return render(request, "portal/account_mfa.html", context, status=status)


def _show_codes(request: HttpRequest, codes: list[str], headline: str) -> HttpResponse:
    return render(
        request,
        "portal/recovery_codes.html",
        {
            "nav": "account",
            "codes": codes,
            "headline": headline,
            "continue_url": reverse("portal:account-mfa"),
        },
    )
