"""GET /api/v1/calls/turn: short-lived TURN credentials for the calling device's user."""

from dataclasses import asdict

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from calls.services import turn
from orgs.api.permissions import require
from orgs.roles import Perm

ERROR = OpenApiResponse(description='{"error": {"code", "message"}}')


class TurnCredentialsSerializer(serializers.Serializer):
    """Shaped like WebRTC's RTCIceServer, plus `ttl`: a client passes it on as it is."""

    urls = serializers.ListField(child=serializers.CharField())
    username = serializers.CharField(help_text='"<unix time it expires>:<user id>"')
    credential = serializers.CharField(help_text="base64(HMAC-SHA1(secret, username))")
    ttl = serializers.IntegerField(help_text="Seconds the credential stays usable.")


class TurnCredentialsView(APIView):
    permission_classes = [IsAuthenticated, require(Perm.CALLS_USE)]

    @extend_schema(
        responses={
            200: TurnCredentialsSerializer,
            401: ERROR,
            403: ERROR,
            429: ERROR,
            503: OpenApiResponse(description="`turn_not_configured`: this server has no TURN."),
        },
        tags=["calls"],
        description=(
            "TURN credentials in coturn's REST-API scheme, valid for `ttl` seconds to open "
            "relay allocations (one already open outlives them). Fetch fresh ones before "
            "each call or ICE restart."
        ),
    )
    def get(self, request):
        credentials = turn.issue_credentials(request.user)
        response = Response(TurnCredentialsSerializer(asdict(credentials)).data)
        response["Cache-Control"] = "private, no-store"  # a password: keep it out of caches
        return response
