"""A Celery worker's metrics: task run times and failures (Celery's signals), counted in
every pool process, and served by the worker on CELERY_METRICS_PORT.

Connected from siphera.celery, so every process that loads the Celery app has these
handlers; only a worker fires them. This module must not import prometheus-client at
import time (siphera.metrics.procdir): the handlers import the metrics when they first run.
"""

from __future__ import annotations

import logging
import socketserver
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from celery import signals

from siphera.metrics import procdir

log = logging.getLogger("siphera.metrics")

_started: dict[str, float] = {}  # task id -> time.monotonic() at its start


def prepare_if_worker(argv: list[str]) -> None:
    """In a `celery ... worker` process, choose the worker's metrics directory now: the
    Celery app is loaded before Django and anything that imports prometheus-client (the
    worker's own signals come too late for that), and the pool's processes inherit it."""
    if "worker" in argv[1:]:
        procdir.prepare("worker")


@signals.celeryd_init.connect
def _worker_starting(sender=None, **kwargs) -> None:
    """In the worker's main process, before its pool starts: serve the pool's metrics if
    asked to."""
    from django.conf import settings

    port = settings.CELERY_METRICS_PORT
    if not port:
        return
    if not (settings.METRICS_TOKEN or settings.METRICS_ALLOWED_NETWORKS):
        log.warning(
            "metrics.worker_not_served",
            extra={
                "reason": "CELERY_METRICS_PORT is set but neither METRICS_TOKEN nor "
                "METRICS_ALLOWED_NETWORKS"
            },
        )
        return
    serve(settings.CELERY_METRICS_HOST, port)


@signals.task_prerun.connect
def _task_started(task_id=None, **kwargs) -> None:
    _started[task_id] = time.monotonic()


@signals.task_postrun.connect
def _task_ended(task_id=None, task=None, state=None, **kwargs) -> None:
    started = _started.pop(task_id, None)
    if started is None or task is None:
        return
    from siphera.metrics.instruments import TASK_SECONDS

    TASK_SECONDS.labels(task.name, str(state or "unknown").lower()).observe(
        time.monotonic() - started
    )


@signals.task_failure.connect
def _task_failed(sender=None, **kwargs) -> None:
    from siphera.metrics.instruments import TASK_FAILURES

    TASK_FAILURES.labels(getattr(sender, "name", "unknown")).inc()


# --- the worker's own endpoint -------------------------------------------------------------

_NOT_FOUND = b'{"error": {"code": "not_found", "message": "Not found."}}'


def _app(environ, start_response):
    from prometheus_client import CONTENT_TYPE_LATEST

    from siphera.metrics import exposition

    if environ.get("PATH_INFO") != "/metrics" or not exposition.allowed(
        environ.get("HTTP_AUTHORIZATION"), environ.get("REMOTE_ADDR")
    ):
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [_NOT_FOUND]
    body = exposition.render(queue=False)  # the queue depth is the web's to report
    start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Cache-Control", "no-store")])
    return [body]


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass  # a scrape every 15 s is not worth a log line


def serve(host: str, port: int) -> WSGIServer:
    """Serve the worker's /metrics on a daemon thread of this process."""
    server = make_server(host, port, _app, server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics.worker_serving", extra={"host": host, "port": server.server_port})
    return server
