"""Celery app. Tasks run in the schema they were sent from (tenant-schemas-celery); beat
runs in `public`, so each periodic job is a dispatcher that fans out one task per org."""

import os
import sys

from tenant_schemas_celery.app import CeleryApp

from siphera.metrics import worker as _metrics_worker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "siphera.settings")

app = CeleryApp("siphera")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Task run times and failures; a worker's metrics directory and endpoint.
_metrics_worker.prepare_if_worker(sys.argv)
