"""REST endpoints of calls under /api/v1/ (TURN credentials, call records, group rooms)."""

from django.urls import path  # noqa: F401

urlpatterns: list = []
