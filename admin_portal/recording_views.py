"""The portal's Recordings pages: compliance call recordings for holders of
`recordings.read` (list, transcript search, a recording's transcript and its audio played
in the browser), and the recording policy for `compliance.manage`. Every read and change
goes through calls.services.recording_access / .recording_policy, which audit it exactly
as they do for the API (/api/v1/org/recordings..., /api/v1/org/recording-policy)."""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from admin_portal.decorators import portal_perm
from admin_portal.forms import RecordingPolicyForm
from admin_portal.listing import older_query, usernames
from calls.services import recording_access, recording_policy, transcription
from orgs.accounts.models import User
from orgs.roles import Perm, has_perm
from orgs.services import audit
from orgs.services import roles as role_service
from siphera.api_errors import ApiError
from siphera.streaming import streaming_response


def _name_parties(recordings: list[dict]) -> None:
    names = usernames(p["user_id"] for rec in recordings for p in rec["parties"])
    for rec in recordings:
        for party in rec["parties"]:
            party["username"] = names.get(party["user_id"], "(deleted)")


@require_GET
@portal_perm(Perm.RECORDINGS_READ)
def recording_list(request: HttpRequest) -> HttpResponse:
    """Recordings newest first, a page at a time; `?q=` searches the transcripts. Each
    page shown is audited `call.recordings_searched` by the service."""
    query = (request.GET.get("q") or "").strip()
    page, error = None, None
    try:
        before, _ = recording_access.parse_page({"before": request.GET.get("before") or ""})
        page = recording_access.check_search(
            query=query, before=before, actor=audit.Actor.from_request(request)
        )
    except ApiError as exc:
        if exc.status_code == 429:
            raise
        error = exc.message
    if page:
        _name_parties(page.recordings)
    return render(
        request,
        "portal/recordings.html",
        {
            "nav": "recordings",
            "page": page,
            "error": error,
            "query": query,
            "older": older_query(request, page.next_before if page else None),
            "search_max": recording_access.SEARCH_MAX,
            "can_manage": has_perm(request.user, Perm.COMPLIANCE_MANAGE),
        },
        status=400 if error else 200,
    )


@require_GET
@portal_perm(Perm.RECORDINGS_READ)
def recording_detail(request: HttpRequest, recording_id) -> HttpResponse:
    """One recording: its call, parties and state, the player, and the transcript (its
    read is audited `call.recording_accessed`, what: transcript)."""
    rec = recording_access.access_recording(recording_id)  # another org's id is a 404
    parties = recording_access.parties_of([rec]).get(rec.call_id, [])
    payload = recording_access.recording_payload(rec, parties)
    _name_parties([payload])
    transcript = None
    if transcription.transcript_of(rec) is not None:
        transcript = recording_access.check_fetch_transcript(
            rec, actor=audit.Actor.from_request(request)
        )
    return render(
        request,
        "portal/recording_detail.html",
        {
            "nav": "recordings",
            "rec": payload,
            "playable": rec.state == rec.STORED,
            "transcript": transcript,
            "transcript_error": rec.transcript_error,
        },
    )


@require_GET
@portal_perm(Perm.RECORDINGS_READ)
def recording_audio(request: HttpRequest, recording_id) -> HttpResponse:
    """The decrypted WAV, streamed (the page's <audio> plays it; `?download=1` saves it).
    Every fetch is audited `call.recording_accessed`, what: audio, as over the API."""
    rec = recording_access.access_recording(recording_id)
    pieces = recording_access.check_fetch_audio(rec, actor=audit.Actor.from_request(request))
    response = streaming_response(pieces, content_type="audio/wav")
    disposition = "attachment" if request.GET.get("download") else "inline"
    response["Content-Disposition"] = f'{disposition}; filename="recording-{rec.pk}.wav"'
    return response


def _policy_initial(policy_payload: dict) -> dict:
    if policy_payload["everyone"]:
        mode = RecordingPolicyForm.EVERYONE
    elif policy_payload["roles"] or policy_payload["user_ids"]:
        mode = RecordingPolicyForm.CHOSEN
    else:
        mode = RecordingPolicyForm.OFF
    names = usernames(policy_payload["user_ids"])
    return {
        "mode": mode,
        "roles": policy_payload["roles"],
        "usernames": "\n".join(sorted(names.values())),
    }


@require_http_methods(["GET", "POST"])
@portal_perm(Perm.COMPLIANCE_MANAGE)
def recording_policy_page(request: HttpRequest) -> HttpResponse:
    """Who is recorded: off, everyone, or chosen roles and people (by username). The
    change goes through recording_policy.check_update_policy: one audit entry per
    changed field."""
    roles = role_service.list_roles()
    current = recording_policy.policy_payload()
    status = 200
    if request.method == "POST":
        form = RecordingPolicyForm(request.POST, roles=roles)
        if form.is_valid():
            data = form.cleaned_data
            names = data["usernames"] if data["mode"] != form.OFF else []
            found = dict(User.objects.filter(username__in=names).values_list("username", "pk"))
            unknown = [n for n in names if n not in found]
            if unknown:
                form.add_error("usernames", f"No user is called {unknown[0]!r}.")
            else:
                changes = {
                    "everyone": data["mode"] == form.EVERYONE,
                    "roles": data["roles"] if data["mode"] != form.OFF else [],
                    "user_ids": [str(found[n]) for n in names],
                }
                try:
                    recording_policy.check_update_policy(
                        changes, actor=audit.Actor.from_request(request)
                    )
                except ApiError as exc:
                    if exc.status_code == 429:
                        raise
                    form.add_error(None, exc.message)
                else:
                    messages.success(request, "Recording policy saved.")
                    return redirect("portal:recording-policy")
        status = 400
    else:
        form = RecordingPolicyForm(initial=_policy_initial(current), roles=roles)
    shown = _policy_initial(current)
    return render(
        request,
        "portal/recording_policy.html",
        {
            "nav": "recordings",
            "form": form,
            "mode": shown["mode"],
            "roles": [r for r in roles if r.slug in current["roles"]],
            "people": shown["usernames"].split(),
            "connect_seconds": settings.CALL_RECORDING_CONNECT_SECONDS,
            "lost_grace_seconds": settings.CALL_RECORDING_LOST_GRACE_SECONDS,
            "can_read": has_perm(request.user, Perm.RECORDINGS_READ),
        },
        status=status,
    )
