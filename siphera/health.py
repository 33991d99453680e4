"""Readiness checks: database reachable, Redis reachable, migrations applied, key ring
usable.

The database and migrations are needed to serve anything: either failing is
`unavailable` (503, take the instance out of rotation). Redis is not: without it the
server still answers (siphera.redis_outage), so Redis failing alone is `degraded` (200):
taking every instance out because their shared Redis is down would turn a degradation
into an outage. The key ring (siphera.keyring) is `unavailable` when the process has
none (its key-ring file was unusable from the start: nothing can be encrypted or
audited), `degraded` when it refused a change of the file and keeps the ring it read
before."""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django_tenants.utils import get_public_schema_name, schema_context

from siphera import redis_outage


def readiness() -> tuple[str, dict[str, str]]:
    """(`ok`, `degraded` or `unavailable`, each check's result)."""
    checks = {"database": _check(_database), "redis": _check(_redis)}
    checks["migrations"] = _check(_migrations) if checks["database"] == "ok" else "skipped"
    checks["key_ring"] = _check(_key_ring)
    degraded = ("redis", "key_ring")
    if any(v != "ok" for name, v in checks.items() if name not in degraded):
        return "unavailable", checks
    if checks["key_ring"] not in ("ok", KEPT_RING):
        return "unavailable", checks
    return ("ok" if all(checks[name] == "ok" for name in degraded) else "degraded"), checks


def _check(fn) -> str:
    try:
        return fn() or "ok"
    except Exception as exc:  # a probe reports, it does not raise
        return f"error: {type(exc).__name__}"


KEPT_RING = "refused a change of the key-ring file: keeps the keys read before"


def _key_ring():
    """The reason stays in the log (it names a path): the probe answers on any host."""
    from siphera import keyring

    keyring.ring()  # raises KeyRingError: no ring at all
    return KEPT_RING if keyring.problem() else None


def _database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis():
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    except redis_outage.REDIS_ERRORS as exc:
        redis_outage.failed(exc, where="ready")
        raise
    finally:
        client.close()
    redis_outage.succeeded()


def _migrations():
    from django.apps import apps

    shared = {c.label for c in apps.get_app_configs() if c.name in settings.SHARED_APPS}
    with schema_context(get_public_schema_name()):
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    # `public` holds only the shared apps; tenant apps are migrated per org schema.
    pending = [migration for migration, _ in plan if migration.app_label in shared]
    return f"pending: {len(pending)}" if pending else None
