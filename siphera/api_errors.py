"""One error shape for the whole API: {"error": {"code", "message"}, ...extra}."""

from __future__ import annotations

import logging
import sys
from typing import Any

from django.db import DataError, InterfaceError, OperationalError
from django.http import JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response


class ApiError(exceptions.APIException):
    """Raise from services or views: becomes a JSON error with a machine-readable code."""

    def __init__(
        self,
        status_code: int,
        code: str,
        message: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail=message, code=code)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.extra = extra or {}
        self.headers = headers or {}


def not_found(message: str = "Not found.") -> ApiError:
    return ApiError(404, "not_found", message)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}, **extra}


def json_error(status_code: int, code: str, message: str, **extra: Any) -> JsonResponse:
    return JsonResponse(error_body(code, message, **extra), status=status_code)


def error_response(exc: ApiError) -> JsonResponse:
    """An ApiError answered outside DRF (middleware): its body and headers."""
    response = json_error(exc.status_code, exc.code, exc.message, **exc.extra)
    for name, value in exc.headers.items():
        response[name] = value
    return response


_DRF_CODES = {
    exceptions.ParseError: "malformed_json",
    exceptions.NotAuthenticated: "unauthenticated",
    exceptions.AuthenticationFailed: "unauthenticated",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
    exceptions.NotAcceptable: "not_acceptable",
}


def exception_handler(exc, context):
    """DRF exception handler producing the error shape above."""
    if isinstance(exc, ApiError):
        response = Response(error_body(exc.code, exc.message, **exc.extra), status=exc.status_code)
        for name, value in exc.headers.items():
            response[name] = value
        return response

    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # a real bug: Django's 500 handler (JSON for /api) takes it
    if isinstance(exc, exceptions.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        response.data = error_body("invalid_request", _first_message(fields), fields=fields)
        response.status_code = status.HTTP_400_BAD_REQUEST
        return response
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if code == "unauthenticated":
        response.status_code = status.HTTP_401_UNAUTHORIZED
        response["WWW-Authenticate"] = "Bearer"
    response.data = error_body(code, str(detail))
    return response


def _first_message(fields: dict) -> str:
    for name, errors in fields.items():
        first = errors[0] if isinstance(errors, list) and errors else errors
        if isinstance(first, dict):
            return f"{name}: {_first_message(first)}"
        return f"{name}: {first}"
    return "Invalid request."


def handler404(request, exception=None):
    """JSON for the API; an HTML page everywhere else (the portal, a browser at "/x")."""
    if request.path.startswith("/api/"):
        return json_error(404, "not_found", "Not found.")
    from django.http import HttpResponseNotFound
    from django.template.loader import render_to_string

    response = HttpResponseNotFound(render_to_string("404.html", request=request))
    response["Content-Security-Policy"] = "default-src 'self'; script-src 'none'"
    return response


DATABASE_RETRY_AFTER = 5  # seconds a client waits before retrying a 503 database_unavailable


def handler500(request):
    """JSON 500 for a bug; a 400 `invalid_request` for a value the database refused; a
    503 `database_unavailable` with `Retry-After` when the database cannot be reached
    (down, restarting, out of connections): the client should retry, and nothing was
    half-written (each request's writes are one transaction).
    Likewise a 503 `redis_unavailable` for the few requests that cannot do without Redis
    (siphera.redis_outage; most do without it), and a 503 `key_ring_unavailable` while
    the process has no usable key ring (siphera.keyring)."""
    from siphera import redis_outage
    from siphera.keyring import KeyRingError

    exc = sys.exc_info()[1]
    if isinstance(exc, DataError):
        # A value PostgreSQL cannot take (a NUL character, a string longer than its
        # column, a number out of its type's range) that no check caught: the client's
        # input, not a server fault. The request's transaction is rolled back.
        logging.getLogger("siphera.db").warning("value refused by the database: %s", exc)
        return json_error(
            400, "invalid_request", "A value in the request cannot be stored as sent."
        )
    if isinstance(exc, (OperationalError, InterfaceError)):
        logging.getLogger("siphera.db").warning("database unavailable: %s", exc)
        response = json_error(
            503, "database_unavailable", "The database is unavailable; retry shortly."
        )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER)
        return response
    if isinstance(exc, KeyRingError):
        # The process has no usable key ring (siphera.keyring logged why, and /ready
        # says so): nothing can be encrypted or audited until the file is fixed.
        logging.getLogger("siphera.keyring").error("key ring unusable: %s", exc)
        response = json_error(
            503, "key_ring_unavailable", "The server cannot use its keys; retry shortly."
        )
        response["Retry-After"] = str(DATABASE_RETRY_AFTER)
        return response
    if isinstance(exc, redis_outage.REDIS_ERRORS):
        redis_outage.failed(exc, where="request")
        response = json_error(
            503, "redis_unavailable", "A service the server needs is unavailable; retry shortly."
        )
        response["Retry-After"] = str(redis_outage.RETRY_AFTER)
        return response
    return json_error(500, "internal_error", "Internal server error.")
