"""Group calls on the SFU (LiveKit): rooms and tokens, moderation, and LiveKit's webhook.

Views parse, authorize and call calls.services.rooms / room_events.
"""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from calls.services import livekit, room_events, rooms
from orgs.api.permissions import Public, require
from orgs.roles import Perm
from orgs.services import audit
from siphera.api_errors import ApiError

ERROR = OpenApiResponse(description='{"error": {"code", "message"}}')
NOT_CONFIGURED = OpenApiResponse(
    description="`livekit_not_configured`: this server has no SFU; `livekit_unavailable`: "
    "LiveKit did not answer (Retry-After)."
)
# LiveKit's events are a few KiB (participant metadata is not granted to clients).
WEBHOOK_MAX_BYTES = 64 * 1024


class RoomOpenSerializer(serializers.Serializer):
    conversation = serializers.UUIDField(
        required=False, allow_null=True, help_text="Omit for an ad hoc room."
    )
    media = serializers.ChoiceField(choices=list(rooms.MEDIA))
    name = serializers.CharField(
        required=False, allow_blank=True, max_length=100, help_text="Shown to the others."
    )


class RoomJoinSerializer(serializers.Serializer):
    name = serializers.CharField(required=False, allow_blank=True, max_length=100)


class RoomAccessSerializer(serializers.Serializer):
    call_id = serializers.UUIDField()
    conversation = serializers.UUIDField(allow_null=True)
    media = serializers.CharField()
    room = serializers.CharField(help_text="`<org schema>.<call id>`")
    url = serializers.CharField(help_text="LiveKit's URL: connect there with `token`.")
    token = serializers.CharField(help_text="LiveKit access token for this room only.")
    ttl = serializers.IntegerField(help_text="Seconds the token can be used to connect.")


class RoomParticipantSerializer(serializers.Serializer):
    identity = serializers.CharField(help_text="`<user id>:<device id>`")
    user_id = serializers.UUIDField(allow_null=True)
    device_id = serializers.IntegerField(allow_null=True)
    name = serializers.CharField()
    joined_at = serializers.DateTimeField(allow_null=True)
    publishing = serializers.BooleanField()


def _no_store(response: Response) -> Response:
    response["Cache-Control"] = "private, no-store"  # carries a token
    return response


class RoomsView(APIView):
    permission_classes = [IsAuthenticated, require(Perm.CALLS_USE)]

    @extend_schema(
        request=RoomOpenSerializer,
        responses={
            201: RoomAccessSerializer,
            200: RoomAccessSerializer,
            400: ERROR,
            403: ERROR,
            404: ERROR,
            503: NOT_CONFIGURED,
        },
        tags=["calls"],
        description=(
            "Start a group call and get a token for its room: in a conversation (members "
            "only; 200 with the live call when one is already running) or ad hoc (needs "
            "`directory.view`)."
        ),
    )
    def post(self, request):
        form = RoomOpenSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        access, created = rooms.check_open_room(
            request.user,
            request.auth.device_id,
            conversation_id=form.validated_data.get("conversation"),
            media=form.validated_data["media"],
            name=form.validated_data.get("name", ""),
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return _no_store(Response(access.payload(), status=code))


class RoomTokenView(APIView):
    permission_classes = [IsAuthenticated, require(Perm.CALLS_USE)]

    @extend_schema(
        request=RoomJoinSerializer,
        responses={
            200: RoomAccessSerializer,
            400: ERROR,
            404: ERROR,
            410: ERROR,
            503: NOT_CONFIGURED,
        },
        tags=["calls"],
        description="A token to join a live group call (410 `call_ended` once it finished).",
    )
    def post(self, request, call_id):
        form = RoomJoinSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        access = rooms.check_join_room(
            request.user,
            request.auth.device_id,
            call_id,
            name=form.validated_data.get("name", ""),
        )
        return _no_store(Response(access.payload()))


class RoomParticipantsView(APIView):
    permission_classes = [IsAuthenticated, require(Perm.CALLS_MANAGE)]

    @extend_schema(
        responses={200: RoomParticipantSerializer(many=True), 404: ERROR, 503: NOT_CONFIGURED},
        tags=["calls"],
        description="Who is in a group call's room now (LiveKit's room service).",
    )
    def get(self, request, call_id):
        call = rooms.access_call_for_moderation(call_id)
        return Response(rooms.room_participants(call))


class RoomParticipantDetailView(APIView):
    permission_classes = [IsAuthenticated, require(Perm.CALLS_MANAGE)]

    @extend_schema(
        responses={204: None, 404: ERROR, 503: NOT_CONFIGURED},
        tags=["calls"],
        description=(
            "Disconnect a participant (`<user id>:<device id>`) from the room; audited as "
            "`call.participant_removed`. A kick, not a ban."
        ),
    )
    def delete(self, request, call_id, identity):
        call = rooms.access_call_for_moderation(call_id)
        rooms.check_remove_participant(call, identity, actor=audit.Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class LiveKitWebhookView(APIView):
    # LiveKit signs each post with our API key (a JWT carrying the body's sha256) instead
    # of authenticating as a user: no device token, no session.
    authentication_classes: list = []
    permission_classes = [Public]

    @extend_schema(
        request=None,
        responses={204: None, 401: ERROR, 404: ERROR, 413: ERROR, 503: NOT_CONFIGURED},
        tags=["calls"],
        description=(
            "LiveKit's webhook (`application/webhook+json`, `Authorization: <JWT>`). "
            "participant_joined / participant_left / room_finished update the call record."
        ),
    )
    def post(self, request):
        cfg = livekit.config()
        body = _bounded_body(request)
        try:
            event = livekit.verify_webhook(cfg, body, request.headers.get("Authorization", ""))
        except livekit.BadSignature:
            raise ApiError(401, "bad_signature", "The webhook signature does not verify.") from None
        room_events.do_apply_webhook(event)
        return Response(status=status.HTTP_204_NO_CONTENT)


def _bounded_body(request) -> bytes:
    """The raw body, at most WEBHOOK_MAX_BYTES (413 beyond, before reading it whole)."""
    too_large = ApiError(
        413, "payload_too_large", f"A webhook body is at most {WEBHOOK_MAX_BYTES} bytes."
    )
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > WEBHOOK_MAX_BYTES:
        raise too_large
    body = request._request.read(WEBHOOK_MAX_BYTES + 1)
    if len(body) > WEBHOOK_MAX_BYTES:
        raise too_large
    return body
