"""Registry of everything protected by a permission code, read from the declarations
themselves: DRF views' permission classes (orgs.api.permissions), portal views'
`portal_perm` / `portal_public` (admin_portal.decorators), the WebSocket frames of the
socket registry (siphera.sockets) and the operator's routes (siphera.metrics). Nothing is
listed by hand, so a new endpoint, page or frame joins the permission matrix test
(orgs/tests/test_permission_matrix.py) by being declared.

Fail closed: something that declares nothing is listed as UNDECLARED (and refused at run
time); the matrix test fails while any route is UNDECLARED.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.permissions import AllowAny

from orgs.api.permissions import (
    AUTHENTICATED,
    OPERATOR,
    PUBLIC,
    SCIM_TOKEN,
    UNDECLARED,
    PermRequirement,
)
from orgs.roles import Perm

_HTTP_METHODS = ("get", "post", "put", "patch", "delete")
TENANT_URLCONF = "siphera.urls_tenants"


@dataclass(frozen=True)
class Endpoint:
    route: str  # e.g. "api/v1/users/<str:user_id>/role"
    method: str  # GET, POST, ... ("" where the method is not known: portal, frames)
    requires: Perm | str  # a code, AUTHENTICATED, PUBLIC or UNDECLARED
    name: str
    # Codes of which any one suffices (`require_any`); `requires` is the first of them.
    any_of: tuple[Perm, ...] = ()

    def allows(self, codes) -> bool:
        """Whether a user holding `codes` passes this endpoint's permission check."""
        if self.requires in (PUBLIC, AUTHENTICATED):
            return True
        if self.requires == UNDECLARED:
            return False
        return any(code in codes for code in (self.any_of or (self.requires,)))


def _walk(patterns, prefix: str = ""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


def all_routes() -> list[str]:
    """Every route of the org hosts' URL conf (the public conf serves nothing)."""
    return [route for route, _ in _walk(get_resolver(TENANT_URLCONF).url_patterns)]


class _FakeRequest:
    def __init__(self, method: str):
        self.method = method


def view_requirement(cls, method: str) -> tuple[Perm | str, tuple[Perm, ...]]:
    """What DRF view class `cls` requires for `method`, read from its permission
    instances: (requires, any_of). AllowAny -> PUBLIC; our PermRequirement classes ->
    their declaration; anything else (DRF's IsAuthenticated alone, the Undeclared
    default) -> UNDECLARED: fail closed."""
    view = cls()
    view.request = _FakeRequest(method.upper())
    view.kwargs = {}
    view.args = ()
    permissions = view.get_permissions()
    if any(isinstance(p, AllowAny) for p in permissions):
        return PUBLIC, ()
    declared = [p for p in permissions if isinstance(p, PermRequirement)]
    if not declared:
        return UNDECLARED, ()
    needed = [type(p).requirements_for(method) for p in declared]
    if any(not alternatives for alternatives in needed):
        return UNDECLARED, ()
    first = needed[0]
    codes = tuple(c for c in first if isinstance(c, Perm))
    return first[0], codes if len(codes) > 1 else ()


def api_endpoints() -> list[Endpoint]:
    """Every method of every view under /api/v1/ with what it requires. A route there
    that is not a DRF view is listed once as UNDECLARED (method "*")."""
    out = []
    for route, pattern in _walk(get_resolver(TENANT_URLCONF).url_patterns):
        if not route.startswith("api/v1/"):
            continue
        cls = getattr(pattern.callback, "cls", None)
        if cls is None or not hasattr(cls, "get_permissions"):
            out.append(Endpoint(route, "*", UNDECLARED, pattern.name or ""))
            continue
        for method in _HTTP_METHODS:
            if not hasattr(cls, method):
                continue
            requires, any_of = view_requirement(cls, method.upper())
            out.append(
                Endpoint(route, method.upper(), requires, pattern.name or cls.__name__, any_of)
            )
    return out


def portal_views() -> list[Endpoint]:
    """Every portal page or action (and every single sign-on endpoint under /sso/, which
    are portal sign-in pages) with the code it requires (its most specific one;
    every portal view also needs portal.access), PUBLIC for `portal_public` pages, and
    UNDECLARED for a view wrapped by neither decorator. Methods are found by the tests."""
    out = []
    for route, pattern in _walk(get_resolver(TENANT_URLCONF).url_patterns):
        if not route.startswith(("portal/", "sso/")):
            continue
        needed = getattr(pattern.callback, "required_perms", None)
        if needed is None:
            requires: Perm | str = UNDECLARED
        elif not needed:
            requires = PUBLIC
        else:
            requires = needed[-1]  # (portal.access, *codes): the last is the specific one
        out.append(Endpoint(route, "", requires, pattern.name or ""))
    return out


def scim_endpoints() -> list[Endpoint]:
    """Every route under /scim/v2/ with the credential it needs: the org's SCIM token
    (SCIM_TOKEN, declared by orgs.scim.views.endpoint), UNDECLARED otherwise."""
    return [
        Endpoint(
            route,
            "",
            SCIM_TOKEN
            if getattr(pattern.callback, "required_credential", None) == SCIM_TOKEN
            else UNDECLARED,
            pattern.name or "",
        )
        for route, pattern in _walk(get_resolver(TENANT_URLCONF).url_patterns)
        if route.startswith("scim/v2/")
    ]


def operator_routes() -> list[Endpoint]:
    """Routes of the host no org answers, for the deployment's operator and no org's user:
    /metrics (siphera.metrics.asgi), served to METRICS_TOKEN or METRICS_ALLOWED_NETWORKS
    and a 404 to anyone else, on an org's host included."""
    from siphera.metrics.asgi import PATH

    return [Endpoint(PATH.lstrip("/"), "GET", OPERATOR, "metrics")]


def frames() -> list[Endpoint]:
    """Every client frame type of the WebSocket with the code it requires, read from the
    socket's registry (siphera.sockets), which every app fills with its frames."""
    from siphera import sockets

    return [
        Endpoint(spec.type, "", spec.perm or AUTHENTICATED, f"{spec.app}:{spec.type}")
        for spec in sockets.frames().values()
    ]
