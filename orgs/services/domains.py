"""An org's own host names, managed by its admins: claim one, prove it with DNS, remove it
(run inside the org's schema; the routed names live in the public `Domain` table).

Guarantees:
- A claimed name routes nowhere until verified: its DNS must publish the TXT record
  `_siphera-verify.<name>` = `siphera-verify=<token>` (the token shown with the claim).
  Verification asks the resolvers of DOMAIN_VERIFY_NAMESERVERS (empty: the system's),
  within DOMAIN_VERIFY_TIMEOUT_SECONDS; an unreachable resolver is a 503, never a pass.
- A verified name is added with orgs.services.orgs.do_add_domain (the same code as
  `manage.py add_domain`): it routes to the org, and the portal's sign-in form accepts
  it, at once in this process and within GENERATION_CHECK_SECONDS in the others, without
  a restart (siphera.tenancy's cache, OrgCsrfMiddleware).
- A name routed to any org cannot be claimed (409 `domain_taken`); two orgs may claim the
  same free name, and the first to verify it gets it.
- The primary name and the name the request came in on cannot be removed (409), so an
  admin cannot cut off the org or their own session by accident.
- Every claim, failed or passed verification and removal is audited in the org's log.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from dataclasses import dataclass

import dns.exception
import dns.nameserver
import dns.resolver
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from orgs.accounts.models import PendingDomain
from orgs.audit_events import AuditEvent
from orgs.models import Domain, Org
from orgs.services import audit
from orgs.services.orgs import do_add_domain, do_remove_domain, validate_host_name
from siphera.api_errors import ApiError, not_found
from siphera.tenancy import public_schema

log = logging.getLogger("siphera.domains")
TXT_LABEL = "_siphera-verify"
TXT_PREFIX = "siphera-verify="
MAX_PENDING = 20


@dataclass(frozen=True)
class OrgDomains:
    routed: list[Domain]  # primary first
    pending: list[PendingDomain]


def record_name(pending: PendingDomain) -> str:
    return f"{TXT_LABEL}.{pending.domain}"


def record_value(pending: PendingDomain) -> str:
    return f"{TXT_PREFIX}{pending.token}"


def list_domains(org: Org) -> OrgDomains:
    with public_schema():
        routed = list(Domain.objects.filter(tenant=org).order_by("-is_primary", "domain"))
    return OrgDomains(routed=routed, pending=list(PendingDomain.objects.order_by("domain")))


def domain_payload(row: Domain | PendingDomain) -> dict:
    if isinstance(row, Domain):
        return {"domain": row.domain, "status": "verified", "primary": row.is_primary}
    return {
        "domain": row.domain,
        "status": "pending",
        "primary": False,
        "txt_name": record_name(row),
        "txt_value": record_value(row),
        "created_at": row.created_at.isoformat(),
        "checked_at": row.checked_at.isoformat() if row.checked_at else None,
        "last_error": row.last_error,
    }


def _taken(domain: str) -> bool:
    with public_schema():
        return Domain.objects.filter(domain=domain).exists()


def validate_claimable_name(domain: str) -> str:
    """`domain` normalised (orgs.services.orgs.validate_host_name), if an org may claim it
    for itself: a public DNS name of at least two labels whose top-level label starts with
    a letter, so never an IP address (`10.0.0.5`, `0x7f.1`), a bare label (`intranet`)
    or `localhost` / `*.localhost` (RFC 6761: always the machine itself). Such names reach
    the server without any org's DNS (a probe, an operator by address), so no org may take
    them; an operator still can (`manage.py add_domain`). Else 400 `invalid_domain`."""
    domain = validate_host_name(domain)
    labels = domain.split(".")
    if len(labels) < 2 or not labels[-1][0].isalpha() or labels[-1] == "localhost":
        raise ApiError(
            400,
            "invalid_domain",
            f"{domain!r} cannot be claimed: give a DNS name of your own, such as "
            "chat.example.com (not an IP address, a single label or localhost).",
        )
    if len(f"{TXT_LABEL}.{domain}") > 253:  # the record's name must be a DNS name too
        raise ApiError(400, "invalid_domain", "This name is too long to verify by DNS.")
    return domain


def check_claim_domain(org: Org, domain: str, *, actor: audit.Actor) -> PendingDomain:
    """Claim a host name for `org`: 400 `invalid_domain` (validate_claimable_name), 409
    `domain_taken` (routed to this or another org), 409 `too_many_pending`. Claiming a
    name already pending here returns that claim unchanged (also when two claims of it
    race). Audited `org.domain_claimed`."""
    domain = validate_claimable_name(domain)
    if _taken(domain):
        raise ApiError(409, "domain_taken", f"Domain already in use: {domain}.")
    existing = PendingDomain.objects.filter(domain=domain).first()
    if existing is not None:
        return existing
    if PendingDomain.objects.count() >= MAX_PENDING:
        raise ApiError(
            409,
            "too_many_pending",
            f"At most {MAX_PENDING} names wait for verification: remove one first.",
        )
    try:
        with transaction.atomic():
            pending = PendingDomain.objects.create(
                domain=domain,
                token=secrets.token_urlsafe(24),
                created_by=actor.user.pk if actor.user is not None else None,
            )
            audit.record(
                AuditEvent.ORG_DOMAIN_CLAIMED,
                actor=actor,
                target_type="domain",
                target_id=domain,
                data={"domain": domain, "txt_name": record_name(pending)},
            )
    except IntegrityError:  # the same claim a moment ago (a double submit)
        existing = PendingDomain.objects.filter(domain=domain).first()
        if existing is None:
            raise
        return existing
    return pending


def access_domain(org: Org, domain: str) -> Domain | PendingDomain:
    """This org's routed or pending name, or a 404 (also for another org's)."""
    name = (domain or "").strip().lower().rstrip(".")
    pending = PendingDomain.objects.filter(domain=name).first()
    if pending is not None:
        return pending
    with public_schema():
        routed = Domain.objects.filter(tenant=org, domain=name).first()
    if routed is None:
        raise not_found("No such domain.")
    return routed


def nameserver(entry: str) -> dns.nameserver.Do53Nameserver:
    """One DOMAIN_VERIFY_NAMESERVERS entry: `ip`, `ipv4:port`, `ipv6` or `[ipv6]:port`.
    ValueError for anything else (a host name: the resolver must not need a resolver)."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    try:
        address = str(ipaddress.ip_address(host))
        number = int(port) if port else 53
        if not (port.isdigit() or not port) or not 0 < number < 65536:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"DOMAIN_VERIFY_NAMESERVERS: {entry!r} is not `ip`, `ip:port` or `[ipv6]:port`"
        ) from None
    return dns.nameserver.Do53Nameserver(address, number)


def _resolver() -> dns.resolver.Resolver:
    configured = settings.DOMAIN_VERIFY_NAMESERVERS
    resolver = dns.resolver.Resolver(configure=not configured)
    if configured:
        try:
            resolver.nameservers = [nameserver(entry) for entry in configured]
        except ValueError as exc:
            log.error("domain verification: %s", exc)  # the operator's to fix
            raise
    resolver.lifetime = settings.DOMAIN_VERIFY_TIMEOUT_SECONDS
    resolver.timeout = settings.DOMAIN_VERIFY_TIMEOUT_SECONDS
    return resolver


def lookup_txt(name: str) -> list[str]:
    """The TXT strings published at `name` (empty when it has none); ApiError 503
    `dns_unavailable` when no resolver answered."""
    try:
        resolver = _resolver()
    except ValueError:  # logged for the operator
        raise ApiError(
            503,
            "dns_unavailable",
            "This server's DNS settings for verifying names are wrong; tell its operator.",
        ) from None
    try:
        answer = resolver.resolve(name, "TXT", raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.DNSException, OSError, ValueError) as exc:
        raise ApiError(
            503, "dns_unavailable", f"The DNS lookup failed ({type(exc).__name__}); try again."
        ) from None
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer or ()]


def check_verify_domain(org: Org, pending: PendingDomain, *, actor: audit.Actor) -> Domain:
    """Look the claim's TXT record up; when it holds the token, the name routes to `org`
    from now on (`org.domain_added`, the claim is dropped). Otherwise 409
    `domain_not_verified` (or 503 `dns_unavailable`), noted on the claim and audited
    `org.domain_verification_failed`; 409 `domain_taken` when another org verified it
    first. Two verifications of the claim at once both answer with the routed name."""
    expected = record_value(pending)
    try:
        found = lookup_txt(record_name(pending))
        error = None
        if expected not in found:
            shown = ", ".join(repr(v[:60]) for v in found[:3]) or "no TXT record"
            error = ApiError(
                409,
                "domain_not_verified",
                f"{record_name(pending)} has {shown}; publish the TXT record "
                f"{expected!r} and try again (DNS changes may take a while to show).",
            )
    except ApiError as exc:
        error = exc
    if error is None and _taken(pending.domain):
        routed = _routed_here(org, pending.domain)
        if routed is not None:  # a concurrent verification of this claim won
            return routed
        error = ApiError(409, "domain_taken", f"Domain already in use: {pending.domain}.")
    if error is not None:
        _note_failure(pending, error, actor=actor)
        raise error
    try:
        with transaction.atomic():
            if not PendingDomain.objects.filter(pk=pending.pk).delete()[0]:
                raise IntegrityError  # a concurrent verification of this claim won
            return do_add_domain(org, pending.domain, actor=actor)
    except IntegrityError:  # another org (or this one, twice at once) verified it
        routed = _routed_here(org, pending.domain)
        if routed is not None:
            return routed
        if not PendingDomain.objects.filter(pk=pending.pk).exists():
            raise not_found("No such domain.") from None  # removed meanwhile
        error = ApiError(409, "domain_taken", f"Domain already in use: {pending.domain}.")
        _note_failure(pending, error, actor=actor)
        raise error from None


def _routed_here(org: Org, domain: str) -> Domain | None:
    with public_schema():
        return Domain.objects.filter(tenant=org, domain=domain).first()


def _note_failure(pending: PendingDomain, error: ApiError, *, actor: audit.Actor) -> None:
    with transaction.atomic():
        PendingDomain.objects.filter(pk=pending.pk).update(
            checked_at=timezone.now(), last_error=error.message[:300]
        )
        audit.record(
            AuditEvent.ORG_DOMAIN_VERIFICATION_FAILED,
            actor=actor,
            target_type="domain",
            target_id=pending.domain,
            data={"domain": pending.domain, "code": error.code},
        )


def check_remove_domain(
    org: Org, row: Domain | PendingDomain, *, actor: audit.Actor, current_host: str | None
) -> None:
    """Drop a pending claim, or stop routing a verified name: 409 `primary_domain` for
    the primary name, 409 `domain_in_use` for the name this request came in on. Audited
    `org.domain_removed`."""
    if isinstance(row, PendingDomain):
        with transaction.atomic():
            row.delete()
            audit.record(
                AuditEvent.ORG_DOMAIN_REMOVED,
                actor=actor,
                target_type="domain",
                target_id=row.domain,
                data={"domain": row.domain, "was": "pending"},
            )
        return
    if row.is_primary:
        raise ApiError(409, "primary_domain", "The primary domain cannot be removed.")
    if current_host and row.domain == current_host:
        raise ApiError(
            409,
            "domain_in_use",
            "You are signed in through this domain: remove it from another one.",
        )
    do_remove_domain(org, row, actor=actor)
