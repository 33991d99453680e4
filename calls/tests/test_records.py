"""Call records over REST: own calls for users, the org's call log for admins (audited),
other orgs see nothing, and records go with the org's retention unless held."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from calls.models import Call
from calls.services import records, signaling
from orgs.accounts.models import AuditEntry
from orgs.services import audit
from siphera.tenancy import in_tenant

OFFER = "v=0\r\ns=secret-offer-marker\r\n"
ANSWER = "v=0\r\ns=secret-answer-marker\r\n"


def _call(org, caller, callee, *, answer: bool) -> str:
    """A call placed through the signaling service (the same code the socket runs)."""
    call_id = str(uuid.uuid4())

    def run():
        signaling.check_invite(
            user=caller.user,
            device_id=caller.device_id,
            call_id=call_id,
            to={"user_id": str(callee.user.pk)},
            media="audio",
            sdp=OFFER,
        )
        if answer:
            signaling.check_accept(
                user=callee.user, device_id=callee.device_id, call_id=call_id, sdp=ANSWER
            )
            signaling.check_hangup(user=caller.user, device_id=caller.device_id, call_id=call_id)
        else:
            signaling.check_hangup(user=caller.user, device_id=caller.device_id, call_id=call_id)

    in_tenant(org, run)
    return call_id


@pytest.fixture
def calls_world(org_a, new_session):
    alice, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    completed = _call(org_a, alice, bob, answer=True)
    cancelled = _call(org_a, bob, alice, answer=False)
    return {"alice": alice, "bob": bob, "carol": carol, "ids": [completed, cancelled]}


def test_a_user_lists_their_own_calls_newest_first_with_pages(calls_world):
    alice, bob = calls_world["alice"], calls_world["bob"]
    completed, cancelled = calls_world["ids"]
    body = alice.api.get("/api/v1/calls").json()
    assert [c["call_id"] for c in body["calls"]] == [cancelled, completed]
    newest, oldest = body["calls"]
    assert (oldest["direction"], oldest["outcome"], oldest["end_reason"]) == (
        "outgoing",
        "completed",
        "hangup",
    )
    assert oldest["answered_at"] and oldest["duration_seconds"] is not None
    assert {p["role"] for p in oldest["participants"]} == {"caller", "callee"}
    assert (newest["direction"], newest["outcome"]) == ("incoming", "missed")
    assert "marker" not in alice.api.get("/api/v1/calls").text  # no SDP is kept

    first = bob.api.get("/api/v1/calls?limit=1").json()
    assert [c["call_id"] for c in first["calls"]] == [cancelled]
    second = bob.api.get("/api/v1/calls", params={"limit": 1, "before": first["next_before"]})
    assert [c["call_id"] for c in second.json()["calls"]] == [completed]


def test_people_outside_a_call_and_other_orgs_see_nothing_of_it(calls_world, org_b, new_session):
    assert calls_world["carol"].api.get("/api/v1/calls").json() == {
        "calls": [],
        "next_before": None,
    }
    owner_b = new_session(org_b, role="owner")
    assert owner_b.api.get("/api/v1/calls").json()["calls"] == []
    assert owner_b.api.get("/api/v1/org/calls").json()["calls"] == []


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=201", "limit=x", "before=yesterday", "before=2026-01-01T00:00:00"]
)
def test_bad_page_parameters_are_a_clear_400(calls_world, query):
    response = calls_world["alice"].api.get(f"/api/v1/calls?{query}")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_call"


def test_the_call_log_is_for_calls_view_holders_and_every_read_is_audited(
    org_a, calls_world, new_session
):
    anonymous = calls_world["alice"].api.as_device(None)
    assert anonymous.get("/api/v1/calls").status_code == 401
    assert calls_world["alice"].api.get("/api/v1/org/calls").status_code == 403

    officer = new_session(org_a, role="compliance_officer")
    bob = calls_world["bob"]
    response = officer.api.get("/api/v1/org/calls", params={"user_id": str(bob.user.pk)})
    assert response.status_code == 200
    assert {c["call_id"] for c in response.json()["calls"]} == set(calls_world["ids"])

    entry = in_tenant(
        org_a,
        lambda: AuditEntry.objects.filter(event="call.records_viewed").order_by("-id").first(),
    )
    assert entry.actor_id == officer.user.pk
    assert entry.data["user_id"] == str(bob.user.pk) and entry.data["count"] == 2
    bad = officer.api.get("/api/v1/org/calls", params={"user_id": "nope"})
    assert bad.status_code == 400


def test_records_past_retention_are_purged_unless_held(org_a, calls_world):
    from messaging.services import retention

    alice, bob, carol = calls_world["alice"], calls_world["bob"], calls_world["carol"]
    held = _call(org_a, carol, alice, answer=True)
    old = timezone.now() - timedelta(days=400)
    in_tenant(
        org_a,
        lambda: Call.objects.filter(pk__in=[*calls_world["ids"], held]).update(
            ended_at=old, created_at=old
        ),
    )

    def purge_with_hold_on_carol():
        hold = retention.check_place_hold(
            user_id=str(carol.user.pk), reason="case 7", actor=audit.Actor.system("tests")
        )
        try:
            return records.do_purge_call_records(actor=audit.Actor.system("tests"))
        finally:
            retention.check_release_hold(hold, actor=audit.Actor.system("tests"))

    deleted = in_tenant(org_a, purge_with_hold_on_carol)
    assert deleted >= 2
    left = set(in_tenant(org_a, lambda: list(Call.objects.values_list("pk", flat=True))))
    assert uuid.UUID(held) in left
    assert not {uuid.UUID(i) for i in calls_world["ids"]} & left
    assert bob.api.get("/api/v1/calls").json()["calls"] == []
