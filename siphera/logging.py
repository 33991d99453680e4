"""JSON log lines carrying the request id and org, scrubbed of secrets.

Nothing in Siphera logs request bodies, message content, keys or tokens on purpose; the
redaction filter is the second line of defence for anything a library might print.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import traceback
from datetime import UTC, datetime

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
org_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("org", default=None)
# Set by siphera.ws.refuse_handshake_unavailable in the task uvicorn runs the app in, so the
# outage filter below knows the handshake was answered (with a 503).
handshake_refused_var: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "handshake_refused", default=False
)

# Secrets are found by what they look like, wherever they turn up (a path, a query string,
# an exception, an extra field), so one function scrubs every line:
# - our bearer secrets, by prefix (orgs.services.tokens): invitations `sph_i_`, device
#   tokens `sph_d_`, login grants `sph_g_`, SSO one-time codes `sph_c_`, SCIM tokens
#   `sph_s_`, MFA enrolment tokens `sph_e_`, and any later `sph_<x>_`;
# - credentials after an HTTP auth scheme (`Authorization: Bearer|Grant|Basic|Enrollment …`);
# - URL/form parameters that carry one: OAuth/OIDC `code`, `state` and tokens, SAML's
#   `SAMLResponse`, `SAMLRequest`, `RelayState`, PKCE verifiers, passwords;
# - `password=…`/`"token": …`-style pairs in free text.
SECRET_PARAMETERS = (
    "code",
    "state",
    "code_verifier",
    "samlresponse",
    "samlrequest",
    "relaystate",
    "token",
    "access_token",
    "id_token",
    "refresh_token",
    "client_secret",
    "enrollment_token",
    "grant",
    "password",
    "otp",
)
# Extra fields (`extra={...}`) whose whole value is a secret, whatever it looks like.
SECRET_FIELDS = frozenset(
    {"authorization", "cookie", "password", "secret", "token", "grant", "otp", *SECRET_PARAMETERS}
    - {"code", "state"}  # as fields these name error codes and states, not secrets
)
REDACTED = "[redacted]"
_SECRET_PATTERNS = [
    (re.compile(r"sph_[a-z]+_[A-Za-z0-9_\-]+"), REDACTED),
    (
        re.compile(r"(?i)\b(bearer|grant|basic|enrollment)(\s+)[A-Za-z0-9_\-\.=+/~]+"),
        rf"\1\2{REDACTED}",
    ),
    (
        re.compile(r"(?i)([?&;](?:" + "|".join(SECRET_PARAMETERS) + r")=)[^&;#\s\"']*"),
        rf"\1{REDACTED}",
    ),
    (
        re.compile(
            r"(?i)(password|token|secret|otp|signature)([\"']?\s*[:=]\s*[\"']?)[^\s\"',}&]+"
        ),
        rf"\1\2{REDACTED}",
    ),
]


# Every pattern above needs one of these (case-insensitively): most text, such as every
# access line's path and method, holds none, and looking for them costs a twentieth of the
# substitutions.
_MARKERS = ("sph_", "bearer", "grant", "basic", "enrollment", "=", "password", "token")
_MARKERS += ("secret", "otp", "signature")


def redact(text: str) -> str:
    """`text` with every secret it contains replaced by `[redacted]`."""
    if text.isascii():  # (?i) also folds some non-ASCII letters: those take the long way
        lowered = text.lower()
        if not any(marker in lowered for marker in _MARKERS):
            return text
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_field(name: str, value):
    """An extra field's value with secrets replaced: all of it for a field named like a
    secret, otherwise every string inside it (nested dicts and lists included)."""
    if name.lower() in SECRET_FIELDS and value not in (None, ""):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_field(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_field(name, v) for v in value]
    return value


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.org = org_var.get()
        return True


_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "request_id",
    "org",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of msg
}


class RedactFilter(logging.Filter):
    """Scrubs the message and every extra field of a record before any handler writes it
    (the access log's `path` is where invitation tokens used to show); the formatter
    scrubs tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_"):
                setattr(record, key, redact_field(key, value))
        return True


class OutageFilter(logging.Filter):
    """Keeps an outage's expected answers out of the error level, where an operator looks
    for bugs:

    - Django logs each 5xx response at error level with the exception's traceback. A 503
      is the answer we chose (the database, Redis or the key ring unavailable:
      siphera.api_errors; /ready while a dependency is down), and siphera.db has logged
      the cause already: it becomes a warning line with the exception's one-line summary.
    - uvicorn's websockets-sansio protocol logs "ASGI callable returned without completing
      handshake" after every handshake answered with an HTTP response (ASGI's
      `websocket.http.response`), though the client got it: dropped when this task
      refused the handshake itself (`handshake_refused_var`), kept otherwise.
    """

    UVICORN_NO_HANDSHAKE = "ASGI callable returned without completing handshake."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "uvicorn.error":
            return not (record.msg == self.UVICORN_NO_HANDSHAKE and handshake_refused_var.get())
        if record.name == "django.request" and getattr(record, "status_code", None) == 503:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            if record.exc_info and record.exc_info[1] is not None:
                error = record.exc_info[1]
                record.error = f"{type(error).__name__}: {str(error).strip()[:500]}"
                record.exc_info = record.exc_text = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        if getattr(record, "org", None):
            entry["org"] = record.org
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = redact("".join(traceback.format_exception(*record.exc_info)))
        return json.dumps(entry, default=str)


def config(level: str = "INFO") -> dict:
    """The logging configuration of every process: JSON lines on stderr, with the request
    id and org, scrubbed of secrets. Django's LOGGING (siphera.settings) and uvicorn's
    log_config (siphera.serve) are both this, so uvicorn's own lines (a WebSocket's path and
    query, an exception in the app) pass the same filter."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "siphera.logging.ContextFilter"},
            "redact": {"()": "siphera.logging.RedactFilter"},
            "outage": {"()": "siphera.logging.OutageFilter"},
        },
        "formatters": {"json": {"()": "siphera.logging.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "filters": ["context", "redact"],
            }
        },
        "root": {"handlers": ["stderr"], "level": level},
        "loggers": {
            # We log requests ourselves; 503s are warnings (OutageFilter).
            "django.request": {"level": "ERROR", "filters": ["outage"]},
            "django.server": {"level": "WARNING"},
            "uvicorn": {"level": "INFO"},
            "uvicorn.access": {"level": "WARNING"},
            "uvicorn.error": {"level": "INFO", "filters": ["outage"]},
            "celery": {"level": "INFO"},
        },
    }
