"""Registry of everything protected by a permission code, read from the declarations
themselves: DRF views' permission classes (orgs.api.permissions), portal views'
`portal_perm` (admin_portal.decorators) and WebSocket frame handlers' `frame_perm`
(orgs.roles). Nothing is listed by hand, so a new endpoint, page or frame joins the
permission matrix test (orgs/tests/test_permission_matrix.py) by being declared.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from django.urls import URLPattern, URLResolver, get_resolver
from rest_framework.permissions import AllowAny

from orgs.api.permissions import PermRequirement
from orgs.roles import Perm

PUBLIC = "public"  # no authentication at all
AUTHENTICATED = "authenticated"  # any signed-in user / device, no code

_HTTP_METHODS = ("get", "post", "put", "patch", "delete")


@dataclass(frozen=True)
class Endpoint:
    route: str  # e.g. "api/v1/users/<str:user_id>/role"
    method: str  # GET, POST, ...
    requires: Perm | str  # a code, AUTHENTICATED or PUBLIC
    name: str


def _walk(patterns, prefix: str = ""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, prefix + str(entry.pattern))
        elif isinstance(entry, URLPattern):
            yield prefix + str(entry.pattern), entry


class _FakeRequest:
    def __init__(self, method: str):
        self.method = method


def api_endpoints() -> list[Endpoint]:
    """Every method of every DRF view under /api/v1/ with what it requires."""
    out = []
    for route, pattern in _walk(get_resolver("siphera.urls_tenants").url_patterns):
        cls = getattr(pattern.callback, "cls", None)
        if not route.startswith("api/v1/") or cls is None or not hasattr(cls, "permission_classes"):
            continue
        for method in _HTTP_METHODS:
            if not hasattr(cls, method):
                continue
            view = cls()
            view.request = _FakeRequest(method.upper())
            view.kwargs = {}
            view.args = ()
            permissions = view.get_permissions()
            if any(isinstance(p, AllowAny) for p in permissions):
                requires: Perm | str = PUBLIC
            else:
                codes = [
                    p.perm_for(method.upper())
                    for p in permissions
                    if isinstance(p, PermRequirement) and p.perm_for(method.upper())
                ]
                requires = codes[0] if codes else AUTHENTICATED
            out.append(Endpoint(route, method.upper(), requires, pattern.name or cls.__name__))
    return out


def portal_views() -> list[Endpoint]:
    """Every portal page or action with the code it requires (its most specific one;
    every portal view also needs portal.access). Methods are found by the tests."""
    out = []
    for route, pattern in _walk(get_resolver("siphera.urls_tenants").url_patterns):
        if not route.startswith("portal/"):
            continue
        needed = getattr(pattern.callback, "required_perms", None)
        if needed is None:
            requires: Perm | str = PUBLIC
        else:
            requires = needed[-1]  # (portal.access, *codes): the last is the specific one
        out.append(Endpoint(route, "", requires, pattern.name or ""))
    return out


def frames() -> list[Endpoint]:
    """Every client frame type of the WebSocket with the code it requires; a handler
    without a declaration is listed as requiring None (the test refuses that)."""
    from orgs.consumers import ClientConsumer

    out = []
    for name, handler in inspect.getmembers(ClientConsumer, inspect.iscoroutinefunction):
        if not name.startswith("frame_"):
            continue
        frame_type = name[len("frame_") :].replace("_", ".")
        requires = getattr(handler, "required_perm", None)
        declared = hasattr(handler, "required_perm")
        out.append(
            Endpoint(
                frame_type, "", (requires or AUTHENTICATED) if declared else "undeclared", name
            )
        )
    return out
