"""Celery tasks of messaging: thin wrappers around services.

Beat runs in `public`: the dispatcher sends one purge task per active org, each in that
org's schema (PITFALLS 7, 8).
"""

import logging

from celery import shared_task
from django.db import connection

from messaging.services import retention
from orgs.services import audit
from orgs.tasks import for_each_org

log = logging.getLogger("siphera.tasks")


@shared_task(name="messaging.tasks.dispatch_retention_purge")
def dispatch_retention_purge() -> int:
    sent = for_each_org(purge_retention)
    log.info("dispatched retention purge", extra={"orgs": sent})
    return sent


@shared_task(name="messaging.tasks.purge_retention")
def purge_retention() -> dict:
    """Purge this org's messages past retention (and stale unsent uploads), logging each
    batch; one `retention.purged` audit entry per run."""
    schema = connection.schema_name

    def progress(phase: str, report: retention.PurgeReport) -> None:
        log.info(
            "retention purge batch",
            extra={"schema": schema, "phase": phase, **report.as_dict()},
        )

    log.info("retention purge started", extra={"schema": schema})
    report = retention.do_purge(actor=audit.Actor.system("job:retention"), progress=progress)
    log.info("retention purge finished", extra={"schema": schema, **report.as_dict()})
    return {"schema": schema, **report.as_dict()}
