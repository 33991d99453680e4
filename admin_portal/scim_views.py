"""Portal page for SCIM provisioning: the base URL an IdP needs, its bearer token (rotate:
shown once; revoke), when it was last used, and the provisioning activity (the `scim.*`
audit entries). Owners only (`org.manage`)."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from admin_portal.decorators import portal_perm
from orgs.roles import Perm
from orgs.scim import activity, tokens
from orgs.services import audit


@require_http_methods(["GET", "POST"])
@portal_perm(Perm.ORG_MANAGE)
def scim_page(request: HttpRequest) -> HttpResponse:
    actor = audit.Actor.from_request(request)
    new_token = None
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "rotate":
            row, new_token = tokens.do_rotate_token(
                label=request.POST.get("label", "")[:100] or "identity provider", actor=actor
            )
        elif action == "revoke":
            count = tokens.do_revoke_tokens(actor=actor)
            messages.success(
                request, "SCIM token revoked: provisioning stops." if count else "No live token."
            )
            return redirect("portal:scim")
    scheme = "https" if request.is_secure() else "http"
    context = {
        "nav": "scim",
        "base_url": f"{scheme}://{request.get_host()}/scim/v2/",
        "token": tokens.live_token(),
        "new_token": new_token,
        "entries": [_row(e) for e in activity.recent(50)],
    }
    return render(request, "portal/scim.html", context)


def _row(entry) -> dict:
    """One activity line: when, what, who, about whom, and what changed."""
    data = entry.data or {}
    details = []
    if data.get("changed"):
        details.append("changed " + ", ".join(data["changed"]))
    if data.get("renamed_from"):
        details.append(f"renamed from “{data['renamed_from']}”")
    if data.get("added_count"):
        details.append(f"+{data['added_count']} member(s)")
    if data.get("removed_count"):
        details.append(f"−{data['removed_count']} member(s)")
    if "members" in data and entry.event != "scim.group_updated":
        details.append(f"{data['members']} member(s)")
    if "revoked" in data:
        details.append(f"{data['revoked']} token(s) revoked")
    return {
        "ts": entry.ts,
        "event": entry.event,
        "actor": entry.actor_label,
        "target": data.get("username") or data.get("display_name") or data.get("label") or "",
        "details": "; ".join(details),
    }
