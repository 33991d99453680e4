"""The portal's Compliance page: compliance exports (metadata as JSON Lines or CSV, the
legal-hold archive), a user's personal-data export, and erasure. The work, the checks
and the audit entries are the services' (orgs.services.compliance, .personal_data); the
downloads stream exactly as the API's do."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from admin_portal.decorators import portal_perm
from orgs.accounts.models import User
from orgs.api.compliance_views import export_response, personal_data_response
from orgs.roles import Perm, has_perm
from orgs.services import audit, compliance, personal_data, users
from siphera.api_errors import ApiError


def _page(request: HttpRequest, *, status: int = 200, **context) -> HttpResponse:
    subject = (request.GET.get("subject") or "").strip().lower()
    person = None
    if subject:
        person = User.objects.filter(username=subject).first()
        if person is None:
            context.setdefault("subject_error", f"No user is called {subject!r}.")
            status = 400
    return render(
        request,
        "portal/compliance.html",
        {
            "nav": "compliance",
            "sections": compliance.sections().values(),
            "formats": compliance.FORMATS,
            "subject": subject,
            "person": person,
            "can_erase": has_perm(request.user, Perm.USERS_ERASE),
            "values": request.GET,
            **context,
        },
        status=status,
    )


@require_GET
@portal_perm(Perm.COMPLIANCE_EXPORT)
def compliance_page(request: HttpRequest) -> HttpResponse:
    """The export form and the data-subject lookup (`?subject=<username>`)."""
    return _page(request)


@require_GET
@portal_perm(Perm.COMPLIANCE_EXPORT)
def compliance_export(request: HttpRequest) -> HttpResponse:
    """The streamed export; users are named by username here (ids in the API). Bad input
    shows the form again with the reason."""
    params = QueryDict(mutable=True)
    for name in ("since", "until", "format"):
        params[name] = request.GET.get(name, "")
    params.setlist("sections", request.GET.getlist("sections"))
    names = [n.lower() for n in (request.GET.get("users") or "").replace(",", " ").split() if n]
    found = dict(User.objects.filter(username__in=names).values_list("username", "pk"))
    unknown = [n for n in names if n not in found]
    if unknown:
        return _page(request, status=400, export_error=f"No user is called {unknown[0]!r}.")
    params.setlist("user", [str(found[n]) for n in names])
    try:
        return export_response(request, params)
    except ApiError as exc:
        return _page(request, status=exc.status_code, export_error=exc.message)


@require_GET
@portal_perm(Perm.COMPLIANCE_EXPORT)
def personal_data_export(request: HttpRequest, user_id) -> HttpResponse:
    """Everything held about one user, as a JSON download (audited)."""
    return personal_data_response(request, user_id)


@require_POST
@portal_perm(Perm.USERS_ERASE)
def erase_user(request: HttpRequest, user_id) -> HttpResponse:
    """Erase a user after the operator typed their username; shows what was removed and
    what was kept and why."""
    user = users.access_user(user_id)
    if (request.POST.get("confirm") or "").strip().lower() != user.username:
        raise ApiError(400, "not_confirmed", "Type the user's username to confirm the erasure.")
    username = user.username
    report = personal_data.check_erase_user(
        user, reason=request.POST.get("reason", ""), actor=audit.Actor.from_request(request)
    )
    return render(
        request,
        "portal/compliance_erased.html",
        {"nav": "compliance", "report": report, "username": username},
    )
