"""The HTTP handler: Django's ASGI handler with the middleware and view run in one thread.

Django's ASGIHandler builds an async middleware chain. Ours (like most of Django's own
middleware and DRF's views) is synchronous, so each request went event loop -> a thread
for the sync middleware -> back to the event loop (async_to_sync) for URL resolution ->
another thread for the view: three hand-overs between threads and the loop per request,
each a context switch and a few hundred microseconds of asgiref bookkeeping under load.
Here the whole chain is built synchronous, as under WSGI, and run with one sync_to_async
per request: what the request needs from the loop (reading the body, sending the
response, streaming an async iterator) stays with ASGIHandler. An async view, should one
appear, still works (Django wraps it in async_to_sync).
"""

from __future__ import annotations

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


class SipheraASGIHandler(ASGIHandler):
    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)

    async def get_response_async(self, request):
        # thread_sensitive: inside ASGIHandler's per-request ThreadSensitiveContext, so each
        # request gets a thread of its own, as Django gives each sync view today.
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


def get_asgi_application() -> SipheraASGIHandler:
    """django.core.asgi.get_asgi_application, with the handler above."""
    django.setup(set_prefix=False)
    return SipheraASGIHandler()
