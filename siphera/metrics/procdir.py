"""Where a process's metric values live: prometheus-client's multiprocess mode.

Web processes (`python -m siphera.serve`, `WEB_WORKERS` uvicorn processes) and Celery
worker processes (a prefork pool) each count in memory-mapped files of one directory, and
whichever process answers a scrape adds them all up (siphera.metrics.exposition). The
directory is `$METRICS_DIR/web` for the web processes and `$METRICS_DIR/worker` for a
worker, each emptied when its process type starts (stale files of an earlier run would
otherwise be added in); without METRICS_DIR each start gets a private temporary directory,
removed at exit. Two `siphera.serve` (or two `celery worker`) sharing one METRICS_DIR on a
host would empty each other's files: give each its own.

This module must not import prometheus-client: `prepare` sets PROMETHEUS_MULTIPROC_DIR,
which prometheus-client reads when it is first imported.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import sys
import tempfile


def prepare(kind: str) -> str:
    """Make and empty this process type's directory (`kind`: "web" or "worker") and point
    PROMETHEUS_MULTIPROC_DIR at it, for this process and the ones it starts. Returns it.
    Call before prometheus-client is imported; afterwards it is too late (the values of
    this process would stay in its memory) and this raises RuntimeError."""
    if "prometheus_client" in sys.modules:
        raise RuntimeError("siphera.metrics.procdir.prepare: prometheus_client already imported")
    root = os.environ.get("METRICS_DIR", "").strip()
    if root:
        path = os.path.join(root, kind)
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    else:
        path = tempfile.mkdtemp(prefix=f"siphera-metrics-{kind}-")
        starter = os.getpid()
        # Only the process that made it removes it (forked children run atexit too).
        atexit.register(lambda: os.getpid() == starter and shutil.rmtree(path, True))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path
