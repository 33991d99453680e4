"""Helpers of the audit log tests: running verify_audit, and tampering with the log the way
someone with superuser access to the database would (the append-only trigger disabled)."""

from __future__ import annotations

import io
from contextlib import contextmanager

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from siphera.tenancy import tenant_context
from tests.fixtures import create_org, make_user, unique

TRIGGER = "accounts_auditentry_append_only"


def fresh_org(users: int = 4):
    """A new org whose log holds org.created plus one member.created per user (tampering
    breaks an org's log for good, so each tamper test takes its own)."""
    org = create_org(unique("audit"))
    for _ in range(users):
        make_user(org)
    return org


def verify(org, *extra: str) -> str:
    """Run verify_audit; return its stdout (raises CommandError, with `.stdout`, when the
    chain is broken)."""
    out = io.StringIO()
    try:
        call_command("verify_audit", "--org", org.slug, "--quiet", *extra, stdout=out)
    except CommandError as exc:
        exc.stdout = out.getvalue()
        raise
    return out.getvalue()


def verify_fails(org, *extra: str) -> str:
    with pytest.raises(CommandError) as failure:
        verify(org, *extra)
    assert failure.value.returncode == 1
    return failure.value.stdout


@contextmanager
def tampering(org):
    """A cursor in the org's schema with the append-only trigger disabled (superuser)."""
    with tenant_context(org), connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE accounts_auditentry DISABLE TRIGGER {TRIGGER}")
        try:
            yield cursor
        finally:
            cursor.execute(f"ALTER TABLE accounts_auditentry ENABLE TRIGGER {TRIGGER}")
