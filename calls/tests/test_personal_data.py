"""Data-subject requests over REST and commands: the personal-data export (everything
held about a user, no secret, no content) and erasure (revokes everything live, redacts
and pseudonymises, keeps what a legal hold or the audit log must keep and says why,
atomic), each for its permission only and blind to the other org."""

from __future__ import annotations

import asyncio
import io
import json
import uuid

import pytest
from django.core.management import call_command
from PIL import Image

from calls.tests.test_compliance_export import MARKER
from calls.tests.test_records import _call
from messaging.models import Member, Message
from messaging.services import retention
from messaging.tests.helpers import send_body, start_conversation
from orgs import hooks
from orgs.accounts.models import AuditEntry, Device, User
from orgs.services import audit, personal_data
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, unique
from tests.ws import authed_socket, wait_closed


@pytest.fixture
def people(new_session):
    org = create_org(unique("pd"), f"{unique('h')}.test")
    alice, bob, carol = (new_session(org) for _ in range(3))
    officer = new_session(org, role="compliance_officer")
    direct = start_conversation(alice, bob)["id"]
    group = start_conversation(alice, bob, carol, kind="group")["id"]
    for n in range(2):
        assert send_body(bob, direct, MARKER + bytes([n])).status_code == 201
    assert send_body(bob, group, MARKER + b"group").status_code == 201
    assert send_body(alice, direct, MARKER + b"alice").status_code == 201
    call = _call(org, bob, alice, answer=True)
    return dict(
        org=org, alice=alice, bob=bob, carol=carol, officer=officer, direct=direct,
        group=group, call=call,
    )  # fmt: skip


SECRET_WORDS = ("hash", "secret", "password", "token", "seed")


def _keys(value):
    """Every key of a JSON document, however deep."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _keys(item)


def _entries(org, event):
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event).order_by("id")))


# --- export ----------------------------------------------------------------------------


def test_the_personal_data_export_holds_everything_about_the_user_and_no_secret(people):
    bob, officer = people["bob"], people["officer"]
    response = officer.api.get(f"/api/v1/users/{bob.user.pk}/personal-data")
    assert response.status_code == 200, response.text
    assert "attachment" in response.headers["content-disposition"]
    doc = response.json()
    assert doc["user"]["id"] == str(bob.user.pk) and doc["user"]["username"] == bob.user.username
    assert [d["device_id"] for d in doc["devices"]] == [bob.device_id]
    assert {m["conversation_id"] for m in doc["memberships"]} == {
        people["direct"],
        people["group"],
    }
    assert len(doc["messages"]) == 3 and all(m["body_bytes"] > 0 for m in doc["messages"])
    assert [c["call_id"] for c in doc["calls"]] == [people["call"]]
    assert any(e["event"] == "device.registered" for e in doc["audit_entries"])
    assert any(s["kind"] == "login_grant" for s in doc["sign_ins"])
    assert {"last_seen_ip", "user_agent"} <= set(doc["devices"][0])
    assert {"title", "time_zone", "has_avatar"} <= set(doc["user"])
    text = response.text
    assert bob.token not in text and "marker" not in text
    assert not [key for key in _keys(doc) if any(w in key for w in SECRET_WORDS)]
    assert "argon2" not in text

    entry = _entries(people["org"], "member.personal_data_exported")[-1]
    assert entry.actor_id == officer.user.pk and entry.target_id == str(bob.user.pk)


def test_the_personal_data_export_is_refused_without_the_code_or_across_orgs(
    people, org_b, new_session
):
    bob = people["bob"]
    assert people["alice"].api.get(f"/api/v1/users/{bob.user.pk}/personal-data").status_code == 403
    officer_b = new_session(org_b, role="compliance_officer")
    assert officer_b.api.get(f"/api/v1/users/{bob.user.pk}/personal-data").status_code == 404
    officer = people["officer"]
    assert officer.api.get(f"/api/v1/users/{uuid.uuid4()}/personal-data").status_code == 404
    assert officer.api.get("/api/v1/users/nope/personal-data").status_code == 404


# --- erasure ---------------------------------------------------------------------------


def test_erasure_revokes_everything_redacts_messages_and_records_why(people, server, media_root):
    bob, officer, alice = people["bob"], people["officer"], people["alice"]

    async def erase_while_connected():
        ws = await authed_socket(server, bob)
        response = await asyncio.to_thread(
            officer.api.post,
            f"/api/v1/users/{bob.user.pk}/erase",
            json={"reason": "GDPR art. 17 request #12"},
        )
        return response, await wait_closed(ws)

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    uploaded = bob.api.put(
        "/api/v1/me/avatar", content=buffer.getvalue(), headers={"Content-Type": "image/png"}
    )
    assert uploaded.status_code == 200, uploaded.text
    in_tenant(
        people["org"],
        lambda: User.objects.filter(pk=bob.user.pk).update(title="Eng", time_zone="Europe/Paris"),
    )
    avatar = in_tenant(people["org"], lambda: User.objects.get(pk=bob.user.pk).avatar)
    assert (media_root / avatar).exists()
    response, close_code = asyncio.run(erase_while_connected())
    assert response.status_code == 200, response.text
    assert close_code == 4403
    report = response.json()
    assert report["reason"] == "GDPR art. 17 request #12" and report["profile"] == "pseudonymised"
    assert report["removed"]["messages_redacted"] == 3
    assert report["removed"]["memberships"] == 2
    kept = {k["what"]: k for k in report["kept"]}
    assert kept["call_records"]["count"] == 1 and "audit_entries" in kept
    assert bob.api.get("/api/v1/me").status_code == 401  # the device token is dead

    def stored():
        user = User.objects.get(pk=bob.user.pk)
        bodies = list(Message.objects.filter(sender=user, kind="message").values_list("body"))
        return (
            user,
            bodies,
            Member.objects.filter(user=user).count(),
            list(
                Device.objects.filter(user=user).values_list(
                    "name", "token_hash", "revoked_at", "last_seen_ip", "user_agent"
                )
            ),
            Message.objects.filter(sender=alice.user, kind="message").exclude(body=None).count(),
        )

    user, bodies, memberships, devices, alices = in_tenant(people["org"], stored)
    assert user.username == f"erased-{user.pk.hex}" and not user.is_active
    assert (user.email, user.display_name, user.external_id) == ("", "", None)
    assert (user.title, user.time_zone, user.avatar) == ("", "", "")
    assert report["removed"]["avatar"] == 1
    assert not (media_root / avatar).exists()  # the blob went after commit
    assert not user.has_usable_password()
    assert bodies == [(None,)] * 3 and memberships == 0
    assert [(name, token, ip, agent) for name, token, _, ip, agent in devices] == [
        ("", None, None, "")
    ]  # where the device was seen from went too
    assert all(revoked for _, _, revoked, _, _ in devices)
    assert alices == 1  # other people's messages are untouched
    entry = _entries(people["org"], "member.erased")[-1]
    assert entry.actor_id == officer.user.pk and entry.target_id == str(bob.user.pk)
    assert entry.data["reason"] == "GDPR art. 17 request #12"
    assert entry.data["kept"] == report["kept"]
    # The group's members were told bob left.
    events = alice.api.get(f"/api/v1/conversations/{people['group']}/messages").text
    assert "member.removed" in events


def test_erasing_a_user_under_legal_hold_keeps_the_held_messages_and_says_why(people):
    bob, officer = people["bob"], people["officer"]
    hold = in_tenant(
        people["org"],
        lambda: retention.check_place_hold(
            user_id=str(bob.user.pk), reason="matter 77", actor=audit.Actor.system("tests")
        ),
    )
    response = officer.api.post(f"/api/v1/users/{bob.user.pk}/erase", json={"reason": "left"})
    assert response.status_code == 200, response.text
    report = response.json()
    kept = {k["what"]: k for k in report["kept"]}
    assert kept["messages"]["count"] == 3
    assert str(hold.pk) in kept["messages"]["why"] and "matter 77" in kept["messages"]["why"]
    assert report["profile"] == "kept" and "messages_redacted" not in report["removed"]
    assert bob.api.get("/api/v1/me").status_code == 401  # still revoked

    def stored():
        return (
            Message.objects.filter(sender=bob.user, kind="message").exclude(body=None).count(),
            Member.objects.filter(user=bob.user).count(),
            User.objects.get(pk=bob.user.pk).username,
        )

    assert in_tenant(people["org"], stored) == (3, 2, bob.user.username)
    entry = _entries(people["org"], "member.erased")[-1]
    assert "matter 77" in json.dumps(entry.data["kept"])
    in_tenant(
        people["org"], lambda: retention.check_release_hold(hold, actor=audit.Actor.system("t"))
    )


def test_a_conversation_hold_keeps_only_that_conversations_messages(people):
    bob, officer = people["bob"], people["officer"]
    hold = in_tenant(
        people["org"],
        lambda: retention.check_place_hold(
            conversation_id=people["direct"], reason="matter 5", actor=audit.Actor.system("t")
        ),
    )
    report = officer.api.post(f"/api/v1/users/{bob.user.pk}/erase", json={"reason": "x"}).json()
    kept = {k["what"]: k for k in report["kept"]}
    assert kept["messages"]["count"] == 2 and "matter 5" in kept["messages"]["why"]
    assert report["removed"]["messages_redacted"] == 1  # the group message
    in_tenant(
        people["org"], lambda: retention.check_release_hold(hold, actor=audit.Actor.system("t"))
    )


@pytest.mark.parametrize(
    ("body", "code"), [({}, "reason_required"), ({"reason": "  "}, "reason_required"),
                       ({"reason": "x" * 501}, "reason_too_long"), ([1, 2], "reason_required")]
)  # fmt: skip
def test_erasure_needs_a_reason(people, body, code):
    response = people["officer"].api.post(f"/api/v1/users/{people['bob'].user.pk}/erase", json=body)
    assert response.status_code == 400 and response.json()["error"]["code"] == code
    assert people["bob"].api.get("/api/v1/me").status_code == 200


def test_erasure_is_for_owners_and_compliance_officers_of_this_org_only(people, org_b, new_session):
    bob = people["bob"]
    path = f"/api/v1/users/{bob.user.pk}/erase"
    admin = new_session(people["org"], role="admin")
    assert admin.api.post(path, json={"reason": "x"}).status_code == 403
    assert people["alice"].api.post(path, json={"reason": "x"}).status_code == 403
    officer_b = new_session(org_b, role="compliance_officer")
    assert officer_b.api.post(path, json={"reason": "x"}).status_code == 404
    officer = people["officer"]
    assert (
        officer.api.post(f"/api/v1/users/{uuid.uuid4()}/erase", json={"reason": "x"}).status_code
        == 404
    )
    mine = officer.api.post(f"/api/v1/users/{officer.user.pk}/erase", json={"reason": "x"})
    assert mine.status_code == 409
    owner = new_session(people["org"], role="owner")
    higher = officer.api.post(f"/api/v1/users/{owner.user.pk}/erase", json={"reason": "x"})
    assert higher.status_code == 403
    assert bob.api.get("/api/v1/me").status_code == 200
    assert owner.api.post(path, json={"reason": "x"}).status_code == 200


def test_an_erasure_that_fails_half_way_changes_nothing(people):
    bob = people["bob"]

    def fail(user, report):
        raise RuntimeError("storage went away")

    hooks.user_erasing.register(fail)
    try:
        with pytest.raises(RuntimeError):
            in_tenant(
                people["org"],
                personal_data.check_erase_user,
                bob.user,
                reason="x",
                actor=audit.Actor.system("t"),
            )
    finally:
        hooks.user_erasing._receivers.remove(fail)
    assert bob.api.get("/api/v1/me").status_code == 200  # the device was not revoked

    def stored():
        return (
            User.objects.get(pk=bob.user.pk).username,
            Message.objects.filter(sender=bob.user).exclude(body=None).count(),
            AuditEntry.objects.filter(event__in=["member.erased", "member.deactivated"])
            .filter(target_id=str(bob.user.pk))
            .count(),
        )

    assert in_tenant(people["org"], stored) == (bob.user.username, 3, 0)


def test_the_commands_export_and_erase(people, tmp_path, capsys):
    bob = people["bob"]
    out = tmp_path / "bob.json"
    call_command("export_personal_data", org=people["org"].slug, user=str(bob.user.pk), output=out)
    assert json.loads(out.read_text())["user"]["id"] == str(bob.user.pk)
    printed = io.StringIO()
    call_command(
        "export_personal_data", org=people["org"].slug, user=str(bob.user.pk), stdout=printed
    )
    assert json.loads(printed.getvalue())["user"]["id"] == str(bob.user.pk)
    call_command("erase_user", org=people["org"].slug, user=str(bob.user.pk), reason="ticket 4")
    report = json.loads(capsys.readouterr().out)
    assert report["reason"] == "ticket 4" and report["removed"]["messages_redacted"] == 3
    from django.core.management.base import CommandError

    with pytest.raises(CommandError):
        call_command("erase_user", org=people["org"].slug, user=str(bob.user.pk), reason=" ")
