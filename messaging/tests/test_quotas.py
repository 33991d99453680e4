"""Quotas (issue 15 item 10): a per-device queue cap, the org's attachment storage quota
and a per-user quota of uploads not yet sent, each in the org's messaging policy
(`PATCH /api/v1/compliance/policy`), each with a clear 4xx that names what is full; nothing
already queued or stored is dropped for a quota."""

from __future__ import annotations

import uuid

import pytest

from messaging.models import QueuedMessage
from siphera.tenancy import in_tenant
from tests.ws import authed_socket, recv_type, send

from .helpers import b64, envelope, send_body, start_conversation

OCTETS = {"Content-Type": "application/octet-stream"}
POLICY = "/api/v1/compliance/policy"


def _queued(org, session) -> list[str]:
    return in_tenant(
        org,
        lambda: [
            str(m)
            for m in QueuedMessage.objects.filter(
                device__user=session.user, device__device_id=session.device_id
            )
            .order_by("id")
            .values_list("message_id", flat=True)
        ],
    )


def _set_policy(officer, **fields):
    response = officer.api.request("PATCH", POLICY, json=fields)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def officer_a(org_a, new_session):
    officer = new_session(org_a, role="compliance_officer")
    yield officer
    _set_policy(
        officer,
        device_queue_max=None,
        attachment_storage_quota_bytes=None,
        unsent_upload_quota_bytes=None,
    )


def _device(session) -> dict:
    return {"user_id": str(session.user.pk), "device_id": session.device_id}


def _send_envelopes(sender, cid, *recipients):
    return sender.api.post(
        f"/api/v1/conversations/{cid}/messages",
        json={"client_id": str(uuid.uuid4()), "envelopes": [envelope(r) for r in recipients]},
    )


def test_a_full_device_queue_refuses_envelopes_for_it_and_keeps_what_it_holds(
    org_a, org_b, officer_a, new_session
):
    alice, bob = new_session(org_a), new_session(org_a)
    bob_tablet = new_session(org_a, bob.user, name="tablet")
    cid = start_conversation(alice, bob)["id"]
    assert _set_policy(officer_a, device_queue_max=3)["effective"]["device_queue_max"] == 3
    held = [send_body(alice, cid).json()["id"] for _ in range(3)]
    bob.api.post("/api/v1/messages/ack", json={"ids": held})  # the phone reads; the tablet not

    # Envelopes for the tablet, whose queue is full: refused, naming it; nothing stored.
    refused = _send_envelopes(alice, cid, bob, bob_tablet)
    assert refused.status_code == 409
    body = refused.json()
    assert body["error"]["code"] == "queue_full"
    assert body["devices"] == [_device(bob_tablet)] and body["max_queued"] == 3
    assert _queued(org_a, bob) == [] and _queued(org_a, bob_tablet) == held

    # The sender leaves the full device out: accepted for the others.
    accepted = _send_envelopes(alice, cid, bob)
    assert accepted.status_code == 201, accepted.text
    assert _queued(org_a, bob) == [accepted.json()["id"]]

    # A body-only message skips the full queue and says so; the tablet keeps its 3, oldest
    # first (nothing already queued is dropped).
    skipped = send_body(alice, cid)
    assert skipped.status_code == 201
    assert skipped.json()["queue_full"] == [_device(bob_tablet)]
    assert _queued(org_a, bob_tablet) == held

    # Once the tablet acknowledges one, it takes messages again.
    assert bob_tablet.api.post("/api/v1/messages/ack", json={"ids": held[:1]}).status_code == 204
    again = _send_envelopes(alice, cid, bob, bob_tablet)
    assert again.status_code == 201, again.text
    assert "queue_full" not in again.json()
    assert _queued(org_a, bob_tablet) == [*held[1:], again.json()["id"]]

    # Another org's policy is its own: org B's devices take more than 3.
    b1, b2 = new_session(org_b), new_session(org_b)
    b_cid = start_conversation(b1, b2)["id"]
    for _ in range(4):
        assert _send_envelopes(b1, b_cid, b2).status_code == 201
    assert len(_queued(org_b, b2)) == 4


async def test_a_full_queue_over_the_socket_is_an_error_frame_naming_the_device(
    server, org_a, officer_a, new_session
):
    alice, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    _set_policy(officer_a, device_queue_max=1)
    assert send_body(alice, cid).status_code == 201
    async with await authed_socket(server, alice, live=True) as ws:
        await send(
            ws,
            {
                "type": "send",
                "ref": "q1",
                "conversation": cid,
                "client_id": str(uuid.uuid4()),
                "envelopes": [envelope(bob)],
            },
        )
        error = await recv_type(ws, "error")
        assert error["code"] == "queue_full" and error["ref"] == "q1"
        assert error["devices"] == [_device(bob)]
        await send(
            ws,
            {
                "type": "send",
                "ref": "q2",
                "conversation": cid,
                "client_id": str(uuid.uuid4()),
                "body": b64(b"history"),
            },
        )
        sent = await recv_type(ws, "sent")
        assert sent["ref"] == "q2" and sent["queue_full"] == [_device(bob)]
    assert len(_queued(org_a, bob)) == 1


def _upload(session, data: bytes, *, chunked: bool = False):
    content = iter([data[: len(data) // 2], data[len(data) // 2 :]]) if chunked else data
    return session.api.post("/api/v1/attachments", content=content, headers=OCTETS)


@pytest.mark.parametrize("chunked", [False, True])
def test_the_org_storage_quota_refuses_an_upload_that_would_pass_it(
    org_a, org_b, officer_a, new_session, chunked
):
    alice, bob = new_session(org_a), new_session(org_a)
    used = officer_a.api.get(POLICY).json()["usage"]["attachment_storage_bytes"]
    _set_policy(officer_a, attachment_storage_quota_bytes=used + 1000)

    first = _upload(alice, b"a" * 800, chunked=chunked)
    assert first.status_code == 201, first.text
    assert officer_a.api.get(POLICY).json()["usage"]["attachment_storage_bytes"] == used + 800

    refused = _upload(bob, b"b" * 500, chunked=chunked)
    assert refused.status_code == 413
    body = refused.json()
    assert body["error"]["code"] == "storage_quota_exceeded"
    assert body["quota_bytes"] == used + 1000 and body["used_bytes"] == used + 800
    assert officer_a.api.get(POLICY).json()["usage"]["attachment_storage_bytes"] == used + 800
    assert _upload(bob, b"c" * 200, chunked=chunked).status_code == 201  # what fits, fits

    # Org B's storage is its own.
    b_officer, b_user = new_session(org_b, role="compliance_officer"), new_session(org_b)
    assert _upload(b_user, b"d" * 900).status_code == 201
    assert b_officer.api.get(POLICY).json()["effective"]["attachment_storage_quota_bytes"] > (10**9)


def test_a_users_unsent_uploads_have_a_quota_that_sending_frees(org_a, officer_a, new_session):
    alice, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(alice, bob)["id"]
    _set_policy(officer_a, unsent_upload_quota_bytes=1000)

    draft = _upload(alice, b"x" * 600)
    assert draft.status_code == 201
    refused = _upload(alice, b"y" * 600)
    assert refused.status_code == 413
    assert refused.json()["error"]["code"] == "unsent_upload_quota_exceeded"
    assert refused.json()["used_bytes"] == 600
    assert _upload(carol, b"z" * 600).status_code == 201  # per user

    # Sent in a message, the first upload no longer counts.
    sent = send_body(alice, cid, attachments=[draft.json()["id"]])
    assert sent.status_code == 201, sent.text
    assert _upload(alice, b"y" * 600).status_code == 201


def test_quota_fields_are_bounded_and_for_compliance_managers_only(org_a, officer_a, new_session):
    member = new_session(org_a)
    assert member.api.request("PATCH", POLICY, json={"device_queue_max": 5}).status_code == 403
    for field, value in [
        ("device_queue_max", 0),
        ("device_queue_max", 10**7),
        ("attachment_storage_quota_bytes", -1),
        ("unsent_upload_quota_bytes", 2**70),
    ]:
        response = officer_a.api.request("PATCH", POLICY, json={field: value})
        assert response.status_code == 400, (field, value, response.text)
        assert response.json()["error"]["code"] in ("invalid_policy", "invalid_request")
    policy = _set_policy(officer_a, device_queue_max=500, unsent_upload_quota_bytes=4096)
    assert policy["device_queue_max"] == 500 and policy["effective"]["device_queue_max"] == 500
    assert policy["defaults"]["device_queue_max"] == 10_000
    assert policy["limits"]["unsent_upload_quota_bytes"][0] == 1
