"""Compliance's side of retention over the API: any conversation's override (member or
not, beyond the org's policy), and legal holds released with a reason on record."""

from __future__ import annotations

import uuid

from orgs.accounts.models import AuditEntry
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, unique

from .helpers import start_conversation


def _audit(org, event: str) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event).order_by("id")))


def test_compliance_sets_any_conversations_retention_without_being_a_member(
    server, new_session, org_b
):
    org = create_org(unique("rc"))
    officer = new_session(org, role="compliance_officer")
    alice, bob, carol = new_session(org), new_session(org), new_session(org)
    group = start_conversation(alice, bob, carol, kind="group")["id"]
    path = f"/api/v1/compliance/conversations/{group}/retention"
    # Given a group the officer is not in, when they keep it ten years (beyond the policy)
    response = officer.api.put(path, json={"days": 3650})
    assert response.status_code == 200, response.text
    assert response.json() == {"days": 3650, "effective_days": 3650}
    # Then the members see it, and it is audited with the officer as actor
    seen = alice.api.get(f"/api/v1/conversations/{group}/retention").json()
    assert seen["days"] == 3650
    (entry,) = _audit(org, "retention.conversation_changed")
    assert entry.actor_id == officer.user.pk and entry.data == {"before": None, "after": 3650}
    # And clearing it restores the policy
    assert officer.api.put(path, json={"days": None}).json()["days"] is None
    # Out of range and malformed values are 400s; unknown ids are 404s
    for bad in (0, 36501, -1, "x", 10**20):
        assert officer.api.put(path, json={"days": bad}).status_code == 400, bad
    for unknown in (uuid.uuid4(), "not-an-id"):
        missing = f"/api/v1/compliance/conversations/{unknown}/retention"
        assert officer.api.put(missing, json={"days": 5}).status_code == 404
    # A member without compliance.manage is refused; another org's officer sees no such id
    assert alice.api.put(path, json={"days": 5}).status_code == 403
    other = new_session(org_b, role="compliance_officer")
    assert other.api.put(path, json={"days": 5}).status_code == 404


def test_a_hold_is_released_with_its_reason_on_record(server, new_session):
    org = create_org(unique("rc"))
    officer = new_session(org, role="compliance_officer")
    subject = new_session(org)
    placed = officer.api.post(
        "/api/v1/compliance/holds", json={"user_id": str(subject.user.pk), "reason": "Case 12"}
    )
    assert placed.status_code == 201, placed.text
    hold = placed.json()["id"]
    too_long = officer.api.delete(f"/api/v1/compliance/holds/{hold}", json={"reason": "x" * 501})
    assert too_long.status_code == 400
    released = officer.api.delete(
        f"/api/v1/compliance/holds/{hold}", json={"reason": "Case 12 closed"}
    )
    assert released.status_code == 200 and released.json()["active"] is False
    (entry,) = _audit(org, "legal_hold.released")
    assert entry.data["reason"] == "Case 12 closed"
    assert entry.actor_id == officer.user.pk
    # Without a body, as before: released, with an empty reason
    again = officer.api.post(
        "/api/v1/compliance/holds", json={"user_id": str(subject.user.pk), "reason": "Case 13"}
    ).json()["id"]
    assert officer.api.delete(f"/api/v1/compliance/holds/{again}").status_code == 200
    assert _audit(org, "legal_hold.released")[-1].data["reason"] == ""
