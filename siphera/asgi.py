"""ASGI entry point: HTTP through Django (tenant middleware), WebSocket /ws/v1 through the
tenant-resolving ASGI middleware and the client consumer."""

import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "siphera.settings")

from siphera.handler import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from siphera.body_limit import BodyLimitMiddleware  # noqa: E402
from siphera.consumer import ClientConsumer  # noqa: E402
from siphera.fast_http import FastHttpMiddleware  # noqa: E402
from siphera.metrics.asgi import MetricsMiddleware  # noqa: E402
from siphera.ws import TenantWebSocketMiddleware  # noqa: E402

application = ProtocolTypeRouter(
    {
        # Bodies over the limit are refused before Django spools them (siphera.body_limit);
        # every answer is counted, and /metrics answered (siphera.metrics.asgi); the
        # hottest API requests are served without Django's machinery (siphera.fast_http).
        "http": MetricsMiddleware(BodyLimitMiddleware(FastHttpMiddleware(django_asgi_app))),
        "websocket": TenantWebSocketMiddleware(
            URLRouter([path("ws/v1", ClientConsumer.as_asgi())])
        ),
    }
)

# Everything loaded so far (Django, the apps, the URL and model registries: about 100,000
# objects) lives as long as the process. Frozen, the cyclic garbage collector no longer
# walks it at each full collection, which had stopped the event loop, and every socket of
# the process, for 106-123 ms at a time in the bench (16 ms once frozen).
gc.freeze()
