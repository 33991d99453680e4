"""The caller's own presence status (`/me/presence`): do-not-disturb or away, until a time
or until cleared. Others' presence is only pushed, over the socket (docs/protocol.md)."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from orgs.api.permissions import AUTHENTICATED, require
from orgs.services import presence
from siphera.api_errors import ApiError

ERROR = OpenApiResponse(description='{"error": {"code", "message"}}')


class StatusRequestSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=list(presence.STATUSES), allow_null=True)
    until = serializers.DateTimeField(
        required=False, allow_null=True, help_text="When the status ends (null: never)."
    )


class OwnPresenceSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=list(presence.STATUSES), allow_null=True)
    until = serializers.DateTimeField(allow_null=True)
    state = serializers.CharField(help_text="What others see: online, idle, dnd, in_call, …")


class MyPresenceView(APIView):
    permission_classes = [require(AUTHENTICATED)]  # the caller's own status only

    @extend_schema(responses={200: OwnPresenceSerializer}, tags=["presence"])
    def get(self, request):
        return Response(presence.own_presence(request.user))

    @extend_schema(
        request=StatusRequestSerializer,
        responses={200: OwnPresenceSerializer, 400: ERROR},
        tags=["presence"],
    )
    def put(self, request):
        body = request.data
        if not isinstance(body, dict) or "status" not in body:
            raise ApiError(400, "invalid_request", '`status` is "dnd", "away" or null.')
        own = presence.check_set_status(request.user, body["status"], body.get("until"))
        return Response(own)
