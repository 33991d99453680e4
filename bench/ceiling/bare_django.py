"""The ceiling the HTTP benchmark (bench/api.py) measures Siphera against: Django with one
async view answering a small JSON body, no middleware, no database, under the same
uvicorn. Whatever Siphera's request path costs beyond this is ours to explain.

    python -m uvicorn bench.ceiling.bare_django:application --port 8001
"""

from __future__ import annotations

import django
from django.conf import settings
from django.http import JsonResponse
from django.urls import path

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-only-not-a-secret",  # noqa: S106 (signs nothing)
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        USE_TZ=True,
    )
    django.setup()


async def ping(request):
    return JsonResponse({"user_id": "00000000-0000-0000-0000-000000000000", "ok": True})


urlpatterns = [path("ping", ping)]

from django.core.asgi import get_asgi_application  # noqa: E402

application = get_asgi_application()
