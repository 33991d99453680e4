"""Identity endpoints: login, devices, me, user directory. Views parse and call services."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from orgs.api import serializers as s
from orgs.api.permissions import (
    AUTHENTICATED,
    Public,
    require,
    require_any,
    require_by_method,
)
from orgs.api.profile_serializers import ProfileUpdateSerializer, avatar_url, profile_changes
from orgs.roles import Perm
from orgs.services import audit, auth, devices, directory, profiles

ERROR = OpenApiResponse(description='{"error": {"code", "message"}}')


class LoginView(APIView):
    authentication_classes: list = []
    permission_classes = [Public]

    @extend_schema(
        request=s.LoginSerializer,
        responses={200: s.GrantSerializer, 401: ERROR, 429: ERROR},
        tags=["auth"],
    )
    def post(self, request):
        form = s.LoginSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        grant, expires_in = auth.check_login(
            username=form.validated_data["username"],
            password=form.validated_data["password"],
            otp=form.validated_data.get("otp"),
            actor=audit.Actor.from_request(request),
        )
        return Response({"grant": grant, "expires_in": expires_in})


class DevicesView(APIView):
    """The caller's own devices. Registration (POST, with the device's keys) is the key
    directory's: messaging.api.views.DevicesView adds it and is the view routed."""

    permission_classes = [require_by_method(GET=AUTHENTICATED)]

    @extend_schema(responses={200: s.DeviceSerializer(many=True)}, tags=["devices"])
    def get(self, request):
        rows = devices.user_devices(request.user)
        return Response(s.DeviceSerializer(rows, many=True).data)


class DeviceDetailView(APIView):
    permission_classes = [require(AUTHENTICATED)]  # the caller's own devices only

    @extend_schema(responses={204: None, 404: ERROR}, tags=["devices"])
    def delete(self, request, device_id: int):
        device = devices.access_device(request.user, device_id)
        devices.do_revoke_device(device, actor=audit.Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class MeView(APIView):
    permission_classes = [require(AUTHENTICATED)]

    @extend_schema(responses={200: s.MeSerializer}, tags=["auth"])
    def get(self, request):
        return Response(self.me(request)[1])

    @extend_schema(
        request=ProfileUpdateSerializer,
        responses={200: s.MeSerializer, 400: ERROR},
        tags=["auth"],
        description="Change your own display name, title or time zone.",
    )
    def patch(self, request):
        user = profiles.check_update_profile(
            request.user, profile_changes(request), actor=audit.Actor.from_request(request)
        )
        return Response(self._me(request, user))

    @classmethod
    def me(cls, request) -> tuple[int, dict]:
        """GET /me: for this view and for siphera.fast_http (orgs.apps registers it)."""
        return 200, cls._me(request, request.user)

    @staticmethod
    def _me(request, user) -> dict:
        org = request.tenant
        return {
            "user_id": str(user.pk),
            "username": user.username,
            "display_name": user.display_name,
            "email": user.email,
            "title": user.title,
            "time_zone": user.time_zone,
            "avatar_url": avatar_url(user),
            "role": user.role,
            "device_id": request.auth.device_id,
            "org": {"slug": org.slug, "name": org.name},
        }


class UserDetailView(APIView):
    # directory.view: anyone in the org; directory.contacts alone (guests): only people
    # the caller shares a conversation with, others answer 404 like an unknown id.
    permission_classes = [require_any(Perm.DIRECTORY_VIEW, Perm.DIRECTORY_CONTACTS)]

    @extend_schema(responses={200: s.UserSerializer, 403: ERROR, 404: ERROR}, tags=["users"])
    def get(self, request, user_id):
        user = directory.access_directory_user(request.user, user_id)
        return Response(s.UserSerializer(user).data)
