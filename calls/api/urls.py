"""REST endpoints of calls under /api/v1/ (TURN credentials, call records, group rooms)."""

from django.urls import path

from calls.api import record_views, recording_views, room_views, turn_views

urlpatterns: list = [
    path("calls", record_views.CallsView.as_view(), name="calls"),
    path("org/calls", record_views.OrgCallsView.as_view(), name="org-calls"),
    # Compliance recordings (recordings.read) and their policy (compliance.manage)
    path("org/recordings", recording_views.RecordingsView.as_view(), name="org-recordings"),
    path(
        "org/recordings/<str:recording_id>/audio",
        recording_views.RecordingAudioView.as_view(),
        name="org-recording-audio",
    ),
    path(
        "org/recordings/<str:recording_id>/transcript",
        recording_views.RecordingTranscriptView.as_view(),
        name="org-recording-transcript",
    ),
    path(
        "org/recording-policy",
        recording_views.RecordingPolicyView.as_view(),
        name="org-recording-policy",
    ),
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
