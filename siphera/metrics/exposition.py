"""What a scrape answers, and who may scrape.

The answer adds up every process's values from the multiprocess directory
(siphera.metrics.procdir), skipping the live gauges of processes that are gone (a web
process killed without a clean exit), and reads the queue depth from PostgreSQL's table
statistics: one query for every org schema together, whatever the number of orgs.

Scraping needs METRICS_TOKEN as a bearer token, or a client address in
METRICS_ALLOWED_NETWORKS; with neither set, metrics are not served at all.
"""

from __future__ import annotations

import glob
import hmac
import ipaddress
import logging
import os
from functools import cache

from django.conf import settings
from django.db import connection
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

log = logging.getLogger("siphera.metrics")

QUEUE_TABLE = "messaging_queuedmessage"


def enabled() -> bool:
    return bool(settings.METRICS_TOKEN or settings.METRICS_ALLOWED_NETWORKS)


@cache
def _networks(spec: tuple[str, ...]):
    return [ipaddress.ip_network(n, strict=False) for n in spec]


def allowed(authorization: str | None, client_ip: str | None) -> bool:
    """Whether a scrape with this Authorization header from this address is answered."""
    token = settings.METRICS_TOKEN
    if token and authorization:
        scheme, _, given = authorization.partition(" ")
        # As bytes: compare_digest refuses a str with non-ASCII characters (a 500 then).
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            return True
    if client_ip and settings.METRICS_ALLOWED_NETWORKS:
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        return any(address in n for n in _networks(tuple(settings.METRICS_ALLOWED_NETWORKS)))
    return False


class _Processes:
    """Every process's values from the multiprocess directory, as one set of metrics."""

    def __init__(self, path: str):
        self.path = path

    def collect(self):
        files = []
        for name in glob.glob(os.path.join(self.path, "*.db")):
            base = os.path.basename(name)
            if base.startswith("gauge_live"):
                pid = int(base.rsplit("_", 1)[1].removesuffix(".db"))
                if not _alive(pid):
                    mark_process_dead(pid, self.path)
                    continue
            files.append(name)
        return MultiProcessCollector.merge(files, accumulate=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _QueueDepth:
    def collect(self):
        depth = queue_depth()
        if depth is not None:
            yield GaugeMetricFamily(
                "siphera_message_queue_depth",
                "Messages queued for devices and not yet acknowledged, all orgs together "
                "(PostgreSQL's live-row statistics: seconds behind, an estimate after a crash).",
                value=depth,
            )


def queue_depth() -> int | None:
    """Queue rows of every org schema, from PostgreSQL's statistics (one catalog query;
    None if the database cannot answer)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(sum(n_live_tup), 0) FROM pg_catalog.pg_stat_user_tables"
                " WHERE relname = %s",
                [QUEUE_TABLE],
            )
            return int(cursor.fetchone()[0])
    except Exception:  # a scrape reports what it can
        log.warning("metrics.queue_depth_failed", exc_info=True)
        return None


class _ThisProcess:
    """A process started without siphera.serve (no multiprocess directory): its own values."""

    def collect(self):
        from prometheus_client import REGISTRY

        return REGISTRY.collect()


def render(*, queue: bool = True) -> bytes:
    """The text exposition of every metric (sync: reads files and, with `queue`, the
    database)."""
    registry = CollectorRegistry()
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    registry.register(_Processes(path) if path else _ThisProcess())
    if queue:
        registry.register(_QueueDepth())
    return generate_latest(registry)
