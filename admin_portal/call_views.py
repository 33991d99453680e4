"""The portal's call log: the org's call records (metadata only), for holders of
`calls.view`, each read audited (calls.services.records), with the status of the
deployment's TURN and LiveKit configuration."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from admin_portal.decorators import portal_perm
from admin_portal.listing import older_query, usernames
from calls.services import records
from orgs.accounts.models import User
from orgs.roles import Perm
from orgs.services import audit
from siphera.api_errors import ApiError

CALL_PAGE_SIZE = 50


def media_status() -> dict:
    """What the deployment offers for calls, as configured (never a secret)."""
    return {
        "turn_urls": list(settings.TURN_URLS),
        "turn_ttl": settings.TURN_TTL_SECONDS,
        "turn_secrets": len(settings.TURN_SECRETS),
        "livekit_url": settings.LIVEKIT_URL
        if settings.LIVEKIT_API_KEY and settings.LIVEKIT_API_SECRET
        else "",
        "ring_timeout": settings.CALL_RING_TIMEOUT_SECONDS,
        "reconnect_grace": settings.CALL_RECONNECT_GRACE_SECONDS,
    }


@require_GET
@portal_perm(Perm.CALLS_VIEW)
def call_log(request: HttpRequest) -> HttpResponse:
    """Calls newest first, optionally one user's (by username); older pages by time."""
    username = (request.GET.get("user") or "").strip().lower()
    error = None
    page = None
    user_id = None
    if username:
        user_id = User.objects.filter(username=username).values_list("pk", flat=True).first()
        if user_id is None:
            error = f"No user is called {username!r}."
    if error is None:
        try:
            before, _ = records.parse_page({"before": request.GET.get("before") or ""})
            page = records.check_list_org_calls(
                before=before,
                limit=CALL_PAGE_SIZE,
                user_id=str(user_id) if user_id else None,
                actor=audit.Actor.from_request(request),
            )
        except ApiError as exc:
            error = exc.message
    if page:
        names = usernames(p["user_id"] for call in page.calls for p in call["participants"])
        for call in page.calls:
            call["people"] = [
                {**p, "username": names.get(p["user_id"], "(deleted)")}
                for p in call["participants"]
            ]
    return render(
        request,
        "portal/calls.html",
        {
            "nav": "calls",
            "page": page,
            "error": error,
            "user_filter": username,
            "older": older_query(request, page.next_before if page else None),
            "media": media_status(),
        },
        status=400 if error else 200,
    )
