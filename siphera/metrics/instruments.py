"""The metrics Siphera exports, in one place (docs/operations.md lists them).

Incrementing one costs a lock and a write to a memory-mapped file (multiprocess mode) or
to memory: no I/O, nothing per org. Labels are bounded by code: a status class, a rate
limit's name, a task's name; never an org, a user or a device.

Queue depth is not counted here: it is read from PostgreSQL when scraped
(siphera.metrics.exposition).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WEBSOCKETS_OPEN = Gauge(
    "siphera_websockets_open",
    "Client WebSockets (/ws/v1) accepted and not yet closed, authenticated or not.",
    multiprocess_mode="livesum",
)
MESSAGES_SENT = Counter(
    "siphera_messages_sent",
    "Messages accepted (REST or socket `send`); a retry of a stored one is not counted.",
)
MESSAGES_DELIVERED = Counter(
    "siphera_messages_delivered",
    "Message frames handed to a device (socket, or the REST queue); a redelivery of an "
    "unacknowledged message counts again.",
)
MESSAGES_ACKED = Counter(
    "siphera_messages_acked",
    "Queue entries removed by a device's acknowledgement.",
)
DELIVERY_SECONDS = Histogram(
    "siphera_message_delivery_seconds",
    "From the server accepting a message to its frame being sent on a recipient's socket, "
    "for sockets that had drained their backlog (a device that was offline is not timed).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RATE_LIMIT_REFUSALS = Counter(
    "siphera_rate_limit_refusals",
    "Requests, frames or handshakes refused by a rate limit, by the limit's name.",
    ["limit"],
)
HTTP_REQUESTS = Counter(
    "siphera_http_requests",
    "HTTP requests answered, by status class (`aborted`: the client left before an answer).",
    ["status"],
)
FAST_HTTP_REQUESTS = Counter(
    "siphera_fast_http_requests",
    "Requests to a fast-path route (siphera.fast_http), by route and outcome: `served` by "
    "the fast path, `declined` (handed to Django: a case the route does not expect).",
    ["route", "outcome"],
)
TASK_SECONDS = Histogram(
    "siphera_celery_task_seconds",
    "Celery task run time, by task name and outcome (success, failure, retry).",
    ["task", "state"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0),
)
TASK_FAILURES = Counter(
    "siphera_celery_task_failures",
    "Celery task runs that raised, by task name.",
    ["task"],
)

# The per-request children, bound once: `labels()` takes a lock and a dict lookup.
HTTP_BY_CLASS = {n: HTTP_REQUESTS.labels(f"{n}xx") for n in (1, 2, 3, 4, 5)}
HTTP_ABORTED = HTTP_REQUESTS.labels("aborted")
_refusals: dict = {}


def rate_limited(name: str) -> None:
    """Count one refusal by the limit `name` (a name from the code, never an identity)."""
    child = _refusals.get(name)
    if child is None:
        child = _refusals[name] = RATE_LIMIT_REFUSALS.labels(name)
    child.inc()
