"""Celery tasks of single sign-on. Beat runs in `public`: the dispatcher fans out one task
per active org in that org's schema (PITFALLS 7, 8)."""

import logging

from celery import shared_task
from django.db import connection

from orgs.sso import saml
from orgs.tasks import for_each_org

log = logging.getLogger("siphera.tasks")


@shared_task(name="orgs.sso.tasks.dispatch_refresh_saml_metadata")
def dispatch_refresh_saml_metadata() -> int:
    """Beat (SAML_METADATA_REFRESH_SECONDS): re-read each org's SAML metadata URL."""
    sent = for_each_org(refresh_saml_metadata)
    log.info("dispatched refresh_saml_metadata", extra={"orgs": sent})
    return sent


@shared_task(name="orgs.sso.tasks.refresh_saml_metadata")
def refresh_saml_metadata() -> dict:
    """Re-read this org's IdP metadata URL, if it has one (certificate rollover)."""
    changed = saml.do_refresh_metadata()
    return {"schema": connection.schema_name, "changed": changed}
