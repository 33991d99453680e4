"""Retention through a real Celery worker: the purge deletes messages past their
conversation's effective retention (history, queue rows, attachments), keeps newer ones and
what legal holds cover, audits every run, and never touches another org."""

import os
import time
import uuid
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from messaging import tasks
from messaging.models import Attachment, Member, Message, QueuedMessage
from messaging.services import retention
from orgs.accounts.models import AuditEntry
from orgs.services import audit
from siphera.tenancy import in_tenant, send_task

from .helpers import envelope, send_body, start_conversation

OCTETS = {"Content-Type": "application/octet-stream"}


def _wait_until(condition, timeout=90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return False


def _audit(org, event: str, **filters) -> list[AuditEntry]:
    return in_tenant(
        org, lambda: list(AuditEntry.objects.filter(event=event, **filters).order_by("id"))
    )


def _purge(org) -> dict:
    """Run one purge of `org` on the worker; returns its audit entry's data."""
    before = len(_audit(org, "retention.purged"))
    send_task(tasks.purge_retention, org=org)
    assert _wait_until(lambda: len(_audit(org, "retention.purged")) > before), "no purge ran"
    return _audit(org, "retention.purged")[-1].data


def _send(session, cid, *, age_days: float = 0, **extra) -> str:
    """Send a message and make it `age_days` old (members joined long before)."""
    response = send_body(session, cid, **extra)
    assert response.status_code == 201, response.text
    message_id = response.json()["id"]
    if age_days:
        in_tenant(
            session.org,
            lambda: Message.objects.filter(pk=message_id).update(
                created_at=timezone.now() - timedelta(days=age_days)
            ),
        )
    return message_id


def _members_joined_long_ago(org, cid) -> None:
    in_tenant(
        org,
        lambda: Member.objects.filter(conversation_id=cid).update(
            joined_at=timezone.now() - timedelta(days=400)
        ),
    )


def _exists(org, message_id) -> bool:
    return in_tenant(org, Message.objects.filter(pk=message_id).exists)


def _queued(org, message_id) -> int:
    return in_tenant(org, QueuedMessage.objects.filter(message_id=message_id).count)


def _upload(session, data: bytes) -> dict:
    response = session.api.post("/api/v1/attachments", content=data, headers=OCTETS)
    assert response.status_code == 201, response.text
    return response.json()


def _blob(media_root, org, attachment_id: str):
    return (
        media_root
        / org.schema_name
        / "attachments"
        / attachment_id.replace("-", "")[:2]
        / (attachment_id)
    )


def test_the_purge_deletes_messages_past_retention_with_queue_rows_and_attachments(
    celery_worker, org_a, new_session, media_root
):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    _members_joined_long_ago(org_a, cid)
    attachment = _upload(alice, os.urandom(5000))
    old = _send(alice, cid, age_days=31, attachments=[attachment["id"]])
    almost = _send(alice, cid, age_days=29)  # not yet expired: still delivered
    new = _send(alice, cid)
    assert _queued(org_a, old) == 1 and _blob(media_root, org_a, attachment["id"]).exists()

    report = _purge(org_a)

    assert not _exists(org_a, old) and _queued(org_a, old) == 0
    assert not in_tenant(org_a, Attachment.objects.filter(pk=attachment["id"]).exists)
    assert not _blob(media_root, org_a, attachment["id"]).exists()
    assert _exists(org_a, almost) and _exists(org_a, new)
    # Bob's device, coming online now, still gets every message not yet past retention.
    assert [m["id"] for m in bob.api.get("/api/v1/messages").json()] == [almost, new]
    assert report["messages"] >= 1 and report["queue_rows"] >= 1 and report["attachments"] >= 1
    assert report["retention_days"] == 30
    entry = _audit(org_a, "retention.purged")[-1]
    assert entry.actor_label == "job:retention" and entry.target_id == org_a.schema_name
    log = celery_worker.read_text()
    assert "retention purge batch" in log and "retention purge finished" in log


def test_an_attachment_sent_again_lives_until_its_last_message_is_purged(
    celery_worker, org_a, new_session, media_root
):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    _members_joined_long_ago(org_a, cid)
    attachment = _upload(alice, b"shared blob")
    _send(alice, cid, age_days=40, attachments=[attachment["id"]])
    _send(alice, cid, age_days=1, attachments=[attachment["id"]])

    _purge(org_a)

    assert bob.api.get(f"/api/v1/attachments/{attachment['id']}").content == b"shared blob"
    assert _blob(media_root, org_a, attachment["id"]).exists()


def test_a_conversation_override_changes_retention_for_that_conversation_only(
    celery_worker, org_a, new_session
):
    admin, member = new_session(org_a), new_session(org_a)
    officer = new_session(org_a, role="compliance_officer")
    short = start_conversation(admin, member, kind="group")["id"]
    long_ = start_conversation(officer, member, kind="group")["id"]
    plain = start_conversation(admin, member)["id"]
    for cid in (short, long_, plain):
        _members_joined_long_ago(org_a, cid)

    # Only group admins set it; without compliance.manage, never longer than the org's 30.
    refused = member.api.put(f"/api/v1/conversations/{short}/retention", json={"days": 2})
    assert refused.status_code == 403
    too_long = admin.api.put(f"/api/v1/conversations/{short}/retention", json={"days": 90})
    assert too_long.status_code == 403
    assert too_long.json()["error"]["code"] == "retention_exceeds_policy"
    bad = admin.api.put(f"/api/v1/conversations/{short}/retention", json={"days": 0})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_retention"
    ok = admin.api.put(f"/api/v1/conversations/{short}/retention", json={"days": 2})
    assert ok.status_code == 200
    assert ok.json() == {"days": 2, "effective_days": 2}
    longer = officer.api.put(f"/api/v1/conversations/{long_}/retention", json={"days": 90})
    assert longer.status_code == 200 and longer.json()["effective_days"] == 90

    expired_short = _send(admin, short, age_days=3)
    kept_plain = _send(admin, plain, age_days=3)
    kept_long = _send(officer, long_, age_days=40)
    expired_plain = _send(admin, plain, age_days=40)

    _purge(org_a)

    assert not _exists(org_a, expired_short) and not _exists(org_a, expired_plain)
    assert _exists(org_a, kept_plain) and _exists(org_a, kept_long)
    changes = _audit(org_a, "retention.conversation_changed", target_id=short)
    assert [e.data for e in changes] == [{"before": None, "after": 2}]
    assert changes[0].actor_id == admin.user.pk
    # Members' devices learn it as a conversation event.
    events = [m.get("event") for m in member.api.get("/api/v1/messages").json()]
    assert {"action": "retention.changed", "days": 2, "by": str(admin.user.pk)} in events


def test_legal_holds_keep_what_they_cover_until_released(celery_worker, org_a, new_session):
    officer = new_session(org_a, role="compliance_officer")
    alice, bob, dave = new_session(org_a), new_session(org_a), new_session(org_a)
    held_conversation = start_conversation(alice, bob, kind="group")["id"]
    by_dave = start_conversation(dave, bob)["id"]
    with_dave = start_conversation(alice, dave, kind="group")["id"]
    without_dave = start_conversation(alice, bob)["id"]
    for cid in (held_conversation, by_dave, with_dave, without_dave):
        _members_joined_long_ago(org_a, cid)

    # A member cannot place holds; a compliance officer can.
    refused = alice.api.post("/api/v1/compliance/holds", json={"user_id": str(dave.user.pk)})
    assert refused.status_code == 403
    on_user = officer.api.post(
        "/api/v1/compliance/holds", json={"user_id": str(dave.user.pk), "reason": "matter 42"}
    )
    on_conversation = officer.api.post(
        "/api/v1/compliance/holds",
        json={"conversation_id": held_conversation, "reason": "matter 43"},
    )
    assert on_user.status_code == on_conversation.status_code == 201
    assert on_user.json()["kind"] == "user" and on_user.json()["active"] is True

    kept = {
        "held conversation": _send(alice, held_conversation, age_days=60),
        "sent by dave": _send(dave, by_dave, age_days=60),
        "addressed to dave": _send(alice, with_dave, age_days=60),
    }
    purged = _send(alice, without_dave, age_days=60)

    _purge(org_a)

    assert {name: _exists(org_a, mid) for name, mid in kept.items()} == dict.fromkeys(kept, True)
    assert not _exists(org_a, purged)
    # Members are not told about holds (that would tip off a subject).
    status = alice.api.get(f"/api/v1/conversations/{held_conversation}/retention").json()
    assert status == {"days": None, "effective_days": 30}

    for hold in (on_user.json(), on_conversation.json()):
        released = officer.api.delete(f"/api/v1/compliance/holds/{hold['id']}")
        assert released.status_code == 200 and released.json()["active"] is False
    _purge(org_a)

    assert not any(_exists(org_a, mid) for mid in kept.values())
    placed = _audit(org_a, "legal_hold.placed", target_id=on_user.json()["id"])
    assert placed[0].data["user_id"] == str(dave.user.pk)
    assert placed[0].data["reason"] == "matter 42"
    assert placed[0].actor_id == officer.user.pk
    assert _audit(org_a, "legal_hold.released", target_id=on_conversation.json()["id"])
    listed = officer.api.get("/api/v1/compliance/holds").json()
    assert {h["id"] for h in listed} >= {on_user.json()["id"], on_conversation.json()["id"]}


def test_a_hold_on_a_former_member_keeps_what_was_sent_while_they_were_there(
    celery_worker, org_a, new_session
):
    officer = new_session(org_a, role="compliance_officer")
    alice, erin = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, erin, kind="group")["id"]
    _members_joined_long_ago(org_a, cid)
    before_leaving = _send(alice, cid, age_days=90)
    # Erin's device acknowledged it: only her former membership protects it now.
    assert erin.api.post("/api/v1/messages/ack", json={"ids": [before_leaving]}).status_code == 204
    assert erin.api.delete(f"/api/v1/conversations/{cid}/members/{erin.user.pk}").status_code == 204
    in_tenant(  # erin left 80 days ago
        org_a,
        lambda: Message.objects.filter(conversation_id=cid, kind=Message.EVENT).update(
            created_at=timezone.now() - timedelta(days=80)
        ),
    )
    after_leaving = _send(alice, cid, age_days=70)
    officer.api.post(
        "/api/v1/compliance/holds", json={"user_id": str(erin.user.pk), "reason": "matter 44"}
    )

    _purge(org_a)

    assert _exists(org_a, before_leaving)
    assert not _exists(org_a, after_leaving)


def test_holds_are_for_compliance_and_name_exactly_one_target_of_this_org(
    org_a, org_b, new_session
):
    officer, member = new_session(org_a, role="compliance_officer"), new_session(org_a)
    stranger = new_session(org_b)
    cid = start_conversation(member, new_session(org_a))["id"]
    url = "/api/v1/compliance/holds"

    assert member.api.get(url).status_code == 403
    assert officer.api.post(url, json={}).json()["error"]["code"] == "invalid_hold"
    both = officer.api.post(url, json={"user_id": str(member.user.pk), "conversation_id": cid})
    assert both.status_code == 400
    # Who placed a hold is recorded; why is required too (the portal asks the same).
    for body in ({}, {"reason": ""}, {"reason": "   "}):
        unexplained = officer.api.post(url, json={"conversation_id": cid, **body})
        assert unexplained.status_code == 400
        assert unexplained.json()["error"]["code"] == "reason_required"
    assert _audit(org_a, "legal_hold.placed", actor_id=officer.user.pk) == []
    held_stranger = officer.api.post(url, json={"user_id": str(stranger.user.pk), "reason": "x"})
    assert held_stranger.status_code == 404
    other_org = stranger.api.post(url, json={"conversation_id": cid, "reason": "x"})
    assert other_org.status_code == 403  # a member of org B: no permission there either
    org_b_officer = new_session(org_b, role="compliance_officer")
    assert (
        org_b_officer.api.post(url, json={"conversation_id": cid, "reason": "x"}).status_code == 404
    )
    assert officer.api.delete(f"{url}/not-a-uuid").status_code == 404


def test_the_org_policy_sets_retention_and_is_audited(celery_worker, org_b, new_session):
    officer, member = new_session(org_b, role="compliance_officer"), new_session(org_b)
    peer = new_session(org_b)
    cid = start_conversation(member, peer)["id"]
    _members_joined_long_ago(org_b, cid)
    url = "/api/v1/compliance/policy"
    assert member.api.get(url).status_code == 403
    assert officer.api.get(url).json()["effective"]["retention_days"] == 30
    assert officer.api.request("PATCH", url, json={"retention_days": 0}).status_code == 400

    changed = officer.api.request("PATCH", url, json={"retention_days": 10})
    try:
        assert changed.status_code == 200
        assert changed.json()["retention_days"] == 10
        expired, kept = _send(member, cid, age_days=11), _send(member, cid, age_days=9)

        report = _purge(org_b)

        assert report["retention_days"] == 10
        assert not _exists(org_b, expired) and _exists(org_b, kept)
        audited = _audit(org_b, "retention.policy_changed", target_id="retention_days")
        assert audited[-1].data == {"field": "retention_days", "before": None, "after": 10}
    finally:
        officer.api.request("PATCH", url, json={"retention_days": None})


def test_a_purge_in_one_org_never_touches_another(celery_worker, org_a, org_b, new_session):
    a1, a2, b1, b2 = (new_session(org) for org in (org_a, org_a, org_b, org_b))
    cid_a, cid_b = start_conversation(a1, a2)["id"], start_conversation(b1, b2)["id"]
    _members_joined_long_ago(org_a, cid_a)
    _members_joined_long_ago(org_b, cid_b)
    old_a, old_b = _send(a1, cid_a, age_days=45), _send(b1, cid_b, age_days=45)
    runs_b = len(_audit(org_b, "retention.purged"))

    _purge(org_a)
    time.sleep(1.0)  # give a wrongly routed task time to show itself

    assert not _exists(org_a, old_a)
    assert _exists(org_b, old_b) and _queued(org_b, old_b) == 1
    assert len(_audit(org_b, "retention.purged")) == runs_b

    # Beat's dispatcher fans out one purge per org, each in its own schema.
    assert settings.CELERY_BEAT_SCHEDULE["retention-purge"]["task"] == (
        "messaging.tasks.dispatch_retention_purge"
    )
    tasks.dispatch_retention_purge.delay()
    assert _wait_until(lambda: not _exists(org_b, old_b))
    assert "dispatched retention purge" in celery_worker.read_text()


def test_uploads_never_sent_are_purged_after_a_day(celery_worker, org_a, new_session, media_root):
    alice = new_session(org_a)
    stale, fresh = _upload(alice, b"draft-1"), _upload(alice, b"draft-2")
    in_tenant(
        org_a,
        lambda: Attachment.objects.filter(pk=stale["id"]).update(
            created_at=timezone.now() - timedelta(days=2)
        ),
    )

    report = _purge(org_a)

    assert report["unbound_attachments"] >= 1
    assert not _blob(media_root, org_a, stale["id"]).exists()
    assert alice.api.get(f"/api/v1/attachments/{stale['id']}").status_code == 404
    assert alice.api.get(f"/api/v1/attachments/{fresh['id']}").content == b"draft-2"


def test_the_purge_works_in_batches_and_reports_each(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    _members_joined_long_ago(org_a, cid)
    old = [_send(alice, cid, age_days=50) for _ in range(5)]
    seen = []

    report = in_tenant(
        org_a,
        retention.do_purge,
        actor=audit.Actor.system("tests"),
        batch_size=2,
        progress=lambda phase, r: seen.append((phase, r.messages)),
    )

    assert not any(_exists(org_a, mid) for mid in old)
    assert report.batches >= 3 and report.messages >= 5
    message_batches = [count for phase, count in seen if phase == "messages"]
    assert message_batches[:3] == [2, 4, min(6, report.messages)]


def _queued_for(org, session) -> dict[str, bytes | None]:
    """Message id -> envelope body of what is queued for `session`'s device."""
    rows = in_tenant(
        org,
        lambda: list(
            QueuedMessage.objects.filter(
                device__user=session.user, device__device_id=session.device_id
            ).values_list("message_id", "envelope_body")
        ),
    )
    return {str(mid): bytes(body) if body is not None else None for mid, body in rows}


def _send_envelopes(sender, cid, *recipients) -> str:
    response = sender.api.post(
        f"/api/v1/conversations/{cid}/messages",
        json={
            "client_id": str(uuid.uuid4()),
            "envelopes": [envelope(r, body=f"for {r.device_id}".encode()) for r in recipients],
        },
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_revoking_a_device_keeps_its_queued_envelopes_a_hold_covers_until_released(
    org_a, new_session
):
    officer = new_session(org_a, role="compliance_officer")
    alice, bob = new_session(org_a), new_session(org_a)
    bob_tablet = new_session(org_a, bob.user, name="tablet")
    held_cid = start_conversation(alice, bob, kind="group")["id"]
    free_cid = start_conversation(alice, bob)["id"]
    held = _send_envelopes(alice, held_cid, bob, bob_tablet)
    free = _send_envelopes(alice, free_cid, bob, bob_tablet)
    hold = officer.api.post(
        "/api/v1/compliance/holds", json={"conversation_id": held_cid, "reason": "matter 45"}
    )
    assert hold.status_code == 201

    assert bob.api.delete(f"/api/v1/devices/{bob_tablet.device_id}").status_code == 204

    # The held conversation's envelope for the tablet is kept, ciphertext intact; what no
    # hold covers goes as before. Nothing delivers it: the tablet's token is dead.
    assert _queued_for(org_a, bob_tablet) == {held: f"for {bob_tablet.device_id}".encode()}
    assert bob_tablet.api.get("/api/v1/messages").status_code == 401
    assert set(_queued_for(org_a, bob)) == {held, free}  # the live device is untouched

    # Released: the next purge removes what the revoked device kept (the messages
    # themselves are not past retention, so they stay for the live devices).
    assert officer.api.delete(f"/api/v1/compliance/holds/{hold.json()['id']}").status_code == 200
    report = in_tenant(org_a, retention.do_purge, actor=audit.Actor.system("tests"))

    assert _queued_for(org_a, bob_tablet) == {}
    assert report.revoked_queue_rows >= 1
    assert _exists(org_a, held) and set(_queued_for(org_a, bob)) == {held, free}


def test_revoking_a_held_users_device_keeps_its_whole_queue(org_a, org_b, new_session):
    officer = new_session(org_a, role="compliance_officer")
    alice, carol = new_session(org_a), new_session(org_a)
    carol_phone = new_session(org_a, carol.user, name="phone")
    cid = start_conversation(alice, carol)["id"]
    sent = {_send_envelopes(alice, cid, carol, carol_phone) for _ in range(2)}
    assert (
        officer.api.post(
            "/api/v1/compliance/holds", json={"user_id": str(carol.user.pk), "reason": "m 46"}
        ).status_code
        == 201
    )
    # A hold in another org covers nothing here.
    b_officer, b_user = new_session(org_b, role="compliance_officer"), new_session(org_b)
    b_officer.api.post(
        "/api/v1/compliance/holds", json={"user_id": str(b_user.user.pk), "reason": "matter 47"}
    )

    assert carol.api.delete(f"/api/v1/devices/{carol_phone.device_id}").status_code == 204
    in_tenant(org_a, retention.do_purge, actor=audit.Actor.system("tests"))

    assert set(_queued_for(org_a, carol_phone)) == sent
    # A revoked device of an unheld user of the same org loses what no hold covers at once.
    dave = new_session(org_a)
    alice_tablet = new_session(org_a, alice.user, name="tablet")
    _send_envelopes(dave, start_conversation(dave, alice)["id"], alice, alice_tablet)
    assert alice.api.delete(f"/api/v1/devices/{alice_tablet.device_id}").status_code == 204
    assert _queued_for(org_a, alice_tablet) == {}
