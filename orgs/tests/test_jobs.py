"""Celery jobs through a real worker: beat's dispatcher fans out one task per org, and each
task runs in its own org's schema."""

import time
from datetime import timedelta

from django.utils import timezone

from orgs import tasks
from orgs.accounts.models import LoginGrant
from orgs.services import tokens
from siphera.tenancy import in_tenant, send_task
from tests.fixtures import make_user, worker_with_env


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


# --- key rotation ---------------------------------------------------------------------------


def test_beat_rotation_re_encrypts_totp_seeds_in_every_org_under_the_newest_key(
    org_a, org_b, tmp_path, settings
):
    from orgs.accounts.models import AuditEntry, TotpFactor
    from orgs.services import audit, mfa
    from siphera import crypto

    seeds = {}
    for org in (org_a, org_b):
        user = make_user(org)
        in_tenant(org, mfa.check_start_enrollment, user, actor=audit.Actor.system("tests"))
        seeds[org] = (user, in_tenant(org, TotpFactor.objects.get, user=user).secret_encrypted)
    new_ring = ["rotation-test-newest-key-000000001", *settings.SECRET_KEYS]

    with worker_with_env(tmp_path / "worker.log", SECRET_KEYS=",".join(new_ring)) as queue:
        tasks.dispatch_rotate_totp_secrets.apply_async(queue=queue)

        def rotated() -> bool:
            return all(
                in_tenant(org, TotpFactor.objects.get, user=user).secret_encrypted != before
                for org, (user, before) in seeds.items()
            )

        assert _wait_until(rotated, 30), (tmp_path / "worker.log").read_text()[-2000:]

    settings.SECRET_KEYS = new_ring
    for org, (user, before) in seeds.items():
        after = in_tenant(org, TotpFactor.objects.get, user=user).secret_encrypted
        assert not crypto.needs_rotation(after)
        assert crypto.decrypt(after) == crypto.decrypt(before)
        [entry] = in_tenant(
            org, lambda: list(AuditEntry.objects.filter(event="mfa.secrets_rotated"))[-1:]
        )
        assert entry.actor_label == "key-rotation" and entry.data["rotated"] >= 1
    assert "dispatched rotate_totp_secrets" in (tmp_path / "worker.log").read_text()
