"""The signed-in user's own account: two-factor authentication (TOTP with a QR code,
recovery codes). Any role with portal access may manage their own."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from admin_portal.decorators import portal_perm
from admin_portal.forms import OtpForm
from admin_portal.login_views import enrollment_context
from orgs.services import audit, mfa
from siphera.api_errors import ApiError


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
