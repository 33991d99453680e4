"""SCIM 2.0 over the live server: discovery, the bearer token of each org, Users and Groups
(create, filter, page, attributes, every PATCH form, ETags, errors), deactivation closing
sockets at once, group -> role, the SSO binding rules, audit, and the other org's view."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import quote

import pytest

from orgs.accounts.models import AuditEntry, Device, LoginGrant, User
from orgs.scim.models import ScimGroup, ScimUser
from orgs.services import audit
from orgs.sso.models import IdentityProvider
from orgs.sso.provisioning import Assertion, check_set_group_roles, check_sso_user
from orgs.tests.scim_support import Scim, patch_body, scim_token
from siphera.tenancy import in_tenant
from tests.fixtures import LiveServer, create_org, login_grant, make_user, server_with_env, unique
from tests.ws import authed_socket, recv, recv_type, send, wait_closed

ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"
USER = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


@pytest.fixture
def org():
    return create_org(unique("s"), f"{unique('h')}.test")


@pytest.fixture
def scim(server, org) -> Scim:
    return Scim(server, org, scim_token(org, "okta"))


def events(org, event: str, **match) -> list[AuditEntry]:
    return in_tenant(org, lambda: list(AuditEntry.objects.filter(event=event, **match)))


def db_user(org, pk) -> User:
    return in_tenant(org, User.objects.get, pk=pk)


def assert_scim_error(response, status: int, scim_type: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/scim+json")
    body = response.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status) and body["detail"]
    if scim_type is not None:
        assert body.get("scimType") == scim_type, body
    return body


def new_user(scim: Scim, **extra) -> dict:
    name = extra.pop("userName", None) or f"{unique('p')}@example.com"
    body = {
        "schemas": [USER],
        "userName": name,
        "name": {"givenName": "Ada", "familyName": "Lovelace"},
        "emails": [{"value": name, "type": "work", "primary": True}],
        "active": True,
        **extra,
    }
    response = scim.post("/Users", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def new_group(scim: Scim, name: str | None = None, members=()) -> dict:
    body = {
        "schemas": [GROUP],
        "displayName": name or unique("g"),
        "members": [{"value": m} for m in members],
    }
    response = scim.post("/Groups", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def q(filter_text: str) -> str:
    return quote(filter_text, safe="")


# --- discovery ------------------------------------------------------------------------------


def test_discovery_documents_describe_users_groups_and_the_enterprise_extension(scim):
    spc = scim.get("/ServiceProviderConfig")
    assert spc.status_code == 200 and spc.headers["content-type"] == "application/scim+json"
    body = spc.json()
    assert body["patch"]["supported"] and body["filter"]["supported"] and body["etag"]["supported"]
    assert body["filter"]["maxResults"] == 1000 and not body["bulk"]["supported"]

    schemas = scim.get("/Schemas").json()
    assert schemas["totalResults"] == 3
    assert {s["id"] for s in schemas["Resources"]} == {USER, GROUP, ENTERPRISE}
    one = scim.get(f"/Schemas/{ENTERPRISE}").json()
    assert {a["name"] for a in one["attributes"]} >= {"employeeNumber", "department", "manager"}
    assert_scim_error(scim.get("/Schemas/urn:nope"), 404)

    types = scim.get("/ResourceTypes").json()
    assert types["totalResults"] == 2
    user_type = scim.get("/ResourceTypes/User").json()
    assert user_type["endpoint"] == "/Users"
    assert user_type["schemaExtensions"] == [{"schema": ENTERPRISE, "required": False}]


def test_unknown_paths_and_methods_get_scim_error_bodies(scim):
    assert_scim_error(scim.get("/Nope"), 404)
    assert_scim_error(scim.delete("/Users"), 405)
    assert_scim_error(scim.get("/Users/not-a-uuid"), 404)
    assert_scim_error(scim.get("/Groups/00000000-0000-0000-0000-000000000000"), 404)


# --- the token ------------------------------------------------------------------------------


def test_requests_without_a_valid_token_are_refused_with_a_scim_401(server, org, scim, new_session):
    anonymous = Scim(server, org, None)
    # Not even an owner's device token: SCIM answers the org's IdP token only.
    owner = new_session(org, role="owner")
    assert_scim_error(Scim(server, org, owner.token).get("/Users"), 401)
    body = assert_scim_error(anonymous.get("/Users"), 401)
    assert "token" in body["detail"]
    assert anonymous.get("/Users").headers["www-authenticate"].startswith("Bearer")
    assert_scim_error(Scim(server, org, "sph_s_" + "x" * 43).get("/Users"), 401)
    assert_scim_error(Scim(server, org, "garbage").get("/ServiceProviderConfig"), 401)
    assert_scim_error(anonymous.post("/Users", json={"userName": "sneaky"}), 401)
    assert not in_tenant(org, User.objects.filter(username="sneaky").exists)


def test_an_org_a_token_is_refused_on_org_b(server, org):
    other = create_org(unique("s"), f"{unique('h')}.test")
    token_a = scim_token(org)
    scim_token(other)
    assert Scim(server, org, token_a).get("/Users").status_code == 200
    assert_scim_error(Scim(server, other, token_a).get("/Users"), 401)
    assert_scim_error(Scim(server, other, token_a).post("/Users", json={"userName": "x1"}), 401)


def test_rotating_the_token_revokes_the_old_one_and_is_audited(server, org):
    first = scim_token(org, "okta")
    second = scim_token(org, "okta-2")
    assert_scim_error(Scim(server, org, first).get("/Users"), 401)
    assert Scim(server, org, second).get("/Users").status_code == 200
    rotated = events(org, "scim.token_rotated")
    assert [e.data["label"] for e in rotated] == ["okta", "okta-2"]
    assert rotated[-1].data["revoked"] == 1
    for entry in rotated:  # the token itself is never written anywhere
        assert first not in json.dumps(entry.data) and second not in json.dumps(entry.data)


# --- users: create --------------------------------------------------------------------------


def test_creating_a_user_binds_external_id_and_is_audited_with_the_idp_as_actor(scim, org):
    created = new_user(scim, userName="Grace.Hopper@Example.com", externalId="00u1abc")
    assert created["userName"] == "grace.hopper@example.com"  # lower-cased, like every username
    assert created["externalId"] == "00u1abc" and created["active"] is True
    assert created["meta"]["resourceType"] == "User"
    assert created["meta"]["location"].endswith(f"/scim/v2/Users/{created['id']}")
    user = db_user(org, created["id"])
    assert user.external_id == "00u1abc" and user.source == "scim"
    assert not user.has_usable_password() and user.email == "Grace.Hopper@Example.com"
    assert user.display_name == "Ada Lovelace" and user.role == "member"
    [entry] = events(org, "scim.user_provisioned", target_id=created["id"])
    assert entry.actor_label == "scim:okta" and entry.actor_id is None
    assert entry.data["username"] == "grace.hopper@example.com"


def test_the_location_and_etag_headers_of_a_create(scim):
    response = scim.post("/Users", json={"schemas": [USER], "userName": unique("loc")})
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == body["meta"]["location"]
    assert response.headers["etag"] == body["meta"]["version"] == 'W/"1"'


def test_without_external_id_the_username_is_bound_so_sso_finds_the_same_user(scim, org):
    created = new_user(scim, userName="noext@example.com")
    assert "externalId" not in created
    user = db_user(org, created["id"])
    assert user.external_id == "noext@example.com"
    idp = IdentityProvider(kind="saml", jit_provisioning=True)
    signed_in = in_tenant(
        org,
        check_sso_user,
        idp,
        Assertion(subject="noext@example.com"),
        actor=audit.Actor.system("tests"),
    )
    assert signed_in.pk == user.pk
    assert in_tenant(org, User.objects.count) == 1  # nobody was created at sign-in


def test_a_scim_user_signing_in_by_sso_with_its_external_id_is_the_same_user(scim, org):
    created = new_user(scim, externalId="okta-immutable-42")
    idp = IdentityProvider(kind="oidc", jit_provisioning=True, attribute_map={})
    signed_in = in_tenant(
        org,
        check_sso_user,
        idp,
        Assertion(subject="okta-immutable-42"),
        actor=audit.Actor.system("tests"),
    )
    assert str(signed_in.pk) == created["id"]


def test_duplicate_usernames_and_external_ids_are_409_uniqueness(scim):
    new_user(scim, userName="dup@example.com", externalId="ext-dup")
    assert_scim_error(scim.post("/Users", json={"userName": "DUP@example.com"}), 409, "uniqueness")
    assert_scim_error(
        scim.post("/Users", json={"userName": "other@example.com", "externalId": "ext-dup"}),
        409,
        "uniqueness",
    )


def test_bad_user_input_is_a_scim_400_and_nothing_is_written(scim, org):
    before = in_tenant(org, User.objects.count)
    assert_scim_error(scim.post("/Users", json={"name": {"givenName": "x"}}), 400, "invalidValue")
    assert_scim_error(scim.post("/Users", json={"userName": "has space"}), 400, "invalidValue")
    assert_scim_error(scim.post("/Users", json={"userName": "a", "active": "maybe"}), 400)
    assert_scim_error(scim.post("/Users", json={"userName": "a", "name": "flat"}), 400)
    assert_scim_error(scim.post("/Users", json={"userName": "a", "title": "x" * 2000}), 400)
    assert_scim_error(scim.post("/Users", json=["not", "an", "object"]), 400, "invalidSyntax")
    malformed = scim.post("/Users", content=b'{"userName": ')
    assert_scim_error(malformed, 400, "invalidSyntax")
    assert in_tenant(org, User.objects.count) == before


def test_a_huge_body_is_refused_with_a_scim_413(scim):
    huge = {"userName": "big", "title": "x" * (3 * 1024 * 1024)}
    assert_scim_error(scim.post("/Users", json=huge), 413)


def test_unknown_attributes_and_a_password_are_dropped_not_stored(scim, org):
    created = new_user(scim, password="Hunter2!", roles=[], nonsense={"a": 1})
    assert "password" not in created and "nonsense" not in created
    assert not db_user(org, created["id"]).has_usable_password()


# --- users: read, filter, page, attributes --------------------------------------------------


def test_filters_find_users_by_username_case_insensitively_and_by_external_id(scim):
    alice = new_user(scim, userName="alice@example.com", externalId="ext-alice")
    new_user(scim, userName="bob@example.com", externalId="ext-bob")

    found = scim.get("/Users", params={"filter": 'userName eq "ALICE@example.com"'}).json()
    assert found["totalResults"] == 1 and found["Resources"][0]["id"] == alice["id"]
    by_ext = scim.get("/Users", params={"filter": 'externalId eq "ext-alice"'}).json()
    assert [r["id"] for r in by_ext["Resources"]] == [alice["id"]]
    none = scim.get("/Users", params={"filter": 'userName eq "nobody@example.com"'}).json()
    assert none["totalResults"] == 0 and none["Resources"] == []
    both = scim.get("/Users", params={"filter": 'userName sw "a" or userName co "bob"'}).json()
    assert both["totalResults"] == 2
    not_alice = scim.get(
        "/Users", params={"filter": 'not (userName eq "alice@example.com")'}
    ).json()
    assert alice["id"] not in {r["id"] for r in not_alice["Resources"]}


def test_filters_on_other_attributes_and_value_paths(scim):
    carol = new_user(scim, userName="carol@example.com", title="Engineer")
    new_user(scim, userName="dave@example.com", title="Designer")
    by_title = scim.get("/Users", params={"filter": 'title eq "engineer"'}).json()
    assert [r["id"] for r in by_title["Resources"]] == [carol["id"]]
    by_email = scim.get(
        "/Users", params={"filter": 'emails[type eq "work" and value co "carol"]'}
    ).json()
    assert [r["id"] for r in by_email["Resources"]] == [carol["id"]]
    dotted = scim.get("/Users", params={"filter": 'emails.value ew "@example.com"'}).json()
    assert dotted["totalResults"] == 2
    present = scim.get("/Users", params={"filter": 'title pr and name.givenName eq "Ada"'}).json()
    assert present["totalResults"] == 2


@pytest.mark.parametrize(
    "bad",
    ["userName eq", 'userName zz "x"', '(userName eq "x"', 'userName eq "x" and', "urn:x:y eq 1"],
)
def test_malformed_filters_are_400_invalid_filter(scim, bad):
    assert_scim_error(scim.get("/Users", params={"filter": bad}), 400)


def test_paging_with_start_index_and_count(scim):
    ids = [new_user(scim)["id"] for _ in range(5)]
    first = scim.get("/Users?startIndex=1&count=2").json()
    assert first["totalResults"] == 5 and first["itemsPerPage"] == 2 and first["startIndex"] == 1
    pages = [
        r["id"]
        for start in (1, 3, 5)
        for r in scim.get(f"/Users?startIndex={start}&count=2").json()["Resources"]
    ]
    assert pages == ids
    assert scim.get("/Users?count=0").json() == {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": 5,
        "itemsPerPage": 0,
        "startIndex": 1,
        "Resources": [],
    }
    assert scim.get("/Users?startIndex=0&count=100000").json()["itemsPerPage"] == 5
    assert_scim_error(scim.get("/Users?count=many"), 400, "invalidValue")


def test_attributes_and_excluded_attributes(scim):
    created = new_user(scim, title="Boss")
    only = scim.get(f"/Users/{created['id']}?attributes=userName,name.givenName").json()
    assert set(only) == {"schemas", "id", "userName", "name"}
    assert only["name"] == {"givenName": "Ada"}
    without = scim.get(f"/Users/{created['id']}?excludedAttributes=emails,name.familyName").json()
    assert "emails" not in without and without["name"] == {"givenName": "Ada"}
    assert without["title"] == "Boss" and without["id"] == created["id"]
    listed = scim.get("/Users?attributes=userName").json()["Resources"]
    assert all(set(r) == {"schemas", "id", "userName"} for r in listed)
    searched = scim.post(
        "/Users/.search",
        json={
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
            "filter": f'userName eq "{created["userName"]}"',
            "excludedAttributes": ["name", "emails"],
        },
    ).json()
    [found] = searched["Resources"]
    assert "name" not in found and found["title"] == "Boss"


# --- users: PATCH in every form --------------------------------------------------------------


def test_okta_patch_forms(scim, org):
    user = new_user(scim)
    uid = user["id"]
    # Path-less replace of several attributes.
    response = scim.patch(
        f"/Users/{uid}",
        json=patch_body({"op": "replace", "value": {"displayName": "Ada L.", "title": "CTO"}}),
    )
    assert response.status_code == 200, response.text
    assert response.json()["displayName"] == "Ada L." and response.json()["title"] == "CTO"
    assert db_user(org, uid).display_name == "Ada L."
    # Add to a multi-valued attribute, then remove one value with a filter.
    scim.patch(
        f"/Users/{uid}",
        json=patch_body(
            {"op": "add", "path": "phoneNumbers", "value": [{"value": "+1 555", "type": "work"}]}
        ),
    )
    scim.patch(
        f"/Users/{uid}",
        json=patch_body(
            {"op": "add", "path": "phoneNumbers", "value": [{"value": "+1 666", "type": "mobile"}]}
        ),
    )
    removed = scim.patch(
        f"/Users/{uid}",
        json=patch_body({"op": "remove", "path": 'phoneNumbers[type eq "work"]'}),
    ).json()
    assert removed["phoneNumbers"] == [{"value": "+1 666", "type": "mobile"}]
    # Remove a simple attribute.
    gone = scim.patch(f"/Users/{uid}", json=patch_body({"op": "remove", "path": "title"})).json()
    assert "title" not in gone


def test_entra_patch_forms(scim, org):
    user = new_user(scim, emails=[])
    uid = user["id"]
    manager = new_user(scim)
    response = scim.patch(
        f"/Users/{uid}",
        json=patch_body(
            # Capitalised ops; a filtered path that adds the entry when none matches.
            {"op": "Add", "path": 'emails[type eq "work"].value', "value": "ada@work.example"},
            {"op": "Replace", "path": "name.familyName", "value": "Byron"},
            {"op": "Add", "path": f"{ENTERPRISE}:department", "value": "R&D"},
            {"op": "Add", "path": f"{ENTERPRISE}:manager", "value": manager["id"]},
            {"op": "Replace", "path": f"{USER}:title", "value": "Countess"},
            {"op": "Replace", "value": {"name.givenName": "Augusta", "nickName": "Ada"}},
        ),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["emails"] == [{"type": "work", "value": "ada@work.example"}]
    assert body["name"] == {"givenName": "Augusta", "familyName": "Byron"}
    assert body[ENTERPRISE] == {"department": "R&D", "manager": {"value": manager["id"]}}
    assert (
        ENTERPRISE in body["schemas"] and body["title"] == "Countess" and body["nickName"] == "Ada"
    )
    assert db_user(org, uid).email == "ada@work.example"
    # Replace the matching entry's value in place.
    again = scim.patch(
        f"/Users/{uid}",
        json=patch_body(
            {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "new@work.example"}
        ),
    ).json()
    assert again["emails"] == [{"type": "work", "value": "new@work.example"}]


def test_string_booleans_deactivate_and_reactivate(scim, org):
    uid = new_user(scim)["id"]
    off = scim.patch(
        f"/Users/{uid}", json=patch_body({"op": "Replace", "path": "active", "value": "False"})
    )
    assert off.status_code == 200 and off.json()["active"] is False
    assert not db_user(org, uid).is_active
    on = scim.patch(
        f"/Users/{uid}", json=patch_body({"op": "replace", "value": {"active": "True"}})
    )
    assert on.json()["active"] is True and db_user(org, uid).is_active
    assert events(org, "scim.user_deprovisioned", target_id=uid)
    assert events(org, "scim.user_reactivated", target_id=uid)
    [deactivated] = events(org, "member.deactivated", target_id=uid)
    assert deactivated.actor_label == "scim:okta"


def test_bad_patches_are_scim_400s_and_change_nothing(scim, org):
    user = new_user(scim, title="Keep")
    uid = user["id"]
    cases = [
        ({"op": "replace", "path": "nosuch", "value": "x"}, "invalidPath"),
        ({"op": "replace", "path": "name.nosuch", "value": "x"}, "invalidPath"),
        ({"op": "replace", "path": 'emails[type eq "work"', "value": "x"}, "invalidPath"),
        ({"op": "frobnicate", "path": "title", "value": "x"}, "invalidSyntax"),
        ({"op": "remove"}, "noTarget"),
        ({"op": "replace", "path": "groups", "value": []}, "mutability"),
        ({"op": "remove", "path": "active"}, "invalidValue"),
        ({"op": "replace", "path": "active", "value": "perhaps"}, "invalidValue"),
        (
            {"op": "replace", "path": 'phoneNumbers[type eq "fax"]', "value": {"value": "1"}},
            "noTarget",
        ),
    ]
    for operation, scim_type in cases:
        response = scim.patch(
            f"/Users/{uid}",
            json=patch_body({"op": "replace", "path": "title", "value": "Changed"}, operation),
        )
        assert_scim_error(response, 400, scim_type)
    assert_scim_error(scim.patch(f"/Users/{uid}", json={"Operations": []}), 400, "invalidSyntax")
    after = scim.get(f"/Users/{uid}").json()
    assert after["title"] == "Keep" and after["meta"]["version"] == 'W/"1"'


def test_put_replaces_the_user(scim, org):
    created = new_user(scim, title="Old", externalId="ext-put")
    body = {
        "schemas": [USER],
        "id": created["id"],
        "userName": created["userName"],
        "externalId": "ext-put",
        "displayName": "Replaced",
        "active": True,
    }
    replaced = scim.put(f"/Users/{created['id']}", json=body).json()
    assert (
        replaced["displayName"] == "Replaced" and "title" not in replaced and "name" not in replaced
    )
    assert replaced["meta"]["version"] == 'W/"2"'
    [entry] = events(org, "scim.user_updated", target_id=created["id"])
    assert "title" in entry.data["changed"] and entry.actor_label == "scim:okta"


# --- ETags ----------------------------------------------------------------------------------


def test_etags_if_none_match_and_if_match(scim):
    uid = new_user(scim)["id"]
    got = scim.get(f"/Users/{uid}")
    tag = got.headers["etag"]
    assert tag == got.json()["meta"]["version"]
    assert scim.get(f"/Users/{uid}", headers={"If-None-Match": tag}).status_code == 304
    stale = scim.patch(
        f"/Users/{uid}",
        json=patch_body({"op": "replace", "path": "title", "value": "A"}),
        headers={"If-Match": 'W/"99"'},
    )
    assert_scim_error(stale, 412)
    fresh = scim.patch(
        f"/Users/{uid}",
        json=patch_body({"op": "replace", "path": "title", "value": "A"}),
        headers={"If-Match": tag},
    )
    assert fresh.status_code == 200 and fresh.headers["etag"] != tag
    assert_scim_error(scim.delete(f"/Users/{uid}", headers={"If-Match": tag}), 412)
    assert scim.get(f"/Users/{uid}", headers={"If-None-Match": tag}).status_code == 200
    group = new_group(scim)
    assert_scim_error(
        scim.put(f"/Groups/{group['id']}", json=group, headers={"If-Match": 'W/"7"'}), 412
    )


# --- deactivation and deletion ---------------------------------------------------------------


async def test_active_false_closes_the_users_sockets_within_a_second(
    server, org, scim, new_session
):
    created = await asyncio.to_thread(new_user, scim)
    user = await asyncio.to_thread(db_user, org, created["id"])
    await asyncio.to_thread(in_tenant, org, _give_password, user)
    laptop = await asyncio.to_thread(new_session, org, user, name="laptop")
    phone = await asyncio.to_thread(new_session, org, user, name="phone")
    bystander = await asyncio.to_thread(new_session, org)
    sockets = [await authed_socket(server, s, live=True) for s in (laptop, phone)]
    other = await authed_socket(server, bystander, live=True)

    response = await asyncio.to_thread(
        scim.patch,
        f"/Users/{created['id']}",
        json=patch_body({"op": "replace", "value": {"active": False}}),
    )
    assert response.status_code == 200 and response.json()["active"] is False
    # The deactivation took effect when the response was sent (its transaction committed
    # before): from then on every socket has one second to get the frame and be closed.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    for ws in sockets:
        frame = await recv_type(ws, "user.deactivated", timeout=max(deadline - loop.time(), 0.01))
        assert frame["type"] == "user.deactivated"
        assert await wait_closed(ws, timeout=max(deadline - loop.time(), 0.01)) == 4403
    await send(other, {"type": "ping"})
    assert (await recv(other))["type"] == "pong"
    await other.close()


def _give_password(user: User) -> None:
    from tests.fixtures import PASSWORD

    user.set_password(PASSWORD)
    user.save(update_fields=["password"])


def test_delete_revokes_devices_and_grants_and_hides_the_user(scim, org, new_session, api_for):
    created = new_user(scim, userName="leaver@example.com", externalId="ext-leaver")
    user = db_user(org, created["id"])
    in_tenant(org, _give_password, user)
    session = new_session(org, user)
    grant = login_grant(api_for(org), user.username)
    assert grant

    assert scim.delete(f"/Users/{created['id']}").status_code == 204

    assert session.api.get("/api/v1/me").status_code == 401
    assert not in_tenant(org, Device.objects.filter(user=user, revoked_at__isnull=True).exists)
    assert not in_tenant(org, LoginGrant.objects.filter(user=user, used_at__isnull=True).exists)
    assert_scim_error(scim.get(f"/Users/{created['id']}"), 404)
    assert_scim_error(scim.delete(f"/Users/{created['id']}"), 404)
    listed = scim.get("/Users", params={"filter": 'userName eq "leaver@example.com"'}).json()
    assert listed["totalResults"] == 0
    gone = db_user(org, created["id"])
    assert not gone.is_active and gone.external_id is None and gone.username.startswith("deleted.")
    assert gone.email == "" and gone.display_name == "Ada Lovelace"
    kept = in_tenant(org, lambda: ScimUser.objects.get(user_id=created["id"]).data)
    assert kept == {"name": {"givenName": "Ada", "familyName": "Lovelace"}}
    [entry] = events(org, "scim.user_deleted", target_id=created["id"])
    assert entry.data["username"] == "leaver@example.com" and entry.actor_label == "scim:okta"
    # The name and the external id are free again: a new hire may get them.
    again = new_user(scim, userName="leaver@example.com", externalId="ext-leaver")
    assert again["id"] != created["id"]


def test_the_last_owner_cannot_be_deactivated_or_deleted_by_scim(scim, org):
    owner = make_user(org, role="owner")
    for attempt in (
        scim.patch(
            f"/Users/{owner.pk}",
            json=patch_body({"op": "replace", "path": "active", "value": False}),
        ),
        scim.delete(f"/Users/{owner.pk}"),
    ):
        body = assert_scim_error(attempt, 409)
        assert "owner" in body["detail"]
    assert db_user(org, owner.pk).is_active
    assert scim.get(f"/Users/{owner.pk}").json()["active"] is True


def test_existing_local_users_are_listed_and_can_be_bound_by_the_idp(scim, org):
    local = make_user(org, "local.person")
    found = scim.get("/Users", params={"filter": 'userName eq "Local.Person"'}).json()
    [listed] = found["Resources"]
    assert listed["id"] == str(local.pk) and "externalId" not in listed
    bound = scim.patch(
        f"/Users/{local.pk}",
        json=patch_body({"op": "add", "path": "externalId", "value": "entra-object-1"}),
    )
    assert bound.status_code == 200 and bound.json()["externalId"] == "entra-object-1"
    user = db_user(org, local.pk)
    assert user.external_id == "entra-object-1" and user.has_usable_password()


# --- groups ---------------------------------------------------------------------------------


def test_groups_crud_membership_forms_and_audit(scim, org):
    a, b, c = (new_user(scim)["id"] for _ in range(3))
    group = new_group(scim, "Engineering", [a])
    gid = group["id"]
    assert [m["value"] for m in group["members"]] == [a]
    # Okta: add members; Okta's remove by filter; Entra's value-array remove.
    scim.patch(
        f"/Groups/{gid}",
        json=patch_body({"op": "add", "path": "members", "value": [{"value": b}, {"value": c}]}),
    )
    scim.patch(
        f"/Groups/{gid}", json=patch_body({"op": "remove", "path": f'members[value eq "{a}"]'})
    )
    response = scim.patch(
        f"/Groups/{gid}",
        json=patch_body({"op": "Remove", "path": "members", "value": [{"value": b}]}),
    )
    assert [m["value"] for m in response.json()["members"]] == [c]
    # Path-less replace of the name (Okta sends the id along).
    renamed = scim.patch(
        f"/Groups/{gid}",
        json=patch_body({"op": "replace", "value": {"id": gid, "displayName": "Eng"}}),
    ).json()
    assert renamed["displayName"] == "Eng"
    user_c = scim.get(f"/Users/{c}").json()
    assert user_c["groups"] == [
        {"value": gid, "$ref": renamed["meta"]["location"], "display": "Eng", "type": "direct"}
    ]
    # Filters: by name (case-insensitive) and Entra's membership check.
    by_name = scim.get(
        "/Groups", params={"filter": 'displayName eq "eng"', "excludedAttributes": "members"}
    ).json()
    assert [g["id"] for g in by_name["Resources"]] == [gid] and "members" not in by_name[
        "Resources"
    ][0]
    check = f'id eq "{gid}" and members[value eq "{c}"]'
    assert (
        scim.get("/Groups", params={"filter": check, "excludedAttributes": "members"}).json()[
            "totalResults"
        ]
        == 1
    )
    check_a = f'id eq "{gid}" and members[value eq "{a}"]'
    assert scim.get("/Groups", params={"filter": check_a}).json()["totalResults"] == 0
    # Audit: every change, the IdP as the actor.
    updates = events(org, "scim.group_updated", target_id=gid)
    assert len(updates) == 4 and {e.actor_label for e in updates} == {"scim:okta"}
    assert updates[-1].data["renamed_from"] == "Engineering"
    assert scim.delete(f"/Groups/{gid}").status_code == 204
    assert_scim_error(scim.get(f"/Groups/{gid}"), 404)
    assert events(org, "scim.group_deleted", target_id=gid)
    assert "groups" not in scim.get(f"/Users/{c}").json()


def test_group_errors(scim, server):
    new_group(scim, "Sales")
    assert_scim_error(scim.post("/Groups", json={"displayName": "SALES"}), 409, "uniqueness")
    assert_scim_error(scim.post("/Groups", json={"members": []}), 400, "invalidValue")
    unknown = {"displayName": "X", "members": [{"value": "00000000-0000-0000-0000-000000000000"}]}
    assert_scim_error(scim.post("/Groups", json=unknown), 400, "invalidValue")
    assert_scim_error(
        scim.post("/Groups", json={"displayName": "Y", "members": [{"value": "nope"}]}), 400
    )


def test_group_membership_maps_to_roles(scim, org):
    in_tenant(
        org,
        check_set_group_roles,
        [{"group": "Siphera Admins", "role": "admin"}],
        actor=audit.Actor.system("tests"),
    )
    uid = new_user(scim)["id"]
    group = new_group(scim, "siphera admins", [uid])
    assert db_user(org, uid).role == "admin"
    [changed] = events(org, "member.role_changed", target_id=uid)
    assert changed.actor_label == "scim:okta" and changed.data["after"] == "admin"
    scim.patch(
        f"/Groups/{group['id']}",
        json=patch_body({"op": "remove", "path": f'members[value eq "{uid}"]'}),
    )
    assert db_user(org, uid).role == "member"
    scim.patch(
        f"/Groups/{group['id']}",
        json=patch_body({"op": "add", "path": "members", "value": [{"value": uid}]}),
    )
    assert db_user(org, uid).role == "admin"
    scim.patch(
        f"/Groups/{group['id']}",
        json=patch_body({"op": "replace", "path": "displayName", "value": "Other"}),
    )
    assert db_user(org, uid).role == "member"


# --- the other org ----------------------------------------------------------------------------


def test_org_b_never_sees_or_touches_org_a_users_and_groups(server, org, scim):
    uid = new_user(scim, userName="secret@example.com")["id"]
    gid = new_group(scim, "A-team", [uid])["id"]
    other = create_org(unique("s"), f"{unique('h')}.test")
    b = Scim(server, other, scim_token(other))
    assert b.get("/Users").json()["totalResults"] == 0
    assert (
        b.get("/Users", params={"filter": 'userName eq "secret@example.com"'}).json()[
            "totalResults"
        ]
        == 0
    )
    assert_scim_error(b.get(f"/Users/{uid}"), 404)
    assert_scim_error(
        b.patch(
            f"/Users/{uid}", json=patch_body({"op": "replace", "path": "active", "value": False})
        ),
        404,
    )
    assert_scim_error(b.delete(f"/Users/{uid}"), 404)
    assert_scim_error(b.get(f"/Groups/{gid}"), 404)
    assert_scim_error(
        b.post("/Groups", json={"displayName": "steal", "members": [{"value": uid}]}), 400
    )
    assert db_user(org, uid).is_active
    assert in_tenant(other, ScimGroup.objects.count) == 0


# --- rate limits ------------------------------------------------------------------------------


def test_scim_spends_its_own_budget_not_the_per_ip_one(org, tmp_path):
    token = scim_token(org)
    with server_with_env(tmp_path / "rl.log", RATE_LIMITS="http.ip=5/60,scim.token=12/60") as live:
        live: LiveServer
        scim = Scim(live, org, token)
        statuses = [scim.get("/Users?count=0").status_code for _ in range(12)]
        assert statuses == [200] * 12  # more than http.ip allows one address
        refused = scim.get("/Users")
        body = assert_scim_error(refused, 429)
        assert int(refused.headers["retry-after"]) >= 1 and "retry" in body["detail"].lower()
        # Without a valid token, SCIM spends the per-IP budget like any other request.
        guesser = Scim(live, org, "sph_s_" + "g" * 43)
        guesses = [guesser.get("/Users").status_code for _ in range(6)]
        assert guesses[:5] == [401] * 5 and guesses[5] == 429


# --- manage.py scim_token ---------------------------------------------------------------------


def test_the_scim_token_command_prints_a_new_token_once_and_revokes_the_old_one(server, org):
    import subprocess
    import sys

    from tests.fixtures import ROOT, child_env

    def manage(*args):
        return subprocess.run(
            [sys.executable, "manage.py", "scim_token", *args],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    first = manage("--org", org.slug, "--label", "entra")
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert token.startswith("sph_s_") and "\n" not in token and "revoked" in first.stderr
    assert Scim(server, org, token).get("/Users").status_code == 200
    second = manage("--org", org.slug)
    new = second.stdout.strip()
    assert_scim_error(Scim(server, org, token).get("/Users"), 401)
    assert Scim(server, org, new).get("/Users").status_code == 200
    [first_entry, second_entry] = events(org, "scim.token_rotated")
    assert first_entry.actor_label == "command:scim_token" and first_entry.data["label"] == "entra"
    assert second_entry.data["revoked"] == 1
    revoke = manage("--org", org.slug, "--revoke")
    assert revoke.returncode == 0 and revoke.stdout == ""
    assert_scim_error(Scim(server, org, new).get("/Users"), 401)
    unknown = manage("--org", "no-such-org")
    assert unknown.returncode != 0 and "no-such-org" in unknown.stderr
    helptext = manage("--help")
    assert "--org" in helptext.stdout and "print it once" in " ".join(helptext.stdout.split())


# --- recorded Okta and Entra conversations ---------------------------------------------------

RECORDINGS = __import__("pathlib").Path(__file__).parent / "scim_recordings"
_ABSENT = object()


def _at(doc, dotted: str):
    """The value at a dotted path; keys may contain dots (an extension URN's "2.0")."""
    if dotted == "":
        return doc
    if isinstance(doc, list):
        head, _, rest = dotted.partition(".")
        index = int(head)
        return _at(doc[index], rest) if index < len(doc) else _ABSENT
    if isinstance(doc, dict):
        for key in sorted(doc, key=len, reverse=True):
            if dotted == key or dotted.startswith(key + "."):
                return _at(doc[key], dotted[len(key) + 1 :])
    return _ABSENT


def _fill(value, saved: dict):
    text = json.dumps(value)
    for name, saved_value in saved.items():
        text = text.replace("${" + name + "}", saved_value)
    return json.loads(text)


@pytest.mark.parametrize("recording", ["okta.json", "entra.json"])
def test_recorded_idp_conversations_replay_green(scim, org, recording):
    steps = json.loads((RECORDINGS / recording).read_text())["steps"]
    saved: dict[str, str] = {}
    for step in steps:
        step = _fill(step, saved)
        response = scim.request(step["method"], step["path"], json=step.get("body"))
        where = f"{recording}: {step['name']}"
        assert response.status_code == step["status"], f"{where}: {response.text}"
        body = response.json() if response.content else {}
        for dotted, wanted in step.get("expect", {}).items():
            got = _at(body, dotted)
            if wanted is None:
                assert got is _ABSENT, f"{where}: {dotted} should be absent, is {got!r}"
            else:
                assert got == wanted, f"{where}: {dotted} is {got!r}, not {wanted!r}"
        for name, dotted in step.get("save", {}).items():
            saved[name] = _at(body, dotted)
    # Every change the IdP made is in the org's audit log, the IdP as the actor.
    scim_events = in_tenant(
        org, lambda: list(AuditEntry.objects.filter(event__startswith="scim.user_"))
    )
    assert scim_events and {e.actor_label for e in scim_events} == {"scim:okta"}


# --- read as an attacker ----------------------------------------------------------------------


def test_hostile_input_is_a_clear_4xx_never_a_500(scim):
    uid = new_user(scim)["id"]
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_scim_error(scim.post("/Users", content=deep), 400, "invalidSyntax")
    assert_scim_error(scim.post("/Users", content=b"\xff\xfe{}"), 400, "invalidSyntax")
    assert_scim_error(scim.post("/Users/.search", json={"filter": 12}), 400, "invalidFilter")
    assert_scim_error(scim.post("/Users/.search", json={"attributes": 5}), 400)
    assert_scim_error(scim.post("/Users/.search", json={"count": [1]}), 400, "invalidValue")
    far = scim.get("/Users", params={"startIndex": str(10**30), "count": "5"})
    assert far.status_code == 200 and far.json()["Resources"] == []
    assert_scim_error(scim.get("/Users", params={"count": "9" * 5000}), 400)
    nested = "(" * 50 + 'userName eq "x"' + ")" * 50
    assert_scim_error(scim.get("/Users", params={"filter": nested}), 400, "invalidFilter")
    assert_scim_error(scim.get("/Users", params={"filter": "x" * 3000}), 400)
    assert_scim_error(scim.get("/Users", params={"attributes": "urn:evil:thing"}), 400)
    many = patch_body(*[{"op": "replace", "path": "title", "value": "t"}] * 1001)
    assert_scim_error(scim.patch(f"/Users/{uid}", json=many), 400)
    emails = [{"value": f"{i}@example.com"} for i in range(51)]
    assert_scim_error(scim.put(f"/Users/{uid}", json={"userName": "z", "emails": emails}), 400)
    for method in ("PUT", "PATCH"):
        response = scim.request(method, f"/Users/{uid}", content=b"null")
        assert_scim_error(response, 400, "invalidSyntax")


def test_parallel_membership_patches_of_one_group_all_stick(scim):
    from concurrent.futures import ThreadPoolExecutor

    ids = [new_user(scim)["id"] for _ in range(12)]
    gid = new_group(scim)["id"]

    def add(uid):
        body = patch_body({"op": "add", "path": "members", "value": [{"value": uid}]})
        return scim.patch(f"/Groups/{gid}", json=body).status_code

    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(add, ids)) == {200}
    members = {m["value"] for m in scim.get(f"/Groups/{gid}").json()["members"]}
    assert members == set(ids)


def test_a_put_without_active_leaves_a_deactivated_user_deactivated(scim, org):
    created = new_user(scim)
    scim.patch(
        f"/Users/{created['id']}",
        json=patch_body({"op": "replace", "path": "active", "value": False}),
    )
    body = {"schemas": [USER], "userName": created["userName"], "title": "Gone"}
    replaced = scim.put(f"/Users/{created['id']}", json=body)
    assert replaced.status_code == 200 and replaced.json()["active"] is False
    assert not db_user(org, created["id"]).is_active


def test_concurrent_creates_of_one_person_make_one_user(scim, org):
    from concurrent.futures import ThreadPoolExecutor

    body = {"schemas": [USER], "userName": "racer@example.com", "externalId": "ext-racer"}
    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(lambda _: scim.post("/Users", json=body).status_code, range(6)))
    assert statuses == [201] + [409] * 5
    assert in_tenant(org, User.objects.filter(username="racer@example.com").count) == 1
    assert len(events(org, "scim.user_provisioned", data__username="racer@example.com")) == 1


def test_and_binds_tighter_than_or_in_filters(scim):
    a = new_user(scim, userName="prec-a@example.com", title="x")
    b = new_user(scim, userName="prec-b@example.com", title="y")
    text = 'userName eq "prec-a@example.com" or userName eq "prec-b@example.com" and title eq "x"'
    found = scim.get("/Users", params={"filter": text}).json()
    assert [r["id"] for r in found["Resources"]] == [a["id"]]  # b fails its `and`
    grouped = (
        '(userName eq "prec-a@example.com" or userName eq "prec-b@example.com") and title eq "y"'
    )
    found = scim.get("/Users", params={"filter": grouped}).json()
    assert [r["id"] for r in found["Resources"]] == [b["id"]]


def test_filters_mixing_sql_and_other_attributes(scim):
    a = new_user(scim, userName="mix-a@example.com", title="Pilot")
    b = new_user(scim, userName="mix-b@example.com", title="Pilot")
    new_user(scim, userName="other-c@example.com", title="Pilot")
    narrowed = scim.get("/Users", params={"filter": 'userName sw "mix-" and title eq "pilot"'})
    assert {r["id"] for r in narrowed.json()["Resources"]} == {a["id"], b["id"]}
    everyone = scim.get(
        "/Users", params={"filter": 'userName pr or userName eq "mix-a@example.com"'}
    )
    assert everyone.json()["totalResults"] == 3
    either = scim.get(
        "/Users", params={"filter": 'userName eq "mix-a@example.com" or title eq "nobody"'}
    ).json()
    assert [r["id"] for r in either["Resources"]] == [a["id"]]
