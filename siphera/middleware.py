"""HTTP middleware: health probes, request context + access log, tenant routing, CSRF."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid

from django.contrib.messages.middleware import MessageMiddleware
from django.core.exceptions import DisallowedHost
from django.db import connection
from django.http import HttpResponseBadRequest, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django_tenants.middleware.main import TenantMainMiddleware

from siphera import health
from siphera.api_errors import ApiError, error_response, json_error
from siphera.logging import org_var, request_id_var
from siphera.tenancy import normalize_host, org_for_host

access_log = logging.getLogger("siphera.access")
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9\-_.]{1,64}$")


class HealthMiddleware:
    """/health and /ready answer on any Host, a bare IP included: load balancers probe
    that way, before any org or ALLOWED_HOSTS check."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path == "/health":
            return JsonResponse({"status": "ok"})
        if request.path == "/ready":
            status, checks = health.readiness()
            return JsonResponse(
                {"status": status, "checks": checks},
                status=503 if status == "unavailable" else 200,
            )
        return self.get_response(request)


class RequestContextMiddleware:
    """Gives every request an id (X-Request-ID in, or a new one) and writes one JSON access
    line per request: method, path (never the query string), status, duration, org."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = request_id_for(request.headers.get("X-Request-ID", ""))
        request.request_id = request_id
        rid_token = request_id_var.set(request_id)
        org_token = org_var.set(None)
        started = time.perf_counter()
        try:
            if "%00" in request.META.get("QUERY_STRING", ""):
                response = _nul_in_query(request)
            else:
                response = self.get_response(request)
            response["X-Request-ID"] = request_id
            log_access(request.method, request.path, response.status_code, started)
            return response
        finally:
            request_id_var.reset(rid_token)
            org_var.reset(org_token)


def log_access(method: str, path: str, status: int, started: float) -> None:
    """The request's one JSON access line (`started`: its time.perf_counter())."""
    access_log.info(
        "request",
        extra={
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )


def unknown_org() -> ApiError:
    """The answer to a host no (active) org answers."""
    return ApiError(404, "unknown_org", "No organisation answers at this host.")


def request_id_for(incoming: str) -> str:
    """The client's X-Request-ID when it is a sane one, else a new id."""
    return incoming if _REQUEST_ID_RE.match(incoming) else uuid.uuid4().hex


def _nul_in_query(request):
    # PostgreSQL text cannot hold NUL: a `q=%00` would fail in SQL as a 500. Refused here
    # once for every endpoint and page (JSON bodies meet DRF's own NUL check, forms
    # Django's, and siphera.api_errors.handler500 turns any other DataError into a 400).
    message = "The query string holds a NUL character (%00)."
    if request.path.startswith(("/api/", "/scim/")):
        return json_error(400, "invalid_request", message)
    return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")


class TenantMiddleware(TenantMainMiddleware):
    """django-tenants' middleware with our lookup (siphera.tenancy.org_for_host: active orgs,
    ALLOWED_HOSTS) and a JSON 404 `unknown_org` for a host no org answers."""

    def process_request(self, request):
        connection.set_schema_to_public()
        host = request.META.get("HTTP_HOST", "")
        org = org_for_host(host)
        if org is None:
            return error_response(unknown_org())
        org.domain_url = normalize_host(host)
        request.tenant = org
        connection.set_tenant(org)
        org_var.set(org.slug)
        self.setup_url_routing(request)
        return None


class OrgCsrfMiddleware(CsrfViewMiddleware):
    """Django's CSRF check, also trusting `https://<host>` for the org host the request
    came to.

    Behind a proxy that ends TLS, Django sees plain http and expects the Origin
    `http://<host>`, while browsers send `https://<host>`; Django would accept that only
    from CSRF_TRUSTED_ORIGINS, a list read at start-up, so a host name added with
    `add_domain` got 403s until the list was edited and the server restarted. The host was
    matched against the Domain table for this very request (TenantMiddleware), so trusting
    its https origin follows the table at once, without a query or a cache of its own: an
    added host works immediately, a removed one no longer routes at all. Nothing else is
    trusted beyond Django's rules: not the org's other hosts, not another org's.
    """

    def _origin_verified(self, request):
        if super()._origin_verified(request):
            return True
        host = getattr(getattr(request, "tenant", None), "domain_url", None)
        if not host:
            return False
        trusted = {f"https://{host}", f"https://{host}:443"}
        with contextlib.suppress(DisallowedHost):
            trusted.add(f"https://{request.get_host()}")  # the proxy on another port
        return request.META["HTTP_ORIGIN"] in trusted


class PortalMessageMiddleware(MessageMiddleware):
    """Django's messages (the portal's one-time notices) everywhere but the client API and
    SCIM, which never show them: setting up their storage (a cookie and a session store)
    was a noticeable share of an API request's time."""

    def process_request(self, request):
        if not request.path.startswith(("/api/", "/scim/")):
            super().process_request(request)
