"""Celery tasks of orgs: thin wrappers around services.

Beat runs in `public`; each periodic job is a dispatcher that sends one task per active
org with that org's schema (PITFALLS 7, 8).
"""

import logging
from smtplib import SMTPException

from celery import shared_task
from django.db import connection

from orgs.models import Org
from orgs.services import audit, key_rotation, mail, passwords
from orgs.services.auth import do_purge_expired_grants
from siphera.tenancy import public_schema, send_task

log = logging.getLogger("siphera.tasks")


def for_each_org(task) -> int:
    """Send `task` once per active org, in that org's schema. Returns how many were sent."""
    with public_schema():
        orgs = list(Org.objects.filter(is_active=True).exclude(schema_name="public"))
    for org in orgs:
        send_task(task, org=org)
    return len(orgs)


@shared_task(name="orgs.tasks.dispatch_purge_expired_grants")
def dispatch_purge_expired_grants() -> int:
    sent = for_each_org(purge_expired_grants)
    log.info("dispatched purge_expired_grants", extra={"orgs": sent})
    return sent


@shared_task(name="orgs.tasks.purge_expired_grants")
def purge_expired_grants() -> dict:
    deleted = do_purge_expired_grants()
    log.info(
        "purged expired login grants", extra={"schema": connection.schema_name, "deleted": deleted}
    )
    return {"schema": connection.schema_name, "deleted": deleted}


@shared_task(name="orgs.tasks.dispatch_anchor_audit_chains")
def dispatch_anchor_audit_chains() -> int:
    """Beat (every AUDIT_ANCHOR_EVERY_SECONDS): anchor each org's audit chain head outside
    the database, one task per org."""
    sent = for_each_org(anchor_audit_chain)
    log.info("dispatched anchor_audit_chain", extra={"orgs": sent})
    return sent


@shared_task(name="orgs.tasks.anchor_audit_chain")
def anchor_audit_chain() -> dict:
    """Anchor this org's chain head if what was written since its last anchor links to it
    (audit.do_anchor_head logs an error and writes nothing otherwise)."""
    report = audit.do_anchor_head()
    return {
        "schema": connection.schema_name,
        "ok": report.ok,
        "anchor_id": report.anchor_id,
        "problem": report.problem,
    }


@shared_task(name="orgs.tasks.key_rotation_tick")
def key_rotation_tick() -> dict:
    """Beat (every KEY_ROTATION_CHECK_SECONDS): add or promote a key when due, then
    re-encrypt what is not under the active key (orgs.services.key_rotation). One task for
    all orgs, run in `public`: the job walks the orgs itself, with checkpoints."""
    return key_rotation.do_rotation_tick()


@shared_task(name="orgs.tasks.reencrypt_secrets")
def reencrypt_secrets(batch_size: int | None = None, schemas: list[str] | None = None) -> dict:
    """`manage.py rotate_keys --enqueue`: re-encrypt every secret at rest under the active
    key, resuming an interrupted run. With acks_late, a worker killed half way has the task
    redelivered, and the run resumes from its last committed batch."""
    try:
        report = key_rotation.do_reencrypt(batch_size=batch_size, schemas=schemas)
    except key_rotation.AlreadyRunning as exc:
        log.info("re-encryption not started", extra={"why": str(exc)})
        return {"started": False}
    return {
        "started": True,
        "run": report.run_id,
        "key_id": report.key_id,
        "scanned": report.scanned_now,
        "rotated": report.rotated_now,
        "unreadable": report.unreadable,
    }


@shared_task(
    name="orgs.tasks.send_mail",
    autoretry_for=(SMTPException, OSError),
    retry_backoff=10,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=8,
)
def send_mail(message: dict) -> int:
    """Send one rendered mail (orgs.services.mail.queue_mail). An SMTP or network failure
    is retried with backoff (10 s doubling, at most 10 min apart, 8 tries)."""
    return mail.do_send(message)


@shared_task(name="orgs.tasks.request_password_reset")
def request_password_reset(wanted: str, base_url: str, request: dict) -> int:
    """Forgot-password, off the request path (orgs.services.passwords.check_request_reset):
    mail a reset link to the accounts `wanted` names. `request` is the asking client's ip
    and user agent, for the audit log."""
    actor = audit.Actor(label="password reset request", **request)
    return passwords.do_request_reset(wanted, actor=actor, base_url=base_url)
