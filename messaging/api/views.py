"""Messaging endpoints. Views parse, authorize and call a service; nothing else."""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from messaging.api import serializers as s
from messaging.services import devices, keys
from orgs.api import views as identity_views
from orgs.api.authentication import grant_from_header
from orgs.api.permissions import AUTHENTICATED, PUBLIC, require, require_by_method
from orgs.api.serializers import DeviceCreatedSerializer
from orgs.roles import Perm
from orgs.services import audit
from siphera.api_errors import not_found

ERROR = OpenApiResponse(description='{"error": {"code", "message"}}')
MESSAGING = [IsAuthenticated, require(Perm.MESSAGING_USE)]


class DevicesView(identity_views.DevicesView):
    """The caller's devices (GET, identity's view), and registering a device with its
    public keys (POST), which authenticates with a login grant checked by the service,
    not a device token."""

    permission_classes = [require_by_method(GET=AUTHENTICATED, POST=PUBLIC)]

    @extend_schema(
        request=s.DeviceRegistrationSerializer,
        responses={201: DeviceCreatedSerializer, 401: ERROR, 422: ERROR},
        tags=["devices"],
        description="Send `Authorization: Grant <login grant>` (single use).",
    )
    def post(self, request):
        grant = grant_from_header(request)
        form = s.DeviceRegistrationSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        device, token = devices.check_register_device(
            grant=grant,
            name=form.validated_data["name"],
            bundle=form.to_bundle(),
            actor=audit.Actor.from_request(request, user=None),
        )
        return Response(
            {"device_id": device.device_id, "token": token}, status=status.HTTP_201_CREATED
        )


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
            if not (device_id.isascii() and device_id.isdigit() and len(device_id) < 10):
                raise not_found("No such device.")
            device_id = int(device_id)
        user, bundles = keys.check_claim_bundles(
            user_id, requester=request.auth, device_id=device_id
        )
        return Response(s.KeyBundlesSerializer({"user_id": user.pk, "devices": bundles}).data)
