"""Portal pages: dashboard and users. Views parse the request, call orgs' services and
render; nothing here changes state by itself. (Sign-in: login_views; roles, policies and
the audit log: admin_views; the signed-in user's own MFA: account_views.)"""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from admin_portal import fragments
from admin_portal.decorators import portal_perm
from admin_portal.forms import RoleChangeForm, UserCreateForm, UserSearchForm
from messaging.services import stats
from orgs.roles import Perm, has_perm
from orgs.services import audit, devices, directory, mfa, portal_sessions, users
from orgs.services import roles as role_service
from siphera.api_errors import ApiError

USERS_PER_PAGE = 50


@require_GET
@portal_perm()
def dashboard(request: HttpRequest) -> HttpResponse:
    activity = stats.dashboard()
    return render(
        request,
        "portal/dashboard.html",
        {
            "nav": "dashboard",
            "accounts": activity["accounts"],
            "active_devices": activity["active_devices"],
            "activity": activity,
            "chart": fragments.messages_chart(activity["messages_per_day"]),
        },
    )


@require_GET
@portal_perm(Perm.USERS_VIEW)
def user_list(request: HttpRequest) -> HttpResponse:
    search = UserSearchForm(request.GET)
    query = search.cleaned_data["q"] if search.is_valid() else ""
    page = Paginator(directory.users_with_device_counts(query), USERS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "portal/users.html",
        {"nav": "users", "search": search, "query": query, "page": page},
    )


@require_http_methods(["GET", "POST"])
@portal_perm(Perm.USERS_MANAGE)
def user_new(request: HttpRequest) -> HttpResponse:
    """Create a user with a password, or invite them (a link to set one, shown once)."""
    form = UserCreateForm(
        request.POST if request.method == "POST" else None, roles=role_service.list_roles()
    )
    if form.is_bound and form.is_valid():
        data = form.cleaned_data
        fields = dict(
            username=data["username"],
            role=data["role"],
            display_name=data["display_name"],
            email=data["email"],
            actor=audit.Actor.from_request(request),
        )
        try:
            if data["how"] == UserCreateForm.PASSWORD:
                user = users.check_create_user(password=data["password"], **fields)
                token = None
            else:
                user, token = users.check_invite_user(
                    **fields, base_url=request.build_absolute_uri("/")
                )
        except ApiError as exc:
            if exc.status_code == 429:
                raise
            form.add_error("password" if exc.code == "weak_password" else None, exc.message)
        else:
            if token is None:
                messages.success(request, f"Created {user.username}.")
                return redirect("portal:user", user_id=user.pk)
            link = request.build_absolute_uri(reverse("portal:invitation", args=[token]))
            return render(
                request,
                "portal/user_invited.html",
                {"nav": "users", "subject": user, "link": link, "days": users.INVITATION_TTL.days},
            )
    return render(request, "portal/user_new.html", {"nav": "users", "form": form})


@require_GET
@portal_perm(Perm.USERS_VIEW)
def user_detail(request: HttpRequest, user_id) -> HttpResponse:
    user = users.access_user(user_id)  # another org's id is a 404, like a bad one
    can_see_devices = has_perm(request.user, Perm.DEVICES_VIEW)
    can_revoke = has_perm(request.user, Perm.DEVICES_REVOKE)
    outranked = not users.can_change(request.user, user)
    roles = role_service.list_roles()
    return render(
        request,
        "portal/user_detail.html",
        {
            "nav": "users",
            "subject": user,
            "role_name": next((r.name for r in roles if r.slug == user.role), user.role),
            "devices": directory.all_user_devices(user) if can_see_devices else None,
            "sessions": portal_sessions.live_sessions(user) if can_see_devices else None,
            "current_session": request.session.session_key,
            "role_form": RoleChangeForm(initial={"role": user.role}, roles=roles),
            "mfa": mfa.mfa_status(user),
            "is_self": user.pk == request.user.pk,
            # Revoke, end and sign-out buttons: not for a user holding codes you lack
            "may_revoke": can_revoke and not outranked,
            "outranked": can_revoke and outranked,
        },
    )


def _back_to(user) -> HttpResponse:
    return redirect("portal:user", user_id=user.pk)


def _refused(request: HttpRequest, exc: ApiError) -> None:
    if exc.status_code in (404, 429):
        raise exc
    messages.error(request, exc.message)


@require_POST
@portal_perm(Perm.USERS_MANAGE)
def user_role(request: HttpRequest, user_id) -> HttpResponse:
    user = users.access_user(user_id)
    form = RoleChangeForm(request.POST, roles=role_service.list_roles())
    if not form.is_valid():
        messages.error(request, "Choose one of the roles.")
        return _back_to(user)
    before = user.role
    try:
        user = users.check_change_role(
            user, form.cleaned_data["role"], actor=audit.Actor.from_request(request)
        )
    except ApiError as exc:
        _refused(request, exc)
    else:
        if user.role != before:
            messages.success(request, f"{user.username} is now {user.role} (was {before}).")
    return _back_to(user)


@require_POST
@portal_perm(Perm.USERS_MANAGE)
def user_deactivate(request: HttpRequest, user_id) -> HttpResponse:
    user = users.access_user(user_id)
    try:
        users.check_deactivate_user(user, actor=audit.Actor.from_request(request))
    except ApiError as exc:
        _refused(request, exc)
    else:
        messages.success(
            request,
            f"Deactivated {user.username}: every device was revoked, every session ended "
            "and their live connections were closed.",
        )
    return _back_to(user)


@require_POST
@portal_perm(Perm.USERS_MANAGE)
def user_reactivate(request: HttpRequest, user_id) -> HttpResponse:
    user = users.access_user(user_id)
    try:
        users.check_reactivate_user(user, actor=audit.Actor.from_request(request))
    except ApiError as exc:
        _refused(request, exc)
    else:
        messages.success(
            request, f"Reactivated {user.username}: they can sign in and register devices again."
        )
    return _back_to(user)


@require_POST
@portal_perm(Perm.MFA_RESET)
def user_mfa_reset(request: HttpRequest, user_id) -> HttpResponse:
    user = users.access_user(user_id)
    try:
        mfa.check_reset_mfa(user, actor=audit.Actor.from_request(request))
    except ApiError as exc:
        _refused(request, exc)
    else:
        messages.success(request, f"Reset two-factor authentication of {user.username}.")
    return _back_to(user)


@require_POST
@portal_perm(Perm.DEVICES_REVOKE)
def revoke_device(request: HttpRequest, user_id, device_id: int) -> HttpResponse:
    user = users.access_user(user_id)
    try:
        device = devices.access_device(user, device_id)
    except ApiError:
        # The user is in this org; only the device is gone (revoked in another tab, say).
        messages.warning(request, "That device was already revoked.")
    else:
        try:
            devices.check_revoke_device(device, actor=audit.Actor.from_request(request))
        except ApiError as exc:
            _refused(request, exc)
        else:
            messages.success(
                request,
                f"Revoked “{device.name}” of {user.username}: its token no longer works and "
                "its live connection was closed.",
            )
    return redirect("portal:user", user_id=user.pk)


@require_POST
@portal_perm(Perm.DEVICES_REVOKE)
def end_session(request: HttpRequest, user_id, session_id) -> HttpResponse:
    user = users.access_user(user_id)
    try:
        row = portal_sessions.access_session(user, session_id)
    except ApiError:
        messages.warning(request, "That session had ended already.")
    else:
        try:
            portal_sessions.check_end_session(row, actor=audit.Actor.from_request(request))
        except ApiError as exc:
            _refused(request, exc)
        else:
            messages.success(request, f"Ended a portal session of {user.username}.")
    return redirect("portal:user", user_id=user.pk)


@require_POST
@portal_perm(Perm.DEVICES_REVOKE)
def sign_out_everywhere(request: HttpRequest, user_id) -> HttpResponse:
    """End every portal session of the user and revoke every device (sockets closed)."""
    user = users.access_user(user_id)
    try:
        counts = portal_sessions.check_sign_out_everywhere(
            user, actor=audit.Actor.from_request(request)
        )
    except ApiError as exc:
        _refused(request, exc)
        return redirect("portal:user", user_id=user.pk)
    messages.success(
        request,
        f"Signed {user.username} out everywhere: {counts['sessions']} portal session(s) "
        f"ended, {counts['devices']} device(s) revoked.",
    )
    if user.pk == request.user.pk:
        return redirect("portal:login")
    return redirect("portal:user", user_id=user.pk)
