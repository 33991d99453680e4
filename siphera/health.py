"""Readiness checks: database reachable, Redis reachable, migrations applied."""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django_tenants.utils import get_public_schema_name, schema_context


def readiness() -> tuple[bool, dict[str, str]]:
    checks = {"database": _check(_database), "redis": _check(_redis)}
    checks["migrations"] = _check(_migrations) if checks["database"] == "ok" else "skipped"
    return all(v == "ok" for v in checks.values()), checks


def _check(fn) -> str:
    try:
        return fn() or "ok"
    except Exception as exc:  # a probe reports, it does not raise
        return f"error: {type(exc).__name__}"


def _database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis():
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()


def _migrations():
    from django.apps import apps

    shared = {c.label for c in apps.get_app_configs() if c.name in settings.SHARED_APPS}
    with schema_context(get_public_schema_name()):
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    # `public` holds only the shared apps; tenant apps are migrated per org schema.
    pending = [migration for migration, _ in plan if migration.app_label in shared]
    return f"pending: {len(pending)}" if pending else None
