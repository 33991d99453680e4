"""Celery tasks of calls: the timers of 1:1 calls and beat's sweep (thin wrappers around
calls.services.signaling). Each timer task runs in the call's org schema (sent with
siphera.tenancy.send_task) and is idempotent: it acts only if the call is still where the
timer left it, so a redelivered or late task changes nothing."""

import logging

from celery import shared_task
from django.db import connection

from calls.services import records, signaling
from orgs.services import audit
from orgs.tasks import for_each_org

log = logging.getLogger("siphera.tasks")


@shared_task(name="calls.tasks.ring_timeout")
def ring_timeout(call_id: str, due: str) -> bool:
    ended = signaling.do_ring_timeout(call_id, due)
    if ended:
        log.info("call.missed", extra={"call_id": call_id, "reason": "timeout"})
    return ended


@shared_task(name="calls.tasks.reconnect_grace_expired")
def reconnect_grace_expired(call_id: str, user_id: str, since: str) -> bool:
    ended = signaling.do_reconnect_grace_expired(call_id, user_id, since)
    if ended:
        log.info("call.failed", extra={"call_id": call_id, "reason": "connection_lost"})
    return ended


@shared_task(name="calls.tasks.dispatch_sweep_calls")
def dispatch_sweep_calls() -> int:
    return for_each_org(sweep_calls)


@shared_task(name="calls.tasks.sweep_calls")
def sweep_calls() -> dict:
    ended = signaling.do_sweep()
    if ended:
        log.info("calls swept", extra={"schema": connection.schema_name, "ended": ended})
    return {"schema": connection.schema_name, "ended": ended}


@shared_task(name="calls.tasks.dispatch_purge_call_records")
def dispatch_purge_call_records() -> int:
    return for_each_org(purge_call_records)


@shared_task(name="calls.tasks.purge_call_records")
def purge_call_records() -> dict:
    """Delete this org's call records past its retention (held users' and conversations'
    are kept)."""
    deleted = records.do_purge_call_records(actor=audit.Actor.system("job:retention"))
    log.info("call records purged", extra={"schema": connection.schema_name, "deleted": deleted})
    return {"schema": connection.schema_name, "deleted": deleted}
