"""Conversations: direct (unique per pair) and groups with roles and membership events."""

from messaging.models import Conversation
from siphera.tenancy import in_tenant
from tests.fixtures import make_user

from .helpers import send_body, start_conversation


def test_a_direct_conversation_is_unique_per_pair(org_a, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    first = alice.api.post(
        "/api/v1/conversations", json={"kind": "direct", "members": [str(bob.user.pk)]}
    )
    again = bob.api.post(
        "/api/v1/conversations", json={"kind": "direct", "members": [str(alice.user.pk)]}
    )
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert sorted(m["user_id"] for m in first.json()["members"]) == sorted(
        [str(alice.user.pk), str(bob.user.pk)]
    )


def test_a_direct_conversation_needs_exactly_one_other_member(org_a, new_session):
    alice = new_session(org_a)
    two = [str(make_user(org_a).pk), str(make_user(org_a).pk)]
    response = alice.api.post("/api/v1/conversations", json={"kind": "direct", "members": two})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_members"


def test_members_of_another_org_are_unknown(org_a, org_b, new_session):
    alice = new_session(org_a)
    stranger = make_user(org_b)
    response = alice.api.post(
        "/api/v1/conversations", json={"kind": "group", "members": [str(stranger.pk)]}
    )
    assert response.status_code == 400
    assert response.json()["unknown"] == [str(stranger.pk)]


def test_group_creator_is_admin_and_guests_cannot_create_groups(org_a, new_session):
    owner = new_session(org_a)
    guest = new_session(org_a, role="guest")
    group = start_conversation(owner, guest, kind="group")
    roles = {m["user_id"]: m["role"] for m in group["members"]}
    assert roles == {str(owner.user.pk): "admin", str(guest.user.pk): "member"}

    refused = guest.api.post(
        "/api/v1/conversations", json={"kind": "group", "members": [str(owner.user.pk)]}
    )
    assert refused.status_code == 403


def test_guests_see_only_conversations_they_were_added_to(org_a, new_session):
    owner, other = new_session(org_a), new_session(org_a)
    guest = new_session(org_a, role="guest")
    mine = start_conversation(owner, guest, kind="group")
    hidden = start_conversation(owner, other, kind="group")
    listed = [c["id"] for c in guest.api.get("/api/v1/conversations").json()]
    assert listed == [mine["id"]]
    assert guest.api.get(f"/api/v1/conversations/{hidden['id']}").status_code == 404


def test_membership_changes_are_events_in_the_conversation(org_a, new_session):
    admin, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    group = start_conversation(admin, bob, kind="group")
    added = admin.api.post(
        f"/api/v1/conversations/{group['id']}/members", json={"user_ids": [str(carol.user.pk)]}
    )
    assert added.status_code == 200
    assert str(carol.user.pk) in [m["user_id"] for m in added.json()["members"]]

    # a plain member cannot remove others, but can leave
    refused = bob.api.delete(f"/api/v1/conversations/{group['id']}/members/{carol.user.pk}")
    assert refused.status_code == 403
    assert (
        bob.api.delete(f"/api/v1/conversations/{group['id']}/members/{bob.user.pk}").status_code
        == 204
    )

    history = admin.api.get(f"/api/v1/conversations/{group['id']}/messages").json()
    events = [(m["seq"], m["event"]["action"]) for m in history]
    assert events == [(1, "member.added"), (2, "member.left")]
    assert history[0]["event"]["user_ids"] == [str(carol.user.pk)]
    # bob has left: the conversation is gone for him
    assert bob.api.get(f"/api/v1/conversations/{group['id']}").status_code == 404
    assert send_body(bob, group["id"]).status_code == 404


def test_another_orgs_user_cannot_see_or_post_to_a_conversation(org_a, org_b, new_session):
    alice, bob = new_session(org_a), new_session(org_a)
    outsider = new_session(org_b)
    conversation = start_conversation(alice, bob)
    cid = conversation["id"]
    assert outsider.api.get(f"/api/v1/conversations/{cid}").status_code == 404
    assert outsider.api.get(f"/api/v1/conversations/{cid}/messages").status_code == 404
    assert send_body(outsider, cid).status_code == 404
    # and org A's token is useless at org B's host
    assert outsider.api.as_device(alice.token).get("/api/v1/conversations").status_code == 401
    assert in_tenant(org_a, Conversation.objects.get, pk=cid).last_seq == 0


def test_a_guest_opens_a_direct_conversation_only_with_people_it_is_in_touch_with(
    org_a, new_session
):
    owner, stranger = new_session(org_a), new_session(org_a)
    guest = new_session(org_a, role="guest")
    start_conversation(owner, guest, kind="group")

    # In touch (a shared group): allowed.
    assert start_conversation(guest, owner)["kind"] == "direct"
    # Anyone else, an unknown id or garbage: one 403, so nothing says which ids exist.
    unknown = "00000000-0000-0000-0000-000000000000"
    for member in (str(stranger.user.pk), unknown, "not-an-id"):
        refused = guest.api.post(
            "/api/v1/conversations", json={"kind": "direct", "members": [member]}
        )
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "not_allowed"
        assert "unknown" not in refused.json()
    # ...and so no key claim or directory look-up of the stranger either.
    assert guest.api.get(f"/api/v1/keys/{stranger.user.pk}").status_code == 404
    assert guest.api.get(f"/api/v1/users/{stranger.user.pk}").status_code == 404
    # Members see the whole directory: an unknown id is still a 400 naming it.
    missing = owner.api.post("/api/v1/conversations", json={"kind": "direct", "members": [unknown]})
    assert missing.status_code == 400 and missing.json()["unknown"] == [unknown]


def test_a_guest_group_admin_adds_only_people_it_is_in_touch_with(org_a, new_session):
    owner, stranger = new_session(org_a), new_session(org_a)
    guest = new_session(org_a, role="guest")
    group = start_conversation(owner, guest, kind="group")
    promoted = owner.api.patch(
        f"/api/v1/conversations/{group['id']}/members/{guest.user.pk}", json={"role": "admin"}
    )
    assert promoted.status_code == 200, promoted.text
    owner.api.delete(f"/api/v1/conversations/{group['id']}/members/{owner.user.pk}")
    # The guest is now the group's only admin.
    refused = guest.api.post(
        f"/api/v1/conversations/{group['id']}/members", json={"user_ids": [str(stranger.user.pk)]}
    )
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_allowed"


def test_a_malformed_conversation_id_is_a_404_not_a_500(org_a, new_session):
    # Found by the API fuzzer: the id failed UUID validation while the filter was built.
    alice = new_session(org_a)
    for path in ("/api/v1/conversations/0", "/api/v1/conversations/%7C/messages"):
        assert alice.api.get(path).status_code == 404
    removed = alice.api.delete("/api/v1/conversations/0/members/0")
    assert removed.status_code == 404
