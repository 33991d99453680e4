"""The org's password policy as a Django password validator (settings
AUTH_PASSWORD_VALIDATORS), so every path that sets a password (create, invitation, change,
reset, management commands) applies it through `validate_password`."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import connection

# Bounds of the policy's minimum, and the longest password accepted anywhere (argon2 takes
# any length; this keeps a megabyte "password" from being hashed).
MIN_LENGTH_FLOOR = 8
MIN_LENGTH_CEILING = 128
MAX_LENGTH = 1024


def org_min_length() -> int:
    """The current org's minimum password length (the floor outside an org's schema)."""
    if connection.schema_name in ("", "public"):
        return MIN_LENGTH_FLOOR
    from orgs.accounts.models import OrgPolicy

    value = OrgPolicy.objects.filter(pk=1).values_list("password_min_length", flat=True).first()
    return value or MIN_LENGTH_FLOOR


class OrgPolicyLengthValidator:
    """At least the org policy's `password_min_length` characters, at most MAX_LENGTH."""

    def validate(self, password: str, user=None) -> None:
        minimum = org_min_length()
        if len(password) < minimum:
            raise ValidationError(
                f"This password is too short: use at least {minimum} characters.",
                code="password_too_short",
            )
        if len(password) > MAX_LENGTH:
            raise ValidationError(
                f"This password is too long: at most {MAX_LENGTH} characters.",
                code="password_too_long",
            )

    def get_help_text(self) -> str:
        return f"At least {org_min_length()} characters (your organisation's policy)."
