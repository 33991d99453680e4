"""Each web process caches which org a host is and which device a token is
(siphera.generations). A change must reach every process: the one that made it at once,
the others within GENERATION_CHECK_SECONDS, however long their entries could live."""

from __future__ import annotations

from tests.fixtures import Api, create_org, eventually, host_of, make_user, unique


def test_a_revoked_device_is_refused_at_once_here_and_soon_by_every_process(
    org_a, new_session, second_server
):
    laptop = new_session(org_a, name="laptop")
    phone = new_session(org_a, laptop.user, name="phone")
    phone_there = Api(second_server, host_of(org_a), phone.token)
    # Both processes have the phone's token cached
    assert phone.api.get("/api/v1/me").status_code == 200
    assert phone_there.get("/api/v1/me").status_code == 200
    # When the laptop revokes the phone through the first process
    assert laptop.api.delete(f"/api/v1/devices/{phone.device_id}").status_code == 204
    # Then the first process refuses the phone at once, and the second soon after
    assert phone.api.get("/api/v1/me").status_code == 401
    eventually(lambda: phone_there.get("/api/v1/me").status_code == 401)
    # And the laptop, whose entry was dropped with the phone's, still works on both
    assert laptop.api.get("/api/v1/me").status_code == 200
    assert Api(second_server, host_of(org_a), laptop.token).get("/api/v1/me").status_code == 200


def test_a_deactivated_user_and_a_role_change_reach_every_process(
    org_a, org_b, new_session, second_server
):
    admin = new_session(org_a, role="admin")
    member = new_session(org_a)
    outsider = new_session(org_b)
    member_there = Api(second_server, host_of(org_a), member.token)
    outsider_there = Api(second_server, host_of(org_b), outsider.token)
    assert member_there.get("/api/v1/audit").status_code == 403
    assert outsider_there.get("/api/v1/me").status_code == 200
    # A promotion to admin reaches the second process: the audit log opens
    promoted = admin.api.put(f"/api/v1/users/{member.user.pk}/role", json={"role": "admin"})
    assert promoted.status_code == 200, promoted.text
    eventually(lambda: member_there.get("/api/v1/audit").status_code == 200)
    assert member_there.get("/api/v1/me").json()["role"] == "admin"
    # A deactivation locks the user out of both
    gone = admin.api.post(f"/api/v1/users/{member.user.pk}/deactivate")
    assert gone.status_code == 200, gone.text
    assert member.api.get("/api/v1/me").status_code == 401
    eventually(lambda: member_there.get("/api/v1/me").status_code == 401)
    # The other org's cached entries are not this org's business
    assert outsider_there.get("/api/v1/me").status_code == 200


def test_a_removed_host_and_a_suspended_org_stop_routing_in_every_process(server, second_server):
    from orgs.models import Domain, Org
    from siphera.tenancy import public_schema

    slug = unique("cache")
    org = create_org(slug, f"{slug}.test", f"{slug}-alias.test")
    user = make_user(org)
    for live in (server, second_server):
        for host in (f"{slug}.test", f"{slug}-alias.test"):
            answer = Api(live, host).post(
                "/api/v1/auth/login", json={"username": user.username, "password": "x"}
            )
            assert answer.status_code == 401  # the org answers (a wrong password)
    # When the alias is removed (here, in the test process: a third process)
    with public_schema():
        Domain.objects.filter(domain=f"{slug}-alias.test").delete()
    # Then no process routes it any more, and the primary host still works
    for live in (server, second_server):
        eventually(
            lambda live=live: Api(live, f"{slug}-alias.test").get("/api/v1/me").status_code == 404
        )
        assert Api(live, f"{slug}.test").get("/api/v1/me").status_code == 401
    # When the org is suspended, its host stops routing everywhere
    with public_schema():
        suspended = Org.objects.get(pk=org.pk)
        suspended.is_active = False
        suspended.save()
    for live in (server, second_server):
        eventually(
            lambda live=live: (
                Api(live, f"{slug}.test").get("/api/v1/me").json()["error"]["code"] == "unknown_org"
            )
        )
