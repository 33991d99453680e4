"""The permission matrix: every role × every protected API endpoint, portal view and
WebSocket frame is allowed or refused exactly as the role's codes say.

Nothing here lists endpoints or codes by hand: the endpoints come from the declarations
(orgs.perm_registry), the roles from orgs.roles.BUILTIN_ROLES plus custom roles that
cover what no built-in role lacks (no codes at all; portal access only).
"""

from __future__ import annotations

import re
import time
import uuid

import httpx
import pytest

from orgs import perm_registry
from orgs.perm_registry import AUTHENTICATED, PUBLIC, SCIM_TOKEN, UNDECLARED
from orgs.roles import BUILTIN_ROLES, Perm, role_codes
from orgs.services import audit
from orgs.services import roles as role_service
from siphera.tenancy import in_tenant
from tests.fixtures import create_org, host_of, make_user
from tests.ws import authed_socket, recv, send

CUSTOM_ROLES = {
    "nothing": [],  # holds no code at all: refused everywhere a code is needed
    "portal_only": [str(Perm.PORTAL_ACCESS)],
    "auditor": [str(Perm.PORTAL_ACCESS), str(Perm.AUDIT_VIEW)],
}
ROLES = [*BUILTIN_ROLES, *CUSTOM_ROLES]
# Portal pages anyone may open: signing in, out, and accepting an invitation.
PUBLIC_PORTAL = {
    "login",
    "login-otp",
    "login-enroll",
    "logout",
    "invitation",
    "password-forgot",  # asks for a reset mail; answers the same whoever is named
    "password-reset",  # the mailed single-use link is the proof
}
CSRF = "m" * 32


@pytest.fixture(scope="module")
def org_m():
    org = create_org("matrix", "matrix.test")
    for slug, codes in CUSTOM_ROLES.items():
        in_tenant(
            org,
            role_service.check_create_role,
            slug=slug,
            name=slug.title(),
            codes=codes,
            actor=audit.Actor.system("tests"),
        )
    return org


@pytest.fixture(scope="module")
def sessions_by_role(org_m, server):
    """One user with a registered device per role (module-wide: registration is slow)."""
    from tests.fixtures import Api, register_device

    api = Api(server, host_of(org_m))
    out = {}
    for role in ROLES:
        user = make_user(org_m, role=role)
        device_id, token, _ = register_device(api, user.username)
        out[role] = (user, device_id, token)
    return out


def _path(route: str) -> str:
    """A concrete path for a route: ids that exist nowhere (a refused call must be
    refused before the id is looked at; an allowed one answers 404 or 400)."""

    def sample(match: re.Match) -> str:
        return "999999" if match.group(1) == "int" else str(uuid.uuid4())

    return "/" + re.sub(r"<(?:(\w+):)?\w+>", sample, route)


def _codes(role: str, org) -> frozenset[Perm]:
    return in_tenant(org, role_codes, role)


def _portal_cookie(org, user) -> str:
    """A portal session for `user` made directly in the org's session store: roles
    without portal access cannot sign in, yet their sessions must be refused too."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    from admin_portal.sessions import AUTH_AT
    from orgs.accounts.models import User

    def make() -> str:
        fresh = User.objects.get(pk=user.pk)
        store = SessionStore()
        store[SESSION_KEY] = str(fresh.pk)
        store[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
        store[HASH_SESSION_KEY] = fresh.get_session_auth_hash()
        store[AUTH_AT] = int(time.time())
        store.create()
        return store.session_key

    return in_tenant(org, make)


def _is_server_error(response: httpx.Response) -> bool:
    return response.status_code >= 500


def test_the_registry_finds_every_kind_of_declaration():
    api = perm_registry.api_endpoints()
    portal = perm_registry.portal_views()
    frames = perm_registry.frames()
    assert {e.requires for e in api} >= {Perm.USERS_MANAGE, Perm.MESSAGING_USE, PUBLIC}
    assert {e.requires for e in api} >= {AUTHENTICATED}
    assert any(e.name == "user-deactivate" and e.requires == Perm.USERS_MANAGE for e in portal)
    assert {e.route for e in frames} >= {"ack", "send", "typing", "receipt", "ping"}


def test_every_url_pattern_declares_who_may_use_it():
    # Every route of an org host is an API view or a portal view, each with an explicit
    # declaration; the only other route is "/" (a redirect to the portal).
    api = perm_registry.api_endpoints()
    portal = perm_registry.portal_views()
    scim = perm_registry.scim_endpoints()
    covered = {e.route for e in [*api, *portal, *scim]} | {""}
    assert set(perm_registry.all_routes()) == covered
    everything = [*api, *portal, *scim]
    undeclared = [(e.method, e.route) for e in everything if e.requires == UNDECLARED]
    assert undeclared == []
    # SCIM answers an IdP's token only (test_scim.py: a device token or none is a 401).
    assert scim and {e.requires for e in scim} == {SCIM_TOKEN}


def test_every_frame_handler_declares_its_permission():
    assert [e.name for e in perm_registry.frames() if e.requires == UNDECLARED] == []


def test_only_sign_in_pages_of_the_portal_are_public():
    views = perm_registry.portal_views()
    public = {e.name for e in views if e.requires == PUBLIC and e.route.startswith("portal/")}
    assert public == PUBLIC_PORTAL
    # Everything under /sso/ is a sign-in step the IdP or a signed-out browser reaches
    # (each checks its own proof: a signed response, a state, a signed-in owner for tests).
    assert [e.route for e in views if e.route.startswith("sso/") and e.requires != PUBLIC] == []


def test_every_api_view_states_who_may_call_it():
    # Public API endpoints are login, device registration (grant), forgot-password (the
    # mailed single-use token is the proof), the API docs and LiveKit's webhook (signed
    # with the LiveKit API key, checked by the view).
    public = {(e.method, e.route) for e in perm_registry.api_endpoints() if e.requires == PUBLIC}
    assert public == {
        ("POST", "api/v1/auth/login"),
        ("POST", "api/v1/auth/password-reset"),
        ("POST", "api/v1/auth/password-reset/confirm"),
        ("GET", "api/v1/auth/sso"),
        ("POST", "api/v1/auth/sso/token"),
        ("POST", "api/v1/devices"),
        ("POST", "api/v1/calls/livekit/webhook"),
        ("GET", "api/v1/schema/"),
        ("GET", "api/v1/docs/"),
        ("GET", "api/v1/redoc/"),
    }
    # Authenticated-only (no code) is kept to the caller's own account.
    own = {
        (e.method, e.route) for e in perm_registry.api_endpoints() if e.requires == AUTHENTICATED
    }
    assert own == {
        ("GET", "api/v1/me"),
        ("PATCH", "api/v1/me"),
        ("POST", "api/v1/me/password"),
        ("PUT", "api/v1/me/avatar"),
        ("DELETE", "api/v1/me/avatar"),
        ("GET", "api/v1/me/presence"),
        ("PUT", "api/v1/me/presence"),
        ("GET", "api/v1/devices"),
        ("DELETE", "api/v1/devices/<int:device_id>"),
        ("GET", "api/v1/mfa"),
        ("DELETE", "api/v1/mfa/totp"),
        ("POST", "api/v1/mfa/totp/enroll"),
        ("POST", "api/v1/mfa/totp/confirm"),
        ("POST", "api/v1/mfa/recovery-codes"),
    }


def _request_for(user):
    from rest_framework.test import APIRequestFactory, force_authenticate

    def make(method: str):
        request = getattr(APIRequestFactory(), method.lower())("/x", {}, format="json")
        force_authenticate(request, user=user)
        return request

    return make


def test_a_view_declaring_nothing_is_refused_at_run_time(org_m):
    # Given an API view with no permission declaration (the settings' default applies)
    from rest_framework.response import Response
    from rest_framework.views import APIView

    class Forgotten(APIView):
        def get(self, request):
            return Response({"leaked": True})

    owner = make_user(org_m, role="owner")
    # When even an owner calls it, then it is refused: undeclared fails closed
    response = in_tenant(org_m, lambda: Forgotten.as_view()(_request_for(owner)("GET")))
    assert response.status_code == 403
    assert response.data["error"]["code"] == "permission_undeclared"


def test_a_method_missing_from_require_by_method_is_refused(org_m):
    # Given a view declaring GET only, but implementing DELETE as well
    from rest_framework.response import Response
    from rest_framework.views import APIView

    from orgs.api.permissions import require_by_method

    class HalfDeclared(APIView):
        permission_classes = [require_by_method(GET=Perm.USERS_VIEW)]

        def get(self, request):
            return Response({})

        def delete(self, request):
            return Response({"deleted": True})

    owner = make_user(org_m, role="owner")
    make = _request_for(owner)
    view = HalfDeclared.as_view()
    assert in_tenant(org_m, lambda: view(make("GET"))).status_code == 200
    refused = in_tenant(org_m, lambda: view(make("DELETE")))
    assert refused.status_code == 403
    assert refused.data["error"]["code"] == "permission_undeclared"
    # A method the view does not implement stays a 405, not a refusal.
    assert in_tenant(org_m, lambda: view(make("PUT"))).status_code == 405
    # And the registry lists the DELETE as undeclared, which the test above refuses.
    assert perm_registry.view_requirement(HalfDeclared, "GET")[0] == Perm.USERS_VIEW
    assert perm_registry.view_requirement(HalfDeclared, "DELETE")[0] == UNDECLARED


def test_every_non_public_api_endpoint_refuses_an_unauthenticated_call(org_m, server):
    wrong = []
    with httpx.Client(base_url=server.url, headers={"Host": host_of(org_m)}, timeout=30) as http:
        for endpoint in perm_registry.api_endpoints():
            if endpoint.requires == PUBLIC:
                continue
            body = {} if endpoint.method in ("POST", "PUT", "PATCH") else None
            response = http.request(endpoint.method, _path(endpoint.route), json=body)
            if response.status_code != 401:
                wrong.append((endpoint.method, endpoint.route, response.status_code))
    assert wrong == []


@pytest.mark.parametrize("role", ROLES)
def test_api_endpoints_allow_or_refuse_each_role_as_its_codes_say(
    role, org_m, sessions_by_role, server
):
    # Allowed means neither refused (403 naming the code) nor a server error: whatever
    # else the call answers (200, 400 for the empty body, 404 for the made-up id) shows
    # the permission check let it through. Own-account calls (no code) are tried too.
    _, _, token = sessions_by_role[role]
    codes = _codes(role, org_m)
    headers = {"Host": host_of(org_m), "Authorization": f"Bearer {token}"}
    wrong = []
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        for endpoint in perm_registry.api_endpoints():
            if endpoint.requires == PUBLIC:
                continue
            body = {} if endpoint.method in ("POST", "PUT", "PATCH") else None
            response = http.request(endpoint.method, _path(endpoint.route), json=body)
            assert response.status_code != 401, (endpoint, response.text)
            refused = response.status_code == 403
            refused_for = refused and response.json().get("permission")
            should_refuse = not endpoint.allows(codes)
            if _is_server_error(response):
                wrong.append((endpoint.method, endpoint.route, response.status_code))
            elif should_refuse and refused_for != endpoint.requires:
                wrong.append((endpoint.method, endpoint.route, response.status_code, "allowed"))
            elif not should_refuse and refused_for:
                wrong.append((endpoint.method, endpoint.route, response.status_code, "refused"))
    assert wrong == [], f"{role}: {wrong}"


@pytest.mark.parametrize("role", ROLES)
def test_operator_routes_refuse_every_role_on_every_host(role, org_m, sessions_by_role, server):
    # An operator route (/metrics) opens to the deployment's METRICS_TOKEN or networks
    # only: no org role's device token opens it, on the org's host or on the bare address.
    _, _, token = sessions_by_role[role]
    assert not any(e.allows(_codes(role, org_m)) for e in perm_registry.operator_routes())
    wrong = []
    for endpoint in perm_registry.operator_routes():
        for host in (host_of(org_m), f"127.0.0.1:{server.port}"):
            response = httpx.request(
                endpoint.method,
                f"{server.url}/{endpoint.route}",
                headers={"Host": host, "Authorization": f"Bearer {token}"},
                timeout=30,
            )
            if response.status_code != 404:
                wrong.append((endpoint.route, host, response.status_code))
    assert wrong == [], f"{role}: {wrong}"


@pytest.mark.parametrize("role", ROLES)
def test_portal_views_allow_or_refuse_each_role_as_its_codes_say(
    role, org_m, sessions_by_role, server
):
    # Each page is tried with GET and with POST (an empty form); a method the page does
    # not accept answers 405 and is skipped, but every page accepts one of them.
    user, _, _ = sessions_by_role[role]
    codes = _codes(role, org_m)
    cookies = {"sessionid": _portal_cookie(org_m, user), "csrftoken": CSRF}
    headers = {"Host": host_of(org_m), "X-CSRFToken": CSRF}
    wrong = []
    with httpx.Client(
        base_url=server.url, headers=headers, cookies=cookies, timeout=30, follow_redirects=False
    ) as http:
        for view in perm_registry.portal_views():
            if view.requires == PUBLIC:
                continue
            path = _path(view.route)
            should_refuse = Perm.PORTAL_ACCESS not in codes or view.requires not in codes
            tried = 0
            for method in ("GET", "POST"):
                response = http.request(method, path, data={} if method == "POST" else None)
                if response.status_code == 405:
                    continue
                tried += 1
                location = response.headers.get("location", "")
                assert "/portal/login" not in location, f"{role} {path}: session not accepted"
                refused = response.status_code == 403 and "does not include access" in response.text
                if _is_server_error(response) or refused != should_refuse:
                    wrong.append((method, view.route, response.status_code))
            assert tried, f"{view.route} answers neither GET nor POST"
    assert wrong == [], f"{role}: {wrong}"


@pytest.mark.parametrize("role", ROLES)
async def test_frames_allow_or_refuse_each_role_as_its_codes_say(
    role, org_m, sessions_by_role, server
):
    from tests.fixtures import Session

    user, device_id, token = sessions_by_role[role]
    codes = _codes(role, org_m)
    session = Session(org=org_m, user=user, device_id=device_id, token=token, keys=None, api=None)
    ws = await authed_socket(server, session)
    wrong = []
    try:
        for frame in perm_registry.frames():
            if frame.route == "auth":
                continue
            ref = f"m-{frame.route}"
            await send(ws, {"type": frame.route, "ref": ref})
            while True:
                reply = await recv(ws, timeout=10)
                if reply.get("ref") == ref:
                    break
            refused = reply["type"] == "error" and reply["code"] == "forbidden"
            should_refuse = not frame.allows(codes)
            if refused != should_refuse:
                wrong.append((frame.route, reply))
            elif refused:
                assert reply["permission"] == frame.requires
    finally:
        await ws.close()
    assert wrong == [], f"{role}: {wrong}"


@pytest.mark.parametrize("role", ROLES)
async def test_pushed_mention_frames_reach_only_roles_that_may_read_messages(
    role, org_m, sessions_by_role, server
):
    # Server-pushed frames follow the codes too: a `mention` (messaging.services.unread)
    # reaches a socket only if its role holds messaging.use, as its messages do.
    from tests.fixtures import Api, Session, register_device

    user, device_id, token = sessions_by_role[role]
    codes = _codes(role, org_m)
    sender = make_user(org_m, role="owner")
    api = Api(server, host_of(org_m))
    _, sender_token, _ = register_device(api, sender.username)
    api = api.as_device(sender_token)
    conversation = api.post(
        "/api/v1/conversations", json={"kind": "group", "members": [str(user.pk)]}
    ).json()["id"]
    session = Session(org=org_m, user=user, device_id=device_id, token=token, keys=None, api=None)
    ws = await authed_socket(server, session)
    try:
        sent = api.post(
            f"/api/v1/conversations/{conversation}/messages",
            json={"client_id": str(uuid.uuid4()), "body": "eA==", "mentions": [str(user.pk)]},
        )
        assert sent.status_code == 201, sent.text
        await send(ws, {"type": "ping", "ref": "after-mention"})
        seen: list[dict] = []
        expect_mention = Perm.MESSAGING_USE in codes
        while not (
            any(f.get("ref") == "after-mention" for f in seen)
            and (not expect_mention or any(f["type"] == "mention" for f in seen))
        ):
            seen.append(await recv(ws, timeout=10))
        mentions = [f for f in seen if f["type"] == "mention"]
        if expect_mention:
            assert [f["message"] for f in mentions] == [sent.json()["id"]]
        else:
            assert mentions == [], f"{role} got a mention frame"
    finally:
        await ws.close()
