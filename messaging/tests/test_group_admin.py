"""Group administration: roles, rename and topic, leave and remove, the last admin, and the
org's group size limit. Every change is an event in the conversation, delivered to the
members' devices like any message."""

from __future__ import annotations

import base64
import os
import threading

import pytest

from messaging.models import Conversation
from orgs.accounts.models import AuditEntry
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, make_user
from tests.ws import authed_socket, recv_type

from .helpers import b64, start_conversation


def _events(session, cid) -> list[dict]:
    history = session.api.get(f"/api/v1/conversations/{cid}/messages").json()
    return [m["event"] for m in history if "event" in m]


def _roles(session, cid) -> dict[str, str]:
    members = session.api.get(f"/api/v1/conversations/{cid}").json()["members"]
    return {m["user_id"]: m["role"] for m in members}


def _set_role(session, cid, user, role):
    return session.api.patch(
        f"/api/v1/conversations/{cid}/members/{user.user.pk}", json={"role": role}
    )


def _leave(session, cid):
    return session.api.delete(f"/api/v1/conversations/{cid}/members/{session.user.pk}")


# --- roles --------------------------------------------------------------------------------


def test_an_admin_promotes_and_demotes_and_each_change_is_an_event(org_a, new_session):
    admin, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, bob, carol, kind="group")["id"]

    promoted = _set_role(admin, cid, bob, "admin")
    assert promoted.status_code == 200, promoted.text
    assert _roles(admin, cid)[str(bob.user.pk)] == "admin"
    # The new admin can now do what admins do: demote the one who promoted them.
    assert _set_role(bob, cid, admin, "member").status_code == 200
    # The same role again changes nothing (no event).
    assert _set_role(bob, cid, admin, "member").status_code == 200

    assert _events(carol, cid) == [
        {
            "action": "member.role_changed",
            "user_ids": [str(bob.user.pk)],
            "role": "admin",
            "by": str(admin.user.pk),
        },
        {
            "action": "member.role_changed",
            "user_ids": [str(admin.user.pk)],
            "role": "member",
            "by": str(bob.user.pk),
        },
    ]


def test_members_cannot_change_roles_names_or_membership(org_a, new_session):
    admin, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, bob, carol, kind="group")["id"]
    refusals = [
        _set_role(bob, cid, bob, "admin"),
        _set_role(bob, cid, admin, "member"),
        bob.api.patch(f"/api/v1/conversations/{cid}", json={"title": b64(b"x")}),
        bob.api.delete(f"/api/v1/conversations/{cid}/members/{carol.user.pk}"),
        bob.api.post(
            f"/api/v1/conversations/{cid}/members", json={"user_ids": [str(make_user(org_a).pk)]}
        ),
    ]
    for response in refusals:
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "not_allowed"
    assert _events(admin, cid) == []
    assert _roles(admin, cid)[str(bob.user.pk)] == "member"


def test_role_changes_refuse_bad_roles_strangers_and_direct_conversations(org_a, new_session):
    admin, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, bob, kind="group")["id"]
    for role in ("owner", "", None, 1):
        bad = admin.api.patch(
            f"/api/v1/conversations/{cid}/members/{bob.user.pk}", json={"role": role}
        )
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_request"
    stranger = make_user(org_a)
    for user_id in (stranger.pk, "not-a-uuid"):
        missing = admin.api.patch(
            f"/api/v1/conversations/{cid}/members/{user_id}", json={"role": "admin"}
        )
        assert missing.status_code == 404
    direct = start_conversation(admin, bob)["id"]
    refused = _set_role(admin, direct, bob, "admin")
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "not_allowed"


# --- the last admin -----------------------------------------------------------------------


def test_the_only_admin_cannot_leave_or_step_down_until_someone_else_is_admin(org_a, new_session):
    admin, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, bob, kind="group")["id"]

    refused = _leave(admin, cid)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "last_admin"
    stepping_down = _set_role(admin, cid, admin, "member")
    assert stepping_down.status_code == 409
    assert stepping_down.json()["error"]["code"] == "last_admin"
    assert _events(bob, cid) == []

    assert _set_role(admin, cid, bob, "admin").status_code == 200
    assert _leave(admin, cid).status_code == 204
    assert _roles(bob, cid) == {str(bob.user.pk): "admin"}
    assert [e["action"] for e in _events(bob, cid)] == ["member.role_changed", "member.left"]


def test_the_last_member_may_leave(org_a, new_session):
    admin, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, bob, kind="group")["id"]
    assert _leave(bob, cid).status_code == 204
    assert _leave(admin, cid).status_code == 204
    assert admin.api.get(f"/api/v1/conversations/{cid}").status_code == 404


def test_a_deactivated_admin_does_not_count_as_another_admin(org_a, new_session):
    owner = new_session(org_a, role="owner")
    admin, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, bob, carol, kind="group")["id"]
    assert _set_role(admin, cid, carol, "admin").status_code == 200
    assert owner.api.post(f"/api/v1/users/{carol.user.pk}/deactivate").status_code == 200

    refused = _leave(admin, cid)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "last_admin"
    # Nor can a deactivated user be made admin.
    dave = new_session(org_a)
    admin.api.post(f"/api/v1/conversations/{cid}/members", json={"user_ids": [str(dave.user.pk)]})
    assert owner.api.post(f"/api/v1/users/{dave.user.pk}/deactivate").status_code == 200
    inactive = _set_role(admin, cid, dave, "admin")
    assert inactive.status_code == 400 and inactive.json()["error"]["code"] == "invalid_members"


def test_two_admins_leaving_at_once_leave_one_admin(org_a, new_session):
    # Given a group with two admins and a member, when both admins leave at the same
    # moment, then the row lock orders them: one leaves, the other is the last admin.
    admin, other, bob = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, other, bob, kind="group")["id"]
    assert _set_role(admin, cid, other, "admin").status_code == 200
    for _ in range(3):
        answers: list[int] = []
        barrier = threading.Barrier(2)

        def leave(session, answers=answers, barrier=barrier):
            barrier.wait()
            answers.append(_leave(session, cid).status_code)

        threads = [threading.Thread(target=leave, args=(s,)) for s in (admin, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(answers) == [204, 409]
        stayed = admin if _roles(bob, cid).get(str(admin.user.pk)) else other
        assert _roles(bob, cid)[str(stayed.user.pk)] == "admin"
        # Bring the one who left back as admin for the next round.
        gone = other if stayed is admin else admin
        stayed.api.post(
            f"/api/v1/conversations/{cid}/members", json={"user_ids": [str(gone.user.pk)]}
        )
        assert _set_role(stayed, cid, gone, "admin").status_code == 200


def test_an_erased_only_admin_hands_the_group_to_the_longest_standing_member(org_a, new_session):
    owner = new_session(org_a, role="owner")
    admin, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, bob, carol, kind="group")["id"]
    # Members are listed in join order (bob and carol joined in one request, in any order).
    members = bob.api.get(f"/api/v1/conversations/{cid}").json()["members"]
    first, second = [m["user_id"] for m in members if m["user_id"] != str(admin.user.pk)]
    erased = owner.api.post(f"/api/v1/users/{admin.user.pk}/erase", json={"reason": "GDPR art. 17"})
    assert erased.status_code == 200, erased.text
    assert _roles(bob, cid) == {first: "admin", second: "member"}
    # The hand-over comes with the deactivation that starts an erasure, then the removal.
    events = _events(carol, cid)
    assert [e["action"] for e in events] == ["member.role_changed", "member.removed"]
    assert events[0]["user_ids"] == [first] and events[0]["role"] == "admin"


def test_a_deactivated_only_admin_hands_the_group_to_the_longest_standing_active_member(
    org_a, new_session
):
    # Deprovisioned (the portal, or the IdP over SCIM): a group whose only active admin
    # they were would have had no one left to add, remove, promote or rename.
    owner = new_session(org_a, role="owner")
    admin, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    only = start_conversation(admin, bob, kind="group")["id"]
    admin.api.post(f"/api/v1/conversations/{only}/members", json={"user_ids": [str(carol.user.pk)]})
    shared = start_conversation(admin, bob, kind="group")["id"]
    assert _set_role(admin, shared, bob, "admin").status_code == 200
    plain = start_conversation(carol, admin, kind="group")["id"]
    direct = start_conversation(admin, bob)["id"]

    deactivated = owner.api.post(f"/api/v1/users/{admin.user.pk}/deactivate")
    assert deactivated.status_code == 200, deactivated.text

    # The group they alone ran: bob (the longest-standing active member) is admin now.
    assert _roles(bob, only) == {
        str(admin.user.pk): "admin",  # still a member and admin: reactivated, they run it again
        str(bob.user.pk): "admin",
        str(carol.user.pk): "member",
    }
    handed = _events(carol, only)
    assert handed[0]["action"] == "member.added"
    assert handed[1:] == [
        {
            "action": "member.role_changed",
            "user_ids": [str(bob.user.pk)],
            "role": "admin",
            "by": str(admin.user.pk),
        }
    ]
    # bob can do what admins do.
    assert _set_role(bob, only, carol, "admin").status_code == 200
    # Groups with another active admin, groups they were a member of, and direct
    # conversations are left as they were.
    assert len(_events(bob, shared)) == 1  # bob's promotion, before
    assert _roles(carol, plain) == {str(carol.user.pk): "admin", str(admin.user.pk): "member"}
    assert _events(carol, plain) == []
    assert [
        m["role"] for m in bob.api.get(f"/api/v1/conversations/{direct}").json()["members"]
    ] == [
        "member",
        "member",
    ]
    # Deactivating again changes nothing more.
    assert owner.api.post(f"/api/v1/users/{admin.user.pk}/deactivate").status_code == 200
    assert len(_events(carol, only)) == 3  # carol added, the hand-over, her promotion


# --- remove -------------------------------------------------------------------------------


def test_an_admin_removes_a_member_and_the_removed_devices_learn_it(org_a, new_session):
    admin, bob, carol = new_session(org_a), new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, bob, carol, kind="group")["id"]
    removed = admin.api.delete(f"/api/v1/conversations/{cid}/members/{bob.user.pk}")
    assert removed.status_code == 204
    queued = bob.api.get("/api/v1/messages").json()
    assert [m["event"]["action"] for m in queued if m["conversation"] == cid] == ["member.removed"]
    assert bob.api.get(f"/api/v1/conversations/{cid}").status_code == 404
    again = admin.api.delete(f"/api/v1/conversations/{cid}/members/{bob.user.pk}")
    assert again.status_code == 404


# --- title and topic ----------------------------------------------------------------------


def test_rename_and_topic_store_ciphertext_and_are_events(org_a, new_session):
    admin, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, bob, kind="group")["id"]
    title, topic = os.urandom(48), os.urandom(200)

    changed = admin.api.patch(
        f"/api/v1/conversations/{cid}", json={"title": b64(title), "topic": b64(topic)}
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["title"] == b64(title) and changed.json()["topic"] == b64(topic)
    stored = in_tenant(org_a, Conversation.objects.get, pk=cid)
    assert bytes(stored.title) == title and bytes(stored.topic) == topic
    # The same values again, and an empty body, change nothing.
    admin.api.patch(f"/api/v1/conversations/{cid}", json={"title": b64(title)})
    assert admin.api.patch(f"/api/v1/conversations/{cid}", json={}).status_code == 200
    # null clears the topic.
    cleared = admin.api.patch(f"/api/v1/conversations/{cid}", json={"topic": None})
    assert cleared.json()["topic"] is None and cleared.json()["title"] == b64(title)

    assert _events(bob, cid) == [
        {"action": "title.changed", "title": b64(title), "by": str(admin.user.pk)},
        {"action": "topic.changed", "topic": b64(topic), "by": str(admin.user.pk)},
        {"action": "topic.changed", "topic": None, "by": str(admin.user.pk)},
    ]


def test_rename_refuses_bad_values_and_direct_conversations(org_a, new_session):
    admin, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, bob, kind="group")["id"]
    for body in (
        {"title": b64(os.urandom(4097))},
        {"topic": "not base64!"},
        {"title": base64.urlsafe_b64encode(b"\xfb\xff\xfe").decode()},
        {"topic": 12},
    ):
        response = admin.api.patch(f"/api/v1/conversations/{cid}", json=body)
        assert response.status_code == 400, (body, response.text)
    direct = start_conversation(admin, bob)["id"]
    refused = admin.api.patch(f"/api/v1/conversations/{direct}", json={"title": b64(b"x")})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "not_allowed"
    assert _events(admin, cid) == []


async def test_group_changes_reach_the_members_sockets_as_events(server, org_a, new_session):
    admin, bob = new_session(org_a), new_session(org_a)
    cid = start_conversation(admin, bob, kind="group")["id"]
    async with await authed_socket(server, bob, live=True) as ws:
        admin.api.patch(f"/api/v1/conversations/{cid}", json={"title": b64(b"ct")})
        frame = await recv_type(ws, "message", timeout=15)
        assert frame["conversation"] == cid and frame["body"] is None
        assert frame["event"] == {
            "action": "title.changed",
            "title": b64(b"ct"),
            "by": str(admin.user.pk),
        }
        _set_role(admin, cid, bob, "admin")
        frame = await recv_type(ws, "message", timeout=15)
        assert frame["event"]["action"] == "member.role_changed"
        assert frame["seq"] == 2


# --- isolation ----------------------------------------------------------------------------


def test_non_members_and_other_orgs_get_404_for_every_group_operation(org_a, org_b, new_session):
    admin, bob = new_session(org_a), new_session(org_a)
    outsider, foreign = new_session(org_a), new_session(org_b)
    cid = start_conversation(admin, bob, kind="group")["id"]
    for session in (outsider, foreign):
        calls = [
            session.api.patch(f"/api/v1/conversations/{cid}", json={"title": b64(b"x")}),
            session.api.patch(
                f"/api/v1/conversations/{cid}/members/{bob.user.pk}", json={"role": "admin"}
            ),
            session.api.delete(f"/api/v1/conversations/{cid}/members/{bob.user.pk}"),
            session.api.post(
                f"/api/v1/conversations/{cid}/members", json={"user_ids": [str(session.user.pk)]}
            ),
        ]
        assert [c.status_code for c in calls] == [404] * 4
    assert _events(admin, cid) == []
    assert _roles(admin, cid) == {str(admin.user.pk): "admin", str(bob.user.pk): "member"}


# --- group size ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def org_g():
    return create_org("groupsize", "groupsize.test")


def test_the_group_size_limit_is_an_audited_org_policy(org_g, new_session):
    owner = new_session(org_g, role="owner")
    member = new_session(org_g)
    assert owner.api.get("/api/v1/org/policy").json()["group_max_members"] == 1000
    for bad in (1, 5001, "many", 2.5, None):
        refused = owner.api.patch("/api/v1/org/policy", json={"group_max_members": bad})
        assert refused.status_code == 400, (bad, refused.text)
    assert member.api.patch("/api/v1/org/policy", json={"group_max_members": 3}).status_code == 403

    changed = owner.api.patch("/api/v1/org/policy", json={"group_max_members": 3})
    assert changed.status_code == 200 and changed.json()["group_max_members"] == 3
    entry = in_tenant(
        org_g,
        lambda: AuditEntry.objects.filter(
            event="org.policy_changed", target_id="group_max_members"
        ).last(),
    )
    assert (entry.data["before"], entry.data["after"]) == (1000, 3)


def test_groups_stop_at_the_orgs_size_limit(org_g, new_session):
    owner = new_session(org_g, role="owner")
    owner.api.patch("/api/v1/org/policy", json={"group_max_members": 3})
    try:
        others = [str(make_user(org_g).pk) for _ in range(3)]
        too_big = owner.api.post("/api/v1/conversations", json={"kind": "group", "members": others})
        assert too_big.status_code == 400
        assert too_big.json()["error"]["code"] == "group_too_large"
        assert too_big.json()["max_members"] == 3

        group = owner.api.post(
            "/api/v1/conversations", json={"kind": "group", "members": others[:2]}
        )
        assert group.status_code == 201
        cid = group.json()["id"]
        full = owner.api.post(
            f"/api/v1/conversations/{cid}/members", json={"user_ids": [others[2]]}
        )
        assert full.status_code == 400 and full.json()["error"]["code"] == "group_too_large"
        # Adding someone already in it is no growth: fine.
        same = owner.api.post(f"/api/v1/conversations/{cid}/members", json={"user_ids": others[:1]})
        assert same.status_code == 200
        # A lower limit keeps a bigger group as it is but lets no one in.
        owner.api.patch("/api/v1/org/policy", json={"group_max_members": 2})
        assert len(owner.api.get(f"/api/v1/conversations/{cid}").json()["members"]) == 3
        assert _events(owner, cid) == []
    finally:
        owner.api.patch("/api/v1/org/policy", json={"group_max_members": 1000})


def test_adds_racing_past_the_limit_let_exactly_one_in(org_g, new_session):
    owner = new_session(org_g, role="owner")
    owner.api.patch("/api/v1/org/policy", json={"group_max_members": 3})
    try:
        cid = owner.api.post(
            "/api/v1/conversations", json={"kind": "group", "members": [str(make_user(org_g).pk)]}
        ).json()["id"]
        candidates = [str(make_user(org_g).pk) for _ in range(4)]
        answers: list[int] = []
        barrier = threading.Barrier(4)

        def add(user_id):
            barrier.wait()
            answers.append(
                owner.api.post(
                    f"/api/v1/conversations/{cid}/members", json={"user_ids": [user_id]}
                ).status_code
            )

        threads = [threading.Thread(target=add, args=(c,)) for c in candidates]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(answers) == [200, 400, 400, 400]
        assert len(owner.api.get(f"/api/v1/conversations/{cid}").json()["members"]) == 3
    finally:
        owner.api.patch("/api/v1/org/policy", json={"group_max_members": 1000})


def test_a_user_id_in_any_written_form_names_the_same_user(org_a, new_session):
    # Upper case, no hyphens: the same UUID. Adding with one is no "unknown user", and the
    # only admin "removing" themselves by such a spelling is leaving (409 last_admin), not
    # an admin's removal that skipped the rule (it handed the group on by itself).
    admin, bob = new_session(org_a), new_session(org_a)
    carol, dave = make_user(org_a), make_user(org_a)
    created = admin.api.post(
        "/api/v1/conversations",
        json={
            "kind": "group",
            "members": [str(bob.user.pk).upper(), str(admin.user.pk).upper()],
        },
    )
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    assert _roles(admin, cid) == {str(admin.user.pk): "admin", str(bob.user.pk): "member"}
    added = admin.api.post(
        f"/api/v1/conversations/{cid}/members",
        json={"user_ids": [str(carol.pk).upper(), carol.pk.hex, dave.pk.hex]},
    )
    assert added.status_code == 200, added.text
    assert set(_roles(admin, cid)) == {
        str(u) for u in (admin.user.pk, bob.user.pk, carol.pk, dave.pk)
    }
    assert _events(admin, cid)[-1]["user_ids"] in (
        [str(carol.pk), str(dave.pk)],
        [str(dave.pk), str(carol.pk)],
    )

    refused = admin.api.delete(f"/api/v1/conversations/{cid}/members/{admin.user.pk.hex.upper()}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "last_admin"
    assert _roles(admin, cid)[str(admin.user.pk)] == "admin"
    # A member leaves by any spelling of their own id (no admin rights needed).
    left = bob.api.delete(f"/api/v1/conversations/{cid}/members/{str(bob.user.pk).upper()}")
    assert left.status_code == 204, left.text
    assert _events(admin, cid)[-1]["action"] == "member.left"
