"""Portal pages for custom roles, org policies and the audit log."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from admin_portal.decorators import portal_perm
from admin_portal.forms import AuditFilterForm, PolicyForm, RoleForm
from orgs.api.admin_views import export_response
from orgs.roles import PERM_LABELS, Perm, has_perm
from orgs.services import audit, audit_query, policy
from orgs.services import roles as role_service
from siphera.api_errors import ApiError

AUDIT_PAGE_SIZE = 50

# --- roles ----------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@portal_perm(Perm.ROLES_MANAGE)
def role_list(request: HttpRequest) -> HttpResponse:
    """Every role with its permissions, and a form to create a custom role."""
    form = RoleForm(request.POST if request.method == "POST" else None)
    status = 200
    if form.is_bound and form.is_valid():
        try:
            role = role_service.check_create_role(
                **form.cleaned_data, actor=audit.Actor.from_request(request)
            )
        except ApiError as exc:
            if exc.status_code == 429:
                raise
            form.add_error(None, exc.message)
            status = 400
        else:
            messages.success(request, f"Created the role “{role.name}”.")
            return redirect("portal:roles")
    roles = role_service.list_roles(with_counts=True)
    return render(
        request,
        "portal/roles.html",
        {
            "nav": "roles",
            "roles": roles,
            "perms": [(str(p), PERM_LABELS[p]) for p in Perm],
            "form": form,
        },
        status=status,
    )


@require_http_methods(["GET", "POST"])
@portal_perm(Perm.ROLES_MANAGE)
def role_edit(request: HttpRequest, slug: str) -> HttpResponse:
    role = role_service.access_custom_role(slug)
    initial = {
        "slug": role.slug,
        "name": role.name,
        "description": role.description,
        "codes": list(role.codes),
    }
    data = None
    if request.method == "POST":
        data = request.POST.copy()
        data["slug"] = role.slug  # the id never changes
    form = RoleForm(data, initial=initial)
    form.fields["slug"].disabled = True
    if form.is_bound and form.is_valid():
        try:
            role_service.check_update_role(
                role,
                name=form.cleaned_data["name"],
                description=form.cleaned_data["description"],
                codes=form.cleaned_data["codes"],
                actor=audit.Actor.from_request(request),
            )
        except ApiError as exc:
            if exc.status_code == 429:
                raise
            form.add_error(None, exc.message)
        else:
            messages.success(request, f"Saved the role “{form.cleaned_data['name']}”.")
            return redirect("portal:roles")
    return render(request, "portal/role_edit.html", {"nav": "roles", "role": role, "form": form})


@require_POST
@portal_perm(Perm.ROLES_MANAGE)
def role_delete(request: HttpRequest, slug: str) -> HttpResponse:
    role = role_service.access_custom_role(slug)
    try:
        role_service.check_delete_role(role, actor=audit.Actor.from_request(request))
    except ApiError as exc:
        if exc.status_code == 429:
            raise
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Deleted the role “{role.name}”.")
    return redirect("portal:roles")


# --- policies -------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
@portal_perm(Perm.POLICY_MANAGE)
def policies(request: HttpRequest) -> HttpResponse:
    current = policy.get_org_policy()
    initial = {name: getattr(current, name) for name in policy.FIELDS}
    form = PolicyForm(request.POST if request.method == "POST" else None, initial=initial)
    status = 200
    if form.is_bound and form.is_valid():
        try:
            policy.check_update_policy(
                dict(form.cleaned_data), actor=audit.Actor.from_request(request)
            )
        except ApiError as exc:
            if exc.status_code == 429:
                raise
            form.add_error(None, exc.message)
            status = 400
        else:
            messages.success(request, "Policies saved.")
            return redirect("portal:policies")
    return render(
        request,
        "portal/policies.html",
        {"nav": "policies", "form": form, "default_minutes": policy.session_lifetime_seconds()},
        status=status,
    )


# --- audit log ------------------------------------------------------------------------------


def _filter_form(request: HttpRequest) -> AuditFilterForm:
    return AuditFilterForm(
        request.GET,
        families=audit_query.event_families(),
        names=audit_query.event_names(),
    )


@require_GET
@portal_perm(Perm.AUDIT_VIEW)
def audit_log(request: HttpRequest) -> HttpResponse:
    """Entries newest first, filtered by actor, event, target and time; older pages by
    entry id; download links carry the same filters."""
    form = _filter_form(request)
    error = None
    page = None
    try:
        filters = audit_query.check_filter_from_query(request.GET)
        page = audit_query.list_entries(
            filters,
            before=audit_query.parse_before(request.GET.get("before")),
            limit=AUDIT_PAGE_SIZE,
        )
    except ApiError as exc:
        if exc.status_code == 429:
            raise
        error = exc.message
    for entry in page.entries if page else ():
        entry["data_json"] = json.dumps(entry["data"], sort_keys=True, ensure_ascii=False)
    query = request.GET.copy()
    query.pop("before", None)
    older = None
    if page and page.next_before:
        older_query = query.copy()
        older_query["before"] = page.next_before
        older = older_query.urlencode()
    return render(
        request,
        "portal/audit.html",
        {
            "nav": "audit",
            "form": form,
            "page": page,
            "error": error,
            "query": query.urlencode(),
            "older": older,
            "can_export": has_perm(request.user, Perm.AUDIT_EXPORT),
            "report": request.session.pop("audit_report", None),
        },
        status=400 if error else 200,
    )


@require_GET
@portal_perm(Perm.AUDIT_EXPORT)
def audit_export(request: HttpRequest) -> HttpResponse:
    """A streamed CSV or JSON Lines download of the filtered entries (audited)."""
    return export_response(request, request.GET)


@require_POST
@portal_perm(Perm.AUDIT_VIEW)
def audit_verify(request: HttpRequest) -> HttpResponse:
    """Walk the whole chain and show the outcome on the audit page (audited)."""
    report = audit_query.check_verify(actor=audit.Actor.from_request(request))
    request.session["audit_report"] = {"ok": report.ok, "text": report.describe()}
    return redirect("portal:audit")
