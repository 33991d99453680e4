"""Compliance exports over REST and the command: exactly a user's messages, membership
changes and calls of a range (checked against the database), never a body; the legal-hold
archive with its manifest; every export audited; bad input a clear 4xx; and nothing of
another org."""

from __future__ import annotations

import base64
import csv
import io
import json
import uuid
import zipfile
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from calls.models import Call, CallParticipant
from calls.tests.test_records import _call
from messaging.models import Message
from messaging.services import retention
from messaging.tests.helpers import send_body, start_conversation
from orgs.accounts.models import AuditEntry
from orgs.services import audit, compliance
from orgs.services.compliance_archive import verify_archive
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, unique

MARKER = b"\x00secret-ciphertext-marker\x00"


@pytest.fixture
def world(new_session):
    """A fresh org: alice, bob, carol, an officer; alice and bob talk directly, the three
    share a group from which carol is removed; alice calls bob, bob calls carol; one of
    alice's messages and one call are moved out of the range."""
    org = create_org(unique("cx"), f"{unique('h')}.test")
    alice, bob, carol = (new_session(org) for _ in range(3))
    officer = new_session(org, role="compliance_officer")
    direct = start_conversation(alice, bob)["id"]
    group = start_conversation(alice, bob, carol, kind="group")["id"]
    for n in range(3):
        assert send_body(alice, direct, MARKER + bytes([n])).status_code == 201
    for n in range(2):
        assert send_body(bob, direct, MARKER + bytes([10 + n])).status_code == 201
    old = send_body(alice, group, MARKER + b"old").json()["id"]
    assert send_body(carol, group, MARKER + b"carol").status_code == 201
    removed = alice.api.delete(f"/api/v1/conversations/{group}/members/{carol.user.pk}")
    assert removed.status_code in (200, 204), removed.text
    answered = _call(org, alice, bob, answer=True)
    _call(org, bob, carol, answer=False)
    old_call = _call(org, carol, alice, answer=False)
    long_ago = timezone.now() - timedelta(days=20)
    in_tenant(org, lambda: Message.objects.filter(pk=old).update(created_at=long_ago))
    in_tenant(org, lambda: Call.objects.filter(pk=old_call).update(created_at=long_ago))
    since = timezone.now() - timedelta(days=1)
    until = timezone.now() + timedelta(minutes=5)
    return dict(
        org=org,
        alice=alice,
        bob=bob,
        carol=carol,
        officer=officer,
        direct=direct,
        group=group,
        answered=answered,
        range={"since": since.isoformat(), "until": until.isoformat()},
        since=since,
        until=until,
    )


def _export(session, **params):
    response = session.api.get("/api/v1/compliance/export", params=params)
    assert response.status_code == 200, response.text
    return response


def _jsonl(response) -> list[dict]:
    return [json.loads(line) for line in response.text.splitlines() if line]


def _db_ids(org, user, since, until):
    """What the database says a user's messages, calls and membership events are."""

    def read():
        messages = Message.objects.filter(
            sender=user, kind=Message.MESSAGE, created_at__gte=since, created_at__lt=until
        )
        calls = Call.objects.filter(created_at__gte=since, created_at__lt=until).filter(
            Q(caller=user) | Exists(CallParticipant.objects.filter(call=OuterRef("pk"), user=user))
        )
        events = Message.objects.filter(
            kind=Message.EVENT,
            event__action__startswith="member.",
            created_at__gte=since,
            created_at__lt=until,
        ).filter(Q(sender=user) | Q(event__user_ids__contains=[str(user.pk)]))
        return (
            {str(pk) for pk in messages.values_list("pk", flat=True)},
            {str(pk) for pk in calls.values_list("pk", flat=True)},
            {str(pk) for pk in events.values_list("pk", flat=True)},
        )

    return in_tenant(org, read)


def test_a_users_export_lists_exactly_their_messages_and_calls_of_the_range(world):
    alice, officer = world["alice"], world["officer"]
    rows = _jsonl(_export(officer, user=str(alice.user.pk), format="jsonl", **world["range"]))
    by_section: dict[str, set] = {}
    for row in rows:
        by_section.setdefault(row["section"], set()).add(row["id"])
    messages, calls, events = _db_ids(world["org"], alice.user, world["since"], world["until"])
    assert by_section["messages"] == messages and len(messages) == 3  # the old one is out
    assert by_section["calls"] == calls and len(calls) == 1 and world["answered"] in calls
    assert by_section["membership"] == events and len(events) == 1  # carol removed

    message_rows = [r for r in rows if r["section"] == "messages"]
    assert {r["user_id"] for r in message_rows} == {str(alice.user.pk)}
    assert {r["device_id"] for r in message_rows} == {alice.device_id}
    assert {r["body_bytes"] for r in message_rows} == {len(MARKER) + 1}
    assert all(r["conversation_id"] == world["direct"] for r in message_rows)
    # Exactly the declared columns: no body, envelope or any other content field.
    for row in rows:
        section = compliance.sections()[row["section"]]
        assert set(row) == {"section", *section.columns}
    assert "body" not in json.dumps(rows).replace("body_bytes", "")
    assert (
        base64.b64encode(MARKER).decode()[:16]
        not in _export(officer, format="jsonl", **world["range"]).text
    )


def test_the_csv_export_has_the_same_rows_and_no_content(world):
    alice, officer = world["alice"], world["officer"]
    response = _export(officer, user=str(alice.user.pk), format="csv", **world["range"])
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert tuple(rows[0].keys()) == compliance.columns()
    messages, calls, _ = _db_ids(world["org"], alice.user, world["since"], world["until"])
    assert {r["id"] for r in rows if r["section"] == "messages"} == messages
    assert {r["id"] for r in rows if r["section"] == "calls"} == calls
    assert "marker" not in response.text
    call_row = next(r for r in rows if r["section"] == "calls")
    assert {p["user_id"] for p in json.loads(call_row["participants"])} == {
        str(alice.user.pk),
        str(world["bob"].user.pk),
    }


def test_sections_can_be_chosen_and_every_export_is_audited(world):
    officer, bob = world["officer"], world["bob"]
    rows = _jsonl(
        _export(officer, user=str(bob.user.pk), sections="calls", format="jsonl", **world["range"])
    )
    assert {r["section"] for r in rows} == {"calls"} and len(rows) == 2

    entry = in_tenant(
        world["org"],
        lambda: AuditEntry.objects.filter(event="compliance.exported").order_by("-id").first(),
    )
    assert entry.actor_id == officer.user.pk
    assert entry.data["user_ids"] == [str(bob.user.pk)]
    assert entry.data["format"] == "jsonl" and entry.data["sections"] == ["calls"]
    assert entry.data["since"] == world["since"].isoformat()
    assert entry.data["counts"] == {"calls": 2}


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"since": "2026-02-01", "until": "2026-01-01"}, 400, "invalid_range"),
        ({"since": "2026-01-01"}, 400, "invalid_range"),
        ({"since": "yesterday", "until": "2026-01-01"}, 400, "invalid_time"),
        ({"since": "0001-01-01", "until": "9999-12-31"}, 400, "range_too_large"),
        ({"since": "2026-01-01", "until": "99999-01-01"}, 400, "invalid_time"),
        ({"since": "2026-01-01", "until": "2026-02-01", "user": "nope"}, 400, "invalid_user"),
        ({"since": "2026-01-01", "until": "2026-02-01", "user": str(uuid.uuid4())}, 404, None),
        ({"since": "2026-01-01", "until": "2026-02-01", "sections": "bodies"}, 400, None),
        ({"since": "2026-01-01", "until": "2026-02-01", "format": "xlsx"}, 400, None),
    ],
)
def test_bad_export_requests_are_a_clear_4xx_and_not_audited(world, params, status, code):
    before = in_tenant(
        world["org"], lambda: AuditEntry.objects.filter(event="compliance.exported").count()
    )
    response = world["officer"].api.get("/api/v1/compliance/export", params=params)
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code
    after = in_tenant(
        world["org"], lambda: AuditEntry.objects.filter(event="compliance.exported").count()
    )
    assert after == before


def test_too_many_users_is_a_400(world):
    users = ",".join(str(uuid.uuid4()) for _ in range(compliance.MAX_USERS + 1))
    response = world["officer"].api.get(
        "/api/v1/compliance/export", params={**world["range"], "user": users}
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "too_many_users"


def test_only_holders_of_compliance_export_may_export(world, new_session):
    assert (
        world["alice"].api.get("/api/v1/compliance/export", params=world["range"]).status_code
        == 403
    )
    desk = new_session(world["org"], role="security_desk")
    assert desk.api.get("/api/v1/compliance/export", params=world["range"]).status_code == 403
    anonymous = world["alice"].api.as_device(None)
    assert anonymous.get("/api/v1/compliance/export", params=world["range"]).status_code == 401
    owner = new_session(world["org"], role="owner")
    assert owner.api.get("/api/v1/compliance/export", params=world["range"]).status_code == 200


def test_another_org_sees_nothing_and_cannot_name_this_orgs_users(world, org_b, new_session):
    officer_b = new_session(org_b, role="compliance_officer")
    alice = world["alice"]
    refused = officer_b.api.get(
        "/api/v1/compliance/export", params={**world["range"], "user": str(alice.user.pk)}
    )
    assert refused.status_code == 404
    everything = officer_b.api.get(
        "/api/v1/compliance/export", params={**world["range"], "format": "jsonl"}
    )
    assert everything.status_code == 200
    for value in (str(alice.user.pk), world["direct"], world["group"], world["answered"]):
        assert value not in everything.text


def test_the_legal_hold_archive_holds_the_held_ciphertext_with_a_manifest(world, tmp_path):
    alice, officer = world["alice"], world["officer"]
    hold = in_tenant(
        world["org"],
        lambda: retention.check_place_hold(
            user_id=str(carol_id(world)), reason="matter 9", actor=audit.Actor.system("tests")
        ),
    )
    try:
        response = _export(officer, format="zip", **world["range"])
        assert response.headers["content-type"] == "application/zip"
        path = tmp_path / "held.zip"
        path.write_bytes(response.content)
        assert verify_archive(path) == []
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
            names = {f["name"] for f in manifest["files"]}
            assert {"legal-holds.json", "messages.jsonl", "calls.jsonl"} <= names
            holds = json.loads(archive.read("legal-holds.json"))
            assert [h["id"] for h in holds] == [str(hold.pk)]
            held = [json.loads(x) for x in archive.read("messages.jsonl").splitlines()]
            calls = [json.loads(x) for x in archive.read("calls.jsonl").splitlines()]
        # Carol was in the group (its messages in range are held), never in the direct
        # conversation of alice and bob (not held).
        assert held and {m["conversation_id"] for m in held} == {world["group"]}
        bodies = {base64.b64decode(m["body_base64"]) for m in held if m["body_base64"]}
        assert MARKER + b"carol" in bodies
        assert {c["call_id"] for c in calls} and all(
            str(carol_id(world)) in {p["user_id"] for p in c["participants"]} for c in calls
        )
        # A tampered archive is caught.
        tampered = tmp_path / "tampered.zip"
        with zipfile.ZipFile(path) as src, zipfile.ZipFile(tampered, "w") as dst:
            for item in src.infolist():
                data = src.read(item.filename)
                dst.writestr(item.filename, data + b"x" if item.filename == "calls.jsonl" else data)
        assert verify_archive(tampered) == ["calls.jsonl does not match its SHA-256"]
    finally:
        in_tenant(
            world["org"],
            lambda: retention.check_release_hold(hold, actor=audit.Actor.system("tests")),
        )
    assert alice  # the archive named who was held, not the requester


def carol_id(world):
    return world["carol"].user.pk


def test_the_command_writes_the_same_export_and_refuses_bad_input(world, tmp_path):
    alice = world["alice"]
    out = tmp_path / "export.jsonl"
    call_command(
        "compliance_export",
        org=world["org"].slug,
        since=world["since"].isoformat(),
        until=world["until"].isoformat(),
        users=[str(alice.user.pk)],
        format="jsonl",
        output=out,
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    messages, calls, _ = _db_ids(world["org"], alice.user, world["since"], world["until"])
    assert {r["id"] for r in rows if r["section"] == "messages"} == messages
    assert {r["id"] for r in rows if r["section"] == "calls"} == calls
    printed = io.StringIO()
    call_command(
        "compliance_export",
        org=world["org"].slug,
        since=world["since"].isoformat(),
        until=world["until"].isoformat(),
        users=[str(alice.user.pk)],
        format="csv",
        stdout=printed,
    )
    assert {r["id"] for r in csv.DictReader(io.StringIO(printed.getvalue()))} >= messages
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="with --output"):
        call_command(
            "compliance_export",
            org=world["org"].slug,
            since="2026-01-01",
            until="2026-02-01",
            format="zip",
            stdout=io.StringIO(),
        )
    with pytest.raises(CommandError, match="since must be before until"):
        call_command(
            "compliance_export",
            org=world["org"].slug,
            since="2026-02-01",
            until="2026-01-01",
            output=tmp_path / "x",
        )
    assert not (tmp_path / "x").exists()


def test_csv_cells_are_neutralised_against_spreadsheet_formulas():
    line = compliance._csv_line(["=1+1", "+2", "-3", "@SUM(A1)", "\tx", "ok", 5])
    cells = next(csv.reader(io.StringIO(line, newline="")))
    assert cells == ["'=1+1", "'+2", "'-3", "'@SUM(A1)", "'\tx", "ok", "5"]
    assert compliance._csv_line(["\rx"]).startswith("'\rx")
