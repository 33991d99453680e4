"""REST endpoints of calls under /api/v1/ (TURN credentials, call records, group rooms)."""

from django.urls import path

from calls.api import turn_views

urlpatterns: list = [
    path("calls/turn", turn_views.TurnCredentialsView.as_view(), name="calls-turn"),
]
