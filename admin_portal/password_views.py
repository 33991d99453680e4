"""Forgot-password pages (public: the mailed link is the proof) and an admin sending a
user a reset mail. The rules live in orgs.services.passwords."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from admin_portal.decorators import portal_perm, portal_public
from admin_portal.forms import SetPasswordForm
from orgs.roles import Perm
from orgs.services import audit, passwords, users
from siphera import ratelimit
from siphera.api_errors import ApiError
from siphera.net import client_ip


class ForgotForm(forms.Form):
    identifier = forms.CharField(
        label="Username or e-mail address",
        max_length=254,
        widget=forms.TextInput(attrs={"autocomplete": "username", "autofocus": True}),
    )


@require_http_methods(["GET", "POST"])
@portal_public
def forgot(request: HttpRequest) -> HttpResponse:
    """Ask for a reset link. The page after it reads the same whether or not the account
    exists (no user enumeration); only the rate limit (429) answers differently."""
    form = ForgotForm(request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        passwords.check_request_reset(
            form.cleaned_data["identifier"],
            actor=audit.Actor.from_request(request),
            base_url=request.build_absolute_uri("/"),
        )
        return render(request, "portal/password_forgot_sent.html")
    return render(request, "portal/password_forgot.html", {"form": form})


@require_http_methods(["GET", "POST"])
@portal_public
def reset(request: HttpRequest, token: str) -> HttpResponse:
    """Choose a new password with a mailed link; it works once. Token pages share the
    invitation pages' per-IP limit (`invitation.ip`)."""
    ip = client_ip(request)
    if ip:
        ratelimit.enforce_named("invitation.ip", ip)
    try:
        subject = passwords.access_reset(token).user
    except ApiError as exc:
        return render(
            request, "portal/password_reset_invalid.html", {"message": exc.message}, status=400
        )
    form = SetPasswordForm(request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        try:
            passwords.check_confirm_reset(
                token, form.cleaned_data["password"], actor=audit.Actor.from_request(request)
            )
        except ApiError as exc:
            form.add_error("password", exc.message)
        else:
            return render(request, "portal/password_reset_done.html", {"subject": subject})
    # The token is in this page's URL: the site-wide Referrer-Policy `same-origin` keeps it
    # from other sites (`no-referrer` would make browsers send `Origin: null`, which
    # Django's CSRF check refuses).
    return render(request, "portal/password_reset.html", {"form": form, "subject": subject})


@require_POST
@portal_perm(Perm.USERS_MANAGE)
def user_password_reset(request: HttpRequest, user_id) -> HttpResponse:
    """An admin mails a user a link to set a new password."""
    user = users.access_user(user_id)
    try:
        passwords.check_admin_reset(
            user,
            actor=audit.Actor.from_request(request),
            base_url=request.build_absolute_uri("/"),
        )
    except ApiError as exc:
        if exc.status_code in (404, 429):
            raise
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Sent {user.username} a link to set a new password.")
    return redirect("portal:user", user_id=user.pk)
