"""Every list endpoint has a maximum page size (issue 15 item 9).

The list endpoints are found, not listed by hand: every GET route of the org URL conf
(orgs.perm_registry) whose OpenAPI answer is a list, or an object holding one. Each either
takes a bounded `limit` (siphera.params.page_limit) or is in BOUNDED_BY_CONSTRUCTION with
the reason its list cannot grow without bound.
"""

from __future__ import annotations

import re

import pytest
from drf_spectacular.generators import SchemaGenerator

from orgs.perm_registry import api_endpoints
from tests.fixtures import Api, DeviceKeys, host_of, login_grant, make_user, server_with_env

BOUNDED_BY_CONSTRUCTION = {
    "/api/v1/permissions": "one entry per permission code of the enum",
    "/api/v1/roles": "the built-in roles and at most MAX_CUSTOM_ROLES (100) custom ones",
    "/api/v1/devices": "the caller's live devices: at most DEVICES_MAX_PER_USER",
    "/api/v1/calls/rooms/{call_id}/participants": "the devices in one call's room",
}

SCHEMA_ITSELF = {"/api/v1/schema/", "/api/v1/docs/", "/api/v1/redoc/"}


def _path(route: str) -> str:
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def _lists(response_schema: dict, components: dict) -> bool:
    if "$ref" in response_schema:
        response_schema = components[response_schema["$ref"].rsplit("/", 1)[-1]]
    if response_schema.get("type") == "array":
        return True
    # A page object: a list and the cursor of the next page (the audit log's shape).
    properties = response_schema.get("properties", {})
    return any(p.get("type") == "array" for p in properties.values()) and any(
        name.startswith("next_") for name in properties
    )


def list_endpoints() -> dict[str, list[str]]:
    """path -> the names of its query parameters, for every GET answering a list."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    components = schema["components"]["schemas"]
    found = {}
    for endpoint in api_endpoints():
        if endpoint.method != "GET":
            continue
        path = _path(endpoint.route)
        if path not in schema["paths"]:
            assert path in SCHEMA_ITSELF  # every other GET route is in the schema
            continue
        operation = schema["paths"][path]["get"]
        ok = operation["responses"].get("200", {})
        body = ok.get("content", {}).get("application/json", {}).get("schema")
        # Pages not described by a serializer say so in their description.
        described = '": [' in ok.get("description", "")
        if (body and _lists(body, components)) or described:
            found[path] = [p["name"] for p in operation.get("parameters", [])]
    return found


def test_the_list_endpoints_are_found():
    found = list_endpoints()
    for path in (
        "/api/v1/conversations",
        "/api/v1/users",
        "/api/v1/compliance/holds",
        "/api/v1/audit",
        "/api/v1/calls",
        "/api/v1/org/calls",
        "/api/v1/messages",
    ):
        assert path in found
    assert set(BOUNDED_BY_CONSTRUCTION) <= set(found)


def test_every_list_endpoint_takes_a_limit_or_is_bounded_by_construction():
    unbounded = [
        path
        for path, params in list_endpoints().items()
        if "limit" not in params and path not in BOUNDED_BY_CONSTRUCTION
    ]
    assert not unbounded


@pytest.fixture
def owner(org_a, new_session):
    return new_session(org_a, role="owner")


@pytest.mark.parametrize(
    "path",
    ["/api/v1/conversations", "/api/v1/users", "/api/v1/compliance/holds", "/api/v1/audit"],
)
def test_a_limit_past_the_maximum_or_not_a_number_is_a_400(owner, path):
    for limit in ("0", "1001", "99999999999999999999", "²"):
        response = owner.api.get(path, params={"limit": limit})
        assert response.status_code == 400, (path, limit, response.text)


def test_conversations_come_a_page_at_a_time(org_a, owner, new_session):
    others = [new_session(org_a) for _ in range(3)]
    made = [
        owner.api.post(
            "/api/v1/conversations", json={"kind": "direct", "members": [str(o.user.pk)]}
        ).json()["id"]
        for o in others
    ]
    first = owner.api.get("/api/v1/conversations", params={"limit": 2}).json()
    rest = owner.api.get(
        "/api/v1/conversations", params={"limit": 2, "after": first[-1]["id"]}
    ).json()
    assert [c["id"] for c in first + rest] == made
    assert owner.api.get("/api/v1/conversations").json() == first + rest
    # A cursor that is not one of yours is a 404, like any conversation you cannot see.
    stranger = others[0].api.get("/api/v1/conversations", params={"after": made[1]})
    assert stranger.status_code == 404


def test_users_come_a_page_at_a_time(org_a, owner):
    first = owner.api.get("/api/v1/users", params={"limit": 2}).json()
    assert len(first) == 2
    after = owner.api.get(
        "/api/v1/users", params={"limit": 2, "after": first[-1]["username"]}
    ).json()
    assert after and after[0]["username"] > first[-1]["username"]


def test_legal_holds_come_a_page_at_a_time(org_a, owner):
    users = [make_user(org_a) for _ in range(3)]
    placed = [
        owner.api.post(
            "/api/v1/compliance/holds", json={"user_id": str(u.pk), "reason": "case 1"}
        ).json()["id"]
        for u in users
    ]
    first = owner.api.get("/api/v1/compliance/holds", params={"limit": 1}).json()
    assert len(first) == 1
    pages, after = [], None
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = owner.api.get("/api/v1/compliance/holds", params=params).json()
        if not page:
            break
        pages += [h["id"] for h in page]
        after = page[-1]["id"]
    assert pages[-3:] == placed


@pytest.fixture(scope="module")
def two_devices_server(_database, tmp_path_factory):
    log_path = tmp_path_factory.mktemp("devices") / "server.log"
    with server_with_env(log_path, DEVICES_MAX_PER_USER="2") as live:
        yield live


def test_a_user_registers_at_most_devices_max_per_user_live_devices(org_a, two_devices_server):
    user = make_user(org_a)
    api = Api(two_devices_server, host_of(org_a))

    def register():
        grant = login_grant(api, user.username)
        return api.post(
            "/api/v1/devices",
            json=DeviceKeys.generate().registration("phone"),
            headers={"Authorization": f"Grant {grant}"},
        )

    first, second = register(), register()
    assert first.status_code == 201 and second.status_code == 201
    refused = register()
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "too_many_devices"
    # Revoking one makes room again.
    device = api.as_device(first.json()["token"])
    assert device.delete(f"/api/v1/devices/{first.json()['device_id']}").status_code == 204
    assert register().status_code == 201


def test_an_org_holds_at_most_100_custom_roles(new_session):
    from orgs.accounts.models import Role
    from orgs.services.roles import MAX_CUSTOM_ROLES
    from siphera.tenancy import in_tenant
    from tests.fixtures import create_org, unique

    org = create_org(unique("roles"))
    owner = new_session(org, role="owner")
    in_tenant(
        org,
        lambda: Role.objects.bulk_create(
            [Role(slug=f"r{i}", name=f"R {i}", codes=[]) for i in range(MAX_CUSTOM_ROLES)]
        ),
    )
    refused = owner.api.post("/api/v1/roles", json={"slug": "one_more", "name": "x", "codes": []})
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "too_many_roles"
    assert len(owner.api.get("/api/v1/roles").json()) < MAX_CUSTOM_ROLES + 20
