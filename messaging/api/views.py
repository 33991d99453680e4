"""Messaging endpoints. Views parse, authorize and call a service; nothing else."""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from messaging.api import serializers as s
from messaging.services import keys
from orgs.api.permissions import require
from orgs.roles import Perm
from siphera.api_errors import not_found

ERROR = OpenApiResponse(description='{"error": {"code", "message"}}')
MESSAGING = [IsAuthenticated, require(Perm.MESSAGING_USE)]


class KeysView(APIView):
    permission_classes = MESSAGING

    @extend_schema(
        request=s.KeyUploadSerializer,
        responses={204: None, 400: ERROR, 401: ERROR, 422: ERROR, 429: ERROR},
        tags=["keys"],
        description=(
            "Replace this device's signed prekey and add one-time / PQ prekeys "
            "(at most 100 of each per request, 500 held). All or nothing."
        ),
    )
    def put(self, request):
        form = s.KeyUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        keys.check_upload_keys(request.auth, form.to_upload())
        return Response(status=status.HTTP_204_NO_CONTENT)


class KeyCountView(APIView):
    permission_classes = MESSAGING

    @extend_schema(responses={200: s.KeyCountSerializer, 401: ERROR}, tags=["keys"])
    def get(self, request):
        counts = keys.key_counts(request.auth)
        return Response({"one_time": counts.one_time, "pq": counts.pq})


class KeyBundlesView(APIView):
    permission_classes = MESSAGING

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "device_id", int, required=False, description="Claim only this device's bundle."
            )
        ],
        responses={200: s.KeyBundlesSerializer, 401: ERROR, 404: ERROR, 429: ERROR},
        tags=["keys"],
        description=(
            "Claim a bundle per current device of the user (not the calling device), "
            "consuming at most one one-time and one PQ prekey of each."
        ),
    )
    def get(self, request, user_id: str):
        device_id = request.query_params.get("device_id")
        if device_id is not None:
            if not device_id.isdigit():
                raise not_found("No such device.")
            device_id = int(device_id)
        user, bundles = keys.check_claim_bundles(
            user_id, requester=request.auth, device_id=device_id
        )
        return Response(s.KeyBundlesSerializer({"user_id": user.pk, "devices": bundles}).data)
