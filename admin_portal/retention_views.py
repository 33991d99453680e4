"""The portal's Retention page (`compliance.manage`): the org's retention, its attachment
size limit and quotas, per-conversation overrides, and legal holds placed and released
with a reason, with who did what from the audit log. The rules, checks and audit entries
are messaging.services.retention's, the same the API (/api/v1/compliance/...) calls."""

from __future__ import annotations

import json

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from admin_portal.decorators import portal_perm
from admin_portal.forms import (
    ConversationRetentionForm,
    HoldForm,
    HoldReleaseForm,
    QuotaForm,
    RetentionPolicyForm,
)
from admin_portal.listing import usernames
from messaging.services import retention
from orgs.accounts.models import User
from orgs.roles import Perm, has_perm
from orgs.services import audit, audit_export, audit_query
from siphera.api_errors import ApiError

HISTORY = 25
RELEASED_SHOWN = 50


def _history() -> list[dict]:
    filters = audit_export.check_filter(events=["retention.*", "legal_hold.*"])
    entries = audit_query.list_entries(filters, limit=HISTORY).entries
    for entry in entries:
        entry["data_json"] = json.dumps(entry["data"], sort_keys=True, ensure_ascii=False)
    return entries


def _page(request: HttpRequest, *, status: int = 200, **forms) -> HttpResponse:
    policy = retention.get_policy()
    active = retention.list_holds(active_only=True)
    released = retention.recently_released_holds(RELEASED_SHOWN)
    holds = [*active, *released]
    names = usernames(
        [h.user_id for h in holds]
        + [h.placed_by_id for h in holds]
        + [h.released_by_id for h in holds]
    )
    for hold in holds:
        hold.user_name = names.get(str(hold.user_id), "") if hold.user_id else ""
        hold.placed_by_name = names.get(str(hold.placed_by_id), "—")
        hold.released_by_name = names.get(str(hold.released_by_id), "—")
    payload = retention.policy_payload(policy)
    quota_form = forms.get("quota_form") or QuotaForm(
        initial=QuotaForm.initial_from(payload), limits=payload["limits"]
    )
    context = {
        "nav": "retention",
        "payload": payload,
        "quota_form": quota_form,
        "quota_rows": quota_form.byte_field_rows(payload),
        "policy_form": forms.get("policy_form")
        or RetentionPolicyForm(initial={"retention_days": policy.retention_days}),
        "override_form": forms.get("override_form") or ConversationRetentionForm(),
        "hold_form": forms.get("hold_form") or HoldForm(),
        "release_form": HoldReleaseForm(),
        "release_error": forms.get("release_error"),
        "overrides": retention.conversation_overrides(),
        "active_holds": active,
        "released_holds": released,
        "history": _history(),
        "can_audit": has_perm(request.user, Perm.AUDIT_VIEW),
    }
    return render(request, "portal/retention.html", context, status=status)


@require_GET
@portal_perm(Perm.COMPLIANCE_MANAGE)
def retention_page(request: HttpRequest) -> HttpResponse:
    return _page(request)


def _refused(exc: ApiError) -> None:
    if exc.status_code in (404, 429):
        raise exc


def _save_policy(request: HttpRequest, form, key: str, changes, saved: str) -> HttpResponse:
    """Apply a valid policy form through retention.check_set_policy (which audits each
    changed field); otherwise, or when the service refuses, the page again with the form
    (`key`) showing why."""
    if form.is_valid():
        try:
            retention.check_set_policy(changes(form), actor=audit.Actor.from_request(request))
        except ApiError as exc:
            _refused(exc)
            form.add_error(None, exc.message)
        else:
            messages.success(request, saved)
            return redirect("portal:retention")
    return _page(request, status=400, **{key: form})


@require_POST
@portal_perm(Perm.COMPLIANCE_MANAGE)
def retention_policy(request: HttpRequest) -> HttpResponse:
    return _save_policy(
        request,
        RetentionPolicyForm(request.POST),
        "policy_form",
        lambda form: {"retention_days": form.cleaned_data["retention_days"]},
        "Retention saved.",
    )


@require_POST
@portal_perm(Perm.COMPLIANCE_MANAGE)
def retention_quotas(request: HttpRequest) -> HttpResponse:
    """The attachment size limit, the storage and upload quotas and the queue cap."""
    return _save_policy(
        request,
        QuotaForm(request.POST, limits=retention.policy_payload()["limits"]),
        "quota_form",
        QuotaForm.policy_changes,
        "Quotas saved.",
    )


@require_POST
@portal_perm(Perm.COMPLIANCE_MANAGE)
def retention_override(request: HttpRequest) -> HttpResponse:
    """Set or clear one conversation's own retention."""
    form = ConversationRetentionForm(request.POST)
    if form.is_valid():
        try:
            conversation = retention.access_any_conversation(form.cleaned_data["conversation"])
            retention.check_set_conversation_retention(
                conversation,
                form.cleaned_data["days"],
                acting_user=request.user,
                acting_device_id=None,
                actor=audit.Actor.from_request(request),
            )
        except ApiError as exc:
            if exc.status_code == 429:
                raise
            form.add_error(None, exc.message)
        else:
            days = form.cleaned_data["days"]
            messages.success(
                request,
                f"Conversation {conversation.pk}: "
                + (f"kept {days} days." if days else "the org's retention applies again."),
            )
            return redirect("portal:retention")
    return _page(request, status=400, override_form=form)


@require_POST
@portal_perm(Perm.COMPLIANCE_MANAGE)
def hold_place(request: HttpRequest) -> HttpResponse:
    form = HoldForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            target = {}
            if data["kind"] == HoldForm.USER:
                user = User.objects.filter(username=data["username"].strip().lower()).first()
                if user is None:
                    raise ApiError(400, "unknown_user", f"No user is called {data['username']!r}.")
                target["user_id"] = user.pk
            else:
                target["conversation_id"] = data["conversation"]
            retention.check_place_hold(
                **target, reason=data["reason"], actor=audit.Actor.from_request(request)
            )
        except ApiError as exc:
            if exc.status_code == 429:
                raise
            form.add_error(None, exc.message)
        else:
            messages.success(
                request, "Legal hold placed: retention no longer deletes what it covers."
            )
            return redirect("portal:retention")
    return _page(request, status=400, hold_form=form)


@require_POST
@portal_perm(Perm.COMPLIANCE_MANAGE)
def hold_release(request: HttpRequest, hold_id) -> HttpResponse:
    hold = retention.access_hold(hold_id)  # another org's id is a 404
    form = HoldReleaseForm(request.POST)
    if not form.is_valid():
        return _page(request, status=400, release_error=(str(hold.pk), "Say why you release it."))
    retention.check_release_hold(
        hold, actor=audit.Actor.from_request(request), reason=form.cleaned_data["reason"]
    )
    messages.success(
        request, "Legal hold released: the next retention run may delete what it kept."
    )
    return redirect("portal:retention")
