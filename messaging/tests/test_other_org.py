"""Every messaging endpoint, seen from another org.

Org B's owner (every permission there) aims each endpoint at org A's users, conversation,
message, attachment and hold: each is a 404 that says nothing, or an empty answer, and org
A's state is unchanged afterwards. Org A's token at org B's host is no token at all (401)
on every endpoint. The table below is checked against the URL conf, so an endpoint added
later without a line here fails this module."""

import uuid

import pytest

from messaging.api import attachment_urls, conversation_urls, retention_urls
from messaging.api import urls as key_urls
from messaging.models import Conversation, LegalHold, Member, Message, QueuedMessage
from messaging.services.keys import key_counts
from orgs.accounts.models import Device
from siphera.tenancy import in_tenant
from tests.fixtures import Api, host_of

from .helpers import b64, send_body, start_conversation

OCTETS = {"Content-Type": "application/octet-stream"}


def _routes(patterns) -> dict[str, set[str]]:
    """Route name -> the HTTP methods its view answers, for these patterns and their
    includes."""
    found: dict[str, set[str]] = {}
    for pattern in patterns:
        if hasattr(pattern, "url_patterns"):
            found |= _routes(pattern.url_patterns)
            continue
        view = pattern.callback.view_class
        answered = (m for m in view.http_method_names if m not in ("options", "head"))
        found[pattern.name] = {m.upper() for m in answered if hasattr(view, m)}
    return found


MESSAGING_ROUTES = _routes(key_urls.urlpatterns + conversation_urls.urlpatterns)


@pytest.fixture
def org_a_world(org_a, new_session):
    """Org A: alice and bob in a direct conversation, one message queued for bob with an
    attachment, and a compliance officer's hold on the conversation."""
    alice, bob = new_session(org_a), new_session(org_a)
    officer = new_session(org_a, role="compliance_officer")
    cid = start_conversation(alice, bob)["id"]
    attachment = alice.api.post("/api/v1/attachments", content=b"blob" * 64, headers=OCTETS)
    assert attachment.status_code == 201, attachment.text
    sent = send_body(alice, cid, attachments=[attachment.json()["id"]])
    assert sent.status_code == 201, sent.text
    hold = officer.api.post(
        "/api/v1/compliance/holds", json={"conversation_id": cid, "reason": "matter 1"}
    )
    assert hold.status_code == 201, hold.text
    return {
        "alice": alice,
        "bob": bob,
        "cid": cid,
        "message_id": sent.json()["id"],
        "attachment_id": attachment.json()["id"],
        "hold_id": hold.json()["id"],
    }


def _state_of(org, world) -> dict:
    def device(session):
        return Device.objects.get(user=session.user, device_id=session.device_id)

    def read():
        conversation = Conversation.objects.get(pk=world["cid"])
        return {
            "members": sorted(
                str(m.user_id) for m in Member.objects.filter(conversation=conversation)
            ),
            "last_seq": conversation.last_seq,
            "retention_days": conversation.retention_days,
            "messages": Message.objects.filter(conversation=conversation).count(),
            "bob_queue": QueuedMessage.objects.filter(device=device(world["bob"])).count(),
            "hold_active": LegalHold.objects.get(pk=world["hold_id"]).released_at is None,
            "alice_keys": key_counts(device(world["alice"])),
        }

    return in_tenant(org, read)


def _aimed_at_org_a(world, outsider) -> list[tuple[str, str, str, dict]]:
    """(route name, method, path, request kwargs): each request of an org B user that names
    something of org A."""
    cid, alice, bob = world["cid"], world["alice"], world["bob"]
    aid, hid = world["attachment_id"], world["hold_id"]
    return [
        ("keys-claim", "GET", f"/api/v1/keys/{alice.user.pk}", {}),
        ("conversation-detail", "GET", f"/api/v1/conversations/{cid}", {}),
        (
            "conversation-members",
            "POST",
            f"/api/v1/conversations/{cid}/members",
            {"json": {"user_ids": [str(outsider.user.pk)]}},
        ),
        (
            "conversation-member",
            "DELETE",
            f"/api/v1/conversations/{cid}/members/{bob.user.pk}",
            {},
        ),
        (
            "conversation-detail",
            "PATCH",
            f"/api/v1/conversations/{cid}",
            {"json": {"title": b64(b"renamed by org b")}},
        ),
        (
            "conversation-member",
            "PATCH",
            f"/api/v1/conversations/{cid}/members/{bob.user.pk}",
            {"json": {"role": "admin"}},
        ),
        ("conversation-read", "GET", f"/api/v1/conversations/{cid}/read", {}),
        (
            "conversation-read",
            "POST",
            f"/api/v1/conversations/{cid}/read",
            {"json": {"up_to_seq": 1}},
        ),
        (
            "compliance-conversation-retention",
            "PUT",
            f"/api/v1/compliance/conversations/{cid}/retention",
            {"json": {"days": 1}},
        ),
        ("conversation-messages", "GET", f"/api/v1/conversations/{cid}/messages", {}),
        (
            "conversation-messages",
            "POST",
            f"/api/v1/conversations/{cid}/messages",
            {"json": {"client_id": str(uuid.uuid4()), "body": b64(b"intruder")}},
        ),
        ("conversation-retention", "GET", f"/api/v1/conversations/{cid}/retention", {}),
        (
            "conversation-retention",
            "PUT",
            f"/api/v1/conversations/{cid}/retention",
            {"json": {"days": 1}},
        ),
        ("attachment-detail", "GET", f"/api/v1/attachments/{aid}", {}),
        (
            "compliance-holds",
            "POST",
            "/api/v1/compliance/holds",
            {"json": {"conversation_id": cid, "reason": "matter 2"}},
        ),
        (
            "compliance-holds",
            "POST",
            "/api/v1/compliance/holds",
            {"json": {"user_id": str(alice.user.pk), "reason": "matter 2"}},
        ),
        ("compliance-hold", "GET", f"/api/v1/compliance/holds/{hid}", {}),
        ("compliance-hold", "DELETE", f"/api/v1/compliance/holds/{hid}", {}),
    ]


# Endpoints that name nothing of another org: they act on the caller's own device or org.
# What org B sees through them is checked in the test (its lists hold nothing of org A).
OWN_ORG_ONLY = {
    ("devices", "GET"),  # the caller's own devices
    ("devices", "POST"),  # registration with a login grant of this org
    ("keys", "PUT"),
    ("keys-count", "GET"),
    ("conversations", "GET"),
    ("conversations", "POST"),
    ("message-queue", "GET"),
    ("message-ack", "POST"),
    ("attachments", "POST"),
    ("compliance-policy", "GET"),
    ("compliance-policy", "PATCH"),
    ("compliance-holds", "GET"),
    ("org-activity", "GET"),  # the caller's org's dashboard figures
}


def test_the_table_covers_every_messaging_endpoint_and_method(org_a_world, org_b, new_session):
    outsider = new_session(org_b, role="owner")
    aimed = {(name, method) for name, method, _, _ in _aimed_at_org_a(org_a_world, outsider)}
    declared = {(name, method) for name, methods in MESSAGING_ROUTES.items() for method in methods}
    assert aimed | OWN_ORG_ONLY == declared
    assert {name for name, _ in declared} >= {
        *(p.name for p in attachment_urls.urlpatterns),
        *(p.name for p in retention_urls.urlpatterns),
    }


def test_org_bs_owner_aiming_at_org_a_gets_404_and_changes_nothing(
    org_a, org_a_world, org_b, new_session
):
    outsider = new_session(org_b, role="owner")
    before = _state_of(org_a, org_a_world)

    answers = {}
    for name, method, path, kwargs in _aimed_at_org_a(org_a_world, outsider):
        response = outsider.api.request(method, path, **kwargs)
        answers[(method, path, str(kwargs))] = (name, response.status_code)
        assert response.headers["content-type"].startswith("application/json"), path
        assert response.json()["error"]["code"] == "not_found", (method, path, response.text)
    assert {status for _, status in answers.values()} == {404}

    # Org B's own lists hold nothing of org A, and an ack of org A's message is a no-op.
    assert outsider.api.get("/api/v1/conversations").json() == []
    assert outsider.api.get("/api/v1/messages").json() == []
    held = {h["id"] for h in outsider.api.get("/api/v1/compliance/holds").json()}
    assert org_a_world["hold_id"] not in held
    acked = outsider.api.post("/api/v1/messages/ack", json={"ids": [org_a_world["message_id"]]})
    assert acked.status_code == 204
    refused = outsider.api.post(
        "/api/v1/conversations",
        json={"kind": "direct", "members": [str(org_a_world["alice"].user.pk)]},
    )
    assert refused.status_code == 400
    assert refused.json()["unknown"] == [str(org_a_world["alice"].user.pk)]

    assert _state_of(org_a, org_a_world) == before


def test_org_as_token_is_no_token_at_org_bs_host_on_every_endpoint(
    org_a, org_a_world, org_b, new_session, server
):
    outsider = new_session(org_b, role="owner")
    before = _state_of(org_a, org_a_world)
    on_b = Api(server, host_of(org_b), org_a_world["alice"].token)
    requests = [(n, m, p, k) for n, m, p, k in _aimed_at_org_a(org_a_world, outsider)] + [
        ("devices", "GET", "/api/v1/devices", {}),
        ("keys", "PUT", "/api/v1/keys", {"json": {"one_time_prekeys": []}}),
        ("keys-count", "GET", "/api/v1/keys/count", {}),
        ("conversations", "GET", "/api/v1/conversations", {}),
        (
            "conversations",
            "POST",
            "/api/v1/conversations",
            {"json": {"kind": "direct", "members": [str(outsider.user.pk)]}},
        ),
        ("message-queue", "GET", "/api/v1/messages", {}),
        ("message-ack", "POST", "/api/v1/messages/ack", {"json": {"ids": []}}),
        ("attachments", "POST", "/api/v1/attachments", {"content": b"x", "headers": OCTETS}),
        ("compliance-policy", "GET", "/api/v1/compliance/policy", {}),
        ("compliance-policy", "PATCH", "/api/v1/compliance/policy", {"json": {}}),
        ("compliance-holds", "GET", "/api/v1/compliance/holds", {}),
        ("org-activity", "GET", "/api/v1/org/activity", {}),
    ]
    covered = {(name, method) for name, method, _, _ in requests}
    # Registration takes a login grant, not a bearer token: checked on its own below.
    covered.add(("devices", "POST"))
    assert covered == {(n, m) for n, methods in MESSAGING_ROUTES.items() for m in methods}

    for _, method, path, kwargs in requests:
        response = on_b.request(method, path, **kwargs)
        assert response.status_code == 401, (method, path, response.text)
        # The same answer as for a token that never was, whatever the endpoint.
        assert response.json()["error"]["code"] == "invalid_token", (method, path)
        assert response.headers["www-authenticate"].startswith("Bearer"), path

    # Org A's device token is no login grant at org B (nor anywhere): nothing registered.
    registration = on_b.post(
        "/api/v1/devices",
        json=org_a_world["alice"].keys.registration("stolen"),
        headers={"Authorization": f"Grant {org_a_world['alice'].token}"},
    )
    assert registration.status_code == 401, registration.text

    assert _state_of(org_a, org_a_world) == before
    assert outsider.api.get("/api/v1/conversations").json() == []
