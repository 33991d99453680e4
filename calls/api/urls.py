"""REST endpoints of calls under /api/v1/ (TURN credentials, call records, group rooms)."""

from django.urls import path

from calls.api import record_views, room_views, turn_views

urlpatterns: list = [
    path("calls", record_views.CallsView.as_view(), name="calls"),
    path("org/calls", record_views.OrgCallsView.as_view(), name="org-calls"),
    path("calls/turn", turn_views.TurnCredentialsView.as_view(), name="calls-turn"),
    # Group calls on the SFU (LiveKit)
    path("calls/rooms", room_views.RoomsView.as_view(), name="calls-rooms"),
    path(
        "calls/rooms/<str:call_id>/token",
        room_views.RoomTokenView.as_view(),
        name="calls-room-token",
    ),
    path(
        "calls/rooms/<str:call_id>/participants",
        room_views.RoomParticipantsView.as_view(),
        name="calls-room-participants",
    ),
    path(
        "calls/rooms/<str:call_id>/participants/<str:identity>",
        room_views.RoomParticipantDetailView.as_view(),
        name="calls-room-participant",
    ),
    path("calls/livekit/webhook", room_views.LiveKitWebhookView.as_view(), name="livekit-webhook"),
]
