"""The portal's Domains page (`org.manage`): the org's host names, claiming one, proving it
with a DNS TXT record, and removing one. The rules and audit entries are
orgs.services.domains', the same the API (/api/v1/org/domains) calls."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from admin_portal.decorators import portal_perm
from admin_portal.forms import DomainForm
from orgs.accounts.models import PendingDomain
from orgs.roles import Perm
from orgs.services import audit, domains
from siphera.api_errors import ApiError
from siphera.tenancy import normalize_host


def _current_host(request: HttpRequest) -> str | None:
    return normalize_host(request.META.get("HTTP_HOST", ""))


@require_http_methods(["GET", "POST"])
@portal_perm(Perm.ORG_MANAGE)
def domain_list(request: HttpRequest) -> HttpResponse:
    """The org's names, and a form to claim another."""
    form = DomainForm(request.POST if request.method == "POST" else None)
    status = 200
    if form.is_bound and form.is_valid():
        try:
            pending = domains.check_claim_domain(
                request.tenant, form.cleaned_data["domain"], actor=audit.Actor.from_request(request)
            )
        except ApiError as exc:
            if exc.status_code == 429:
                raise
            form.add_error("domain", exc.message)
            status = 400
        else:
            messages.success(
                request, f"Publish the TXT record below for {pending.domain}, then verify it."
            )
            return redirect("portal:domains")
    elif form.is_bound:
        status = 400
    found = domains.list_domains(request.tenant)
    pending = [
        {"row": row, "txt_name": domains.record_name(row), "txt_value": domains.record_value(row)}
        for row in found.pending
    ]
    return render(
        request,
        "portal/domains.html",
        {
            "nav": "domains",
            "form": form,
            "routed": found.routed,
            "pending": pending,
            "current_host": _current_host(request),
        },
        status=status,
    )


@require_POST
@portal_perm(Perm.ORG_MANAGE)
def domain_verify(request: HttpRequest, domain: str) -> HttpResponse:
    row = domains.access_domain(request.tenant, domain)  # another org's name is a 404
    if not isinstance(row, PendingDomain):
        messages.info(request, f"{row.domain} is verified already.")
        return redirect("portal:domains")
    try:
        added = domains.check_verify_domain(
            request.tenant, row, actor=audit.Actor.from_request(request)
        )
    except ApiError as exc:
        if exc.status_code == 429:
            raise
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Verified: {added.domain} now leads to this organisation.")
    return redirect("portal:domains")


@require_POST
@portal_perm(Perm.ORG_MANAGE)
def domain_remove(request: HttpRequest, domain: str) -> HttpResponse:
    row = domains.access_domain(request.tenant, domain)
    try:
        domains.check_remove_domain(
            request.tenant,
            row,
            actor=audit.Actor.from_request(request),
            current_host=_current_host(request),
        )
    except ApiError as exc:
        if exc.status_code == 429:
            raise
        messages.error(request, exc.message)
    else:
        messages.success(request, f"Removed {row.domain}.")
    return redirect("portal:domains")
