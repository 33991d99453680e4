"""DRF permission classes built from orgs.roles.Perm codes.

A view declares what it needs in `permission_classes`: `require(Perm.X)` for every
method, or `require_by_method(GET=Perm.X, POST=Perm.Y)` where methods differ. Both expose
`perm_for(method)`, which the permission registry (orgs.perm_registry) reads, so the
permission matrix test enumerates exactly what the views enforce.
"""

from __future__ import annotations

from rest_framework.permissions import BasePermission

from orgs.roles import Perm, has_perm
from siphera.api_errors import ApiError


class PermRequirement(BasePermission):
    """Base of the generated classes: an authenticated user whose role grants the code
    for the request's method (None: any authenticated user)."""

    by_method: dict[str, Perm | None] = {}
    default: Perm | None = None

    @classmethod
    def perm_for(cls, method: str) -> Perm | None:
        method = method.upper()
        if method == "HEAD":  # DRF answers HEAD with the GET handler
            method = "GET"
        return cls.by_method.get(method, cls.default)

    def has_permission(self, request, view):
        if not request.user:
            return False  # DRF answers 401 for an unauthenticated request
        perm = self.perm_for(request.method)
        if perm is None or has_perm(request.user, perm):
            return True
        raise ApiError(
            403,
            "forbidden",
            f"Your role lacks the '{perm}' permission.",
            extra={"permission": str(perm)},
        )


def require(perm: Perm) -> type[PermRequirement]:
    """A permission class allowing authenticated users whose role grants `perm`."""
    return type(
        f"Requires_{perm.replace('.', '_')}",
        (PermRequirement,),
        {"default": perm, "by_method": {}},
    )


def require_by_method(**by_method: Perm | None) -> type[PermRequirement]:
    """A permission class with a code per HTTP method (`GET=Perm.USERS_VIEW, ...`);
    a method not named needs no code beyond being authenticated."""
    codes = {method.upper(): perm for method, perm in by_method.items()}
    name = "_".join(f"{m}_{(p or 'auth').replace('.', '_')}" for m, p in codes.items())
    return type(f"Requires_{name}", (PermRequirement,), {"by_method": codes, "default": None})
