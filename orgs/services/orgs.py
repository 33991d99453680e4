"""Creating orgs (schema, domains, and the first audit entry) and adding domains."""

from __future__ import annotations

import re

from django.db import IntegrityError, transaction

from orgs.audit_events import AuditEvent
from orgs.models import SLUG_RE, Domain, Org
from orgs.services import audit
from siphera.api_errors import ApiError
from siphera.tenancy import in_tenant, public_schema

RESERVED_SLUGS = {"public", "www", "api", "admin", "static", "health", "ready"}
# A DNS host name (single labels such as `localhost` allowed) or a dotted IPv4 address.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
HOST_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")


def validate_host_name(domain: str) -> str:
    domain = (domain or "").strip().lower().rstrip(".")
    if len(domain) > 253 or not HOST_RE.match(domain):
        raise ApiError(400, "invalid_domain", f"Invalid domain {domain!r}.")
    return domain


def check_create_org(*, slug: str, name: str, domains: list[str], actor: audit.Actor) -> Org:
    """Validate, then create the org. Raises ApiError (nothing written) on bad input."""
    slug = (slug or "").strip().lower()
    name = (name or "").strip()
    domains = [validate_host_name(d) for d in domains if d and d.strip()]
    if not re.match(SLUG_RE, slug) or slug in RESERVED_SLUGS:
        raise ApiError(
            400,
            "invalid_slug",
            f"Invalid slug {slug!r}: 2-30 of a-z, 0-9 and '-', starting with a letter"
            " (not a reserved word).",
        )
    if not name:
        raise ApiError(400, "invalid_name", "The org needs a name.")
    if not domains:
        raise ApiError(400, "invalid_domain", "The org needs at least one domain.")
    if len(set(domains)) != len(domains):
        raise ApiError(400, "invalid_domain", "A domain is listed twice.")
    with public_schema():
        if Org.objects.filter(slug=slug).exists():
            raise ApiError(409, "org_exists", f"An org with slug {slug!r} already exists.")
        taken = list(Domain.objects.filter(domain__in=domains).values_list("domain", flat=True))
        if taken:
            raise ApiError(409, "domain_taken", f"Domain already in use: {', '.join(taken)}.")
    return do_create_org(slug=slug, name=name, domains=domains, actor=actor)


def do_create_org(*, slug: str, name: str, domains: list[str], actor: audit.Actor) -> Org:
    """Create the org row, its schema (migrated) and its domains, all or nothing.

    django-tenants creates and migrates the schema in Org.save(); the DDL runs in the same
    transaction, so a failure leaves neither the row, the schema nor the domains behind.
    """
    with public_schema(), transaction.atomic():
        org = Org(schema_name=Org.schema_for_slug(slug), slug=slug, name=name)
        org.save(verbosity=0)
        for index, domain in enumerate(domains):
            Domain.objects.create(domain=domain, tenant=org, is_primary=index == 0)
        in_tenant(
            org,
            audit.record,
            AuditEvent.ORG_CREATED,
            actor=actor,
            target_type="org",
            target_id=slug,
            data={"name": name, "domains": domains},
        )
    return org


def check_add_domain(org: Org, domain: str, *, actor: audit.Actor) -> Domain:
    """Validate, then give `org` another host name. 400 `invalid_domain`, 409
    `domain_taken` (by this or another org); nothing written then."""
    domain = validate_host_name(domain)
    with public_schema():
        if Domain.objects.filter(domain=domain).exists():
            raise ApiError(409, "domain_taken", f"Domain already in use: {domain}.")
    try:
        return do_add_domain(org, domain, actor=actor)
    except IntegrityError:  # lost a race with a concurrent add of the same name
        raise ApiError(409, "domain_taken", f"Domain already in use: {domain}.") from None


def do_add_domain(org: Org, domain: str, *, actor: audit.Actor) -> Domain:
    """Add a (non-primary) host name to `org`, audited `org.domain_added` in the org's
    log in the same transaction: the domain row (public schema) and its entry commit
    together or not at all."""
    with public_schema(), transaction.atomic():
        row = Domain.objects.create(domain=domain, tenant=org, is_primary=False)
        in_tenant(
            org,
            audit.record,
            AuditEvent.ORG_DOMAIN_ADDED,
            actor=actor,
            target_type="org",
            target_id=org.slug,
            data={"domain": domain},
        )
    return row


def do_remove_domain(org: Org, domain: Domain, *, actor: audit.Actor) -> None:
    """Stop routing a (non-primary) host name of `org`, audited `org.domain_removed` in
    the org's log in the same transaction (as `do_add_domain`)."""
    with public_schema(), transaction.atomic():
        Domain.objects.filter(pk=domain.pk, tenant=org, is_primary=False).delete()
        in_tenant(
            org,
            audit.record,
            AuditEvent.ORG_DOMAIN_REMOVED,
            actor=actor,
            target_type="domain",
            target_id=domain.domain,
            data={"domain": domain.domain, "was": "verified"},
        )


def get_org(slug: str) -> Org:
    with public_schema():
        org = Org.objects.filter(slug=slug).first()
    if org is None:
        raise ApiError(404, "unknown_org", f"No org with slug {slug!r}.")
    return org
