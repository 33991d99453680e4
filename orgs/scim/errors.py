"""SCIM errors (RFC 7644 section 3.12): every refusal of /scim/v2 is one of these."""

from __future__ import annotations

from siphera.api_errors import ApiError


class ScimError(ApiError):
    """An ApiError that renders as a SCIM Error body; `scim_type` is RFC 7644's
    `scimType` (invalidFilter, tooMany, uniqueness, mutability, invalidSyntax,
    invalidPath, noTarget, invalidValue, invalidVers, sensitive) or ""."""

    def __init__(self, status: int, scim_type: str, detail: str, *, headers=None):
        super().__init__(status, scim_type or "scim_error", detail, headers=headers)
        self.scim_type = scim_type


def invalid_value(detail: str) -> ScimError:
    return ScimError(400, "invalidValue", detail)


def invalid_syntax(detail: str) -> ScimError:
    return ScimError(400, "invalidSyntax", detail)


def invalid_filter(detail: str) -> ScimError:
    return ScimError(400, "invalidFilter", detail)


def invalid_path(detail: str) -> ScimError:
    return ScimError(400, "invalidPath", detail)


def no_target(detail: str) -> ScimError:
    return ScimError(400, "noTarget", detail)


def mutability(detail: str) -> ScimError:
    return ScimError(400, "mutability", detail)


def uniqueness(detail: str) -> ScimError:
    return ScimError(409, "uniqueness", detail)


def not_found(detail: str = "No such resource.") -> ScimError:
    return ScimError(404, "", detail)
