"""DRF permission classes built from orgs.roles.Perm codes. Fail closed: a view or a
method that does not say who may call it is refused.

Every API view declares, in `permission_classes`, one of:

- `require(Perm.X)` — every method needs code X;
- `require_by_method(GET=Perm.X, POST=Perm.Y, DELETE=AUTHENTICATED)` — a code per method;
  a method the view implements but does not name is refused (403 `permission_undeclared`);
- `require_any(Perm.X, Perm.Y)` — any one of the codes (the view narrows what the caller
  sees by which code they hold, e.g. the user directory);
- `require(AUTHENTICATED)` — any signed-in user or device, no code: the caller's own
  account (`/me`, their devices, their MFA);
- `[Public]` (or `PUBLIC` for one method of `require_by_method`) — no authentication at
  all (login; device registration, which the service checks against a login grant).

A view declaring nothing gets the default class, `Undeclared`, which refuses every call.
All classes expose `perm_for(method)`, which the permission registry (orgs.perm_registry)
reads, so the permission matrix test enumerates exactly what the views enforce, and a test
fails for any view that declares nothing.
"""

from __future__ import annotations

from rest_framework.permissions import AllowAny, BasePermission

from orgs.roles import Perm, codes_for
from siphera.api_errors import ApiError

AUTHENTICATED = "authenticated"  # any signed-in user or device, no code
PUBLIC = "public"  # no authentication at all
UNDECLARED = "undeclared"  # the view or method says nothing: refused
# The org's SCIM bearer token (an IdP, not a user): orgs.scim.views.endpoint declares it.
SCIM_TOKEN = "scim_token"  # noqa: S105 (a requirement's name, not a secret)
# The deployment's operator (METRICS_TOKEN or METRICS_ALLOWED_NETWORKS), not an org's
# user: operator routes on the host no org answers (orgs.perm_registry.operator_routes).
OPERATOR = "operator"

Requirement = Perm | str  # a code, AUTHENTICATED or PUBLIC


def _refuse_undeclared(method: str) -> ApiError:
    return ApiError(
        403, "permission_undeclared", f"This endpoint declares no permission for {method}."
    )


class PermRequirement(BasePermission):
    """Base of the generated classes: an authenticated user whose role grants the code(s)
    for the request's method (AUTHENTICATED: no code); a method without a declaration is
    refused."""

    by_method: dict[str, tuple[Requirement, ...]] = {}
    default: tuple[Requirement, ...] = ()

    @classmethod
    def requirements_for(cls, method: str) -> tuple[Requirement, ...]:
        """What `method` needs: one or more alternatives (any one suffices), or () when
        undeclared."""
        method = method.upper()
        if method == "HEAD":  # DRF answers HEAD with the GET handler
            method = "GET"
        return cls.by_method.get(method, cls.default)

    @classmethod
    def perm_for(cls, method: str) -> Requirement:
        """The (first) code `method` needs, AUTHENTICATED, PUBLIC or UNDECLARED."""
        needed = cls.requirements_for(method)
        return needed[0] if needed else UNDECLARED

    def has_permission(self, request, view):
        method = request.method.upper()
        needed = self.requirements_for(method)
        if PUBLIC in needed:
            return True
        if not request.user:
            return False  # DRF answers 401 for an unauthenticated request
        if not needed:
            if not hasattr(view, method.lower()):
                return True  # DRF answers 405 for a method the view lacks
            raise _refuse_undeclared(method)
        if AUTHENTICATED in needed:
            return True
        held = codes_for(request.user)
        if any(perm in held for perm in needed):
            return True
        raise ApiError(
            403,
            "forbidden",
            f"Your role lacks the '{needed[0]}' permission.",
            extra={"permission": str(needed[0])},
        )


def _name(requirement: Requirement) -> str:
    return str(requirement).replace(".", "_")


def require(perm: Requirement) -> type[PermRequirement]:
    """A permission class allowing authenticated users whose role grants `perm` (or, with
    AUTHENTICATED, every authenticated user) for every method."""
    return type(
        f"Requires_{_name(perm)}", (PermRequirement,), {"default": (perm,), "by_method": {}}
    )


def require_any(*perms: Perm) -> type[PermRequirement]:
    """A permission class allowing authenticated users whose role grants any of `perms`;
    a refusal names the first."""
    if not perms:
        raise ValueError("require_any needs at least one code")
    name = "_or_".join(_name(p) for p in perms)
    return type(f"Requires_{name}", (PermRequirement,), {"default": tuple(perms), "by_method": {}})


def require_by_method(**by_method: Requirement) -> type[PermRequirement]:
    """A permission class with a code (or AUTHENTICATED, or PUBLIC) per HTTP method
    (`GET=Perm.USERS_VIEW, ...`); a method the view has but that is not named here is
    refused."""
    if any(not value for value in by_method.values()):
        raise ValueError("name a code or AUTHENTICATED for every method")
    codes = {method.upper(): (perm,) for method, perm in by_method.items()}
    name = "_".join(f"{m}_{_name(p[0])}" for m, p in codes.items())
    return type(f"Requires_{name}", (PermRequirement,), {"by_method": codes, "default": ()})


class Public(AllowAny):
    """No authentication at all: the view says so by naming this class."""


class Undeclared(BasePermission):
    """The default permission class (settings.REST_FRAMEWORK): a view that declares
    nothing is refused, whoever calls it."""

    def has_permission(self, request, view):
        if not request.user:
            return False  # 401 as everywhere; signed in or not, never allowed
        raise _refuse_undeclared(request.method.upper())
