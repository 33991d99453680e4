"""Celery jobs through a real worker: beat's dispatcher fans out one task per org, and each
task runs in its own org's schema."""

import time
from datetime import timedelta

from django.utils import timezone

from orgs import tasks
from orgs.accounts.models import LoginGrant
from orgs.services import tokens
from siphera.tenancy import in_tenant, send_task
from tests.fixtures import make_user


def _grant(org, *, expired: bool) -> int:
    user = make_user(org)
    delta = timedelta(minutes=-10 if expired else 10)
    _, grant_hash = tokens.new_secret(tokens.LOGIN_GRANT_PREFIX)
    row = in_tenant(
        org,
        LoginGrant.objects.create,
        user=user,
        grant_hash=grant_hash,
        expires_at=timezone.now() + delta,
    )
    return row.pk


def _exists(org, pk) -> bool:
    return in_tenant(org, LoginGrant.objects.filter(pk=pk).exists)


def _wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_dispatcher_purges_expired_grants_in_every_org(celery_worker, org_a, org_b):
    expired_a, expired_b = _grant(org_a, expired=True), _grant(org_b, expired=True)
    live_a, live_b = _grant(org_a, expired=False), _grant(org_b, expired=False)

    tasks.dispatch_purge_expired_grants.delay()

    assert _wait_until(lambda: not _exists(org_a, expired_a) and not _exists(org_b, expired_b))
    assert _exists(org_a, live_a) and _exists(org_b, live_b)
    log = celery_worker.read_text()
    assert "dispatched purge_expired_grants" in log


def test_a_task_sent_for_one_org_touches_only_that_org(celery_worker, org_a, org_b):
    expired_a, expired_b = _grant(org_a, expired=True), _grant(org_b, expired=True)

    send_task(tasks.purge_expired_grants, org=org_a)

    assert _wait_until(lambda: not _exists(org_a, expired_a))
    time.sleep(1.0)  # give a wrongly routed task time to show itself
    assert _exists(org_b, expired_b)
