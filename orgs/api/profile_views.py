"""Profiles, passwords and the directory: views parse, authorize and call
orgs.services.profiles / passwords / directory."""

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from orgs.api import profile_serializers as s
from orgs.api.permissions import AUTHENTICATED, Public, require, require_any
from orgs.api.views import ERROR
from orgs.roles import Perm
from orgs.services import audit, directory, passwords, profiles, users
from siphera.api_errors import ApiError
from siphera.params import page_limit

DIRECTORY_PAGE = 100
RESET_ACCEPTED = (
    "If an account matches, a mail with a link to set a new password is on its way. "
    "The link works once and expires soon."
)
IMAGE = OpenApiResponse(OpenApiTypes.BINARY, description="A PNG")


def base_url(request) -> str:
    # The host passed the tenant middleware: it is one of this org's own domains.
    return request.build_absolute_uri("/")


def _image_body(request) -> bytes:
    """The raw request body of an avatar upload; 413 from Content-Length before reading."""
    limit = settings.AVATAR_MAX_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit:
        raise ApiError(413, "image_too_large", f"Avatars are limited to {limit} bytes.")
    return request.body


class PasswordChangeView(APIView):
    permission_classes = [require(AUTHENTICATED)]

    @extend_schema(
        request=s.PasswordChangeSerializer,
        responses={204: None, 400: ERROR, 401: ERROR, 403: ERROR, 429: ERROR},
        tags=["auth"],
        description="Change your own password. Every other device is signed out (revoked) "
        "and every portal session ends; this device stays signed in.",
    )
    def post(self, request):
        form = s.PasswordChangeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        passwords.check_change_password(
            request.user,
            current=form.validated_data["current_password"],
            new=form.validated_data["new_password"],
            actor=audit.Actor.from_request(request),
            keep_device=request.auth,
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class PasswordResetView(APIView):
    authentication_classes: list = []
    permission_classes = [Public]

    @extend_schema(
        request=s.PasswordResetRequestSerializer,
        responses={202: s.AcceptedSerializer, 400: ERROR, 429: ERROR},
        tags=["auth"],
        description="Forgot-password: mails a single-use link to the account with this "
        "username or e-mail address. The answer is the same whether or not one exists.",
    )
    def post(self, request):
        form = s.PasswordResetRequestSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        passwords.check_request_reset(
            form.validated_data.get("username") or form.validated_data.get("email"),
            actor=audit.Actor.from_request(request),
            base_url=base_url(request),
        )
        return Response({"detail": RESET_ACCEPTED}, status=status.HTTP_202_ACCEPTED)


class PasswordResetConfirmView(APIView):
    authentication_classes: list = []
    permission_classes = [Public]

    @extend_schema(
        request=s.PasswordResetConfirmSerializer,
        responses={204: None, 400: ERROR, 403: ERROR},
        tags=["auth"],
        description="Set a new password with the mailed token, once. Every device and "
        "session of the user is signed out.",
    )
    def post(self, request):
        form = s.PasswordResetConfirmSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        passwords.check_confirm_reset(
            form.validated_data["token"],
            form.validated_data["password"],
            actor=audit.Actor.from_request(request),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class UserPasswordResetView(APIView):
    permission_classes = [require(Perm.USERS_MANAGE)]

    @extend_schema(
        request=None,
        responses={202: s.AdminResetSentSerializer, 403: ERROR, 404: ERROR, 409: ERROR},
        tags=["users"],
        description="Mail the user a single-use link to set a new password.",
    )
    def post(self, request, user_id):
        user = users.access_user(user_id)
        ttl = passwords.check_admin_reset(
            user, actor=audit.Actor.from_request(request), base_url=base_url(request)
        )
        return Response({"sent_to": user.email, "expires_in": ttl}, status=status.HTTP_202_ACCEPTED)


class UserProfileView(APIView):
    permission_classes = [require(Perm.USERS_MANAGE)]

    @extend_schema(
        request=s.ProfileUpdateSerializer,
        responses={200: s.ProfileSerializer, 400: ERROR, 403: ERROR, 404: ERROR},
        tags=["users"],
    )
    def patch(self, request, user_id):
        user = profiles.check_update_profile(
            users.access_user(user_id),
            s.profile_changes(request),
            actor=audit.Actor.from_request(request),
        )
        return Response(s.ProfileSerializer(user).data)


class MyAvatarView(APIView):
    permission_classes = [require(AUTHENTICATED)]

    @extend_schema(
        request={"image/*": OpenApiTypes.BINARY},
        responses={200: s.ProfileSerializer, 400: ERROR, 413: ERROR},
        tags=["users"],
        description="Upload your avatar as the raw body (PNG, JPEG, GIF or WebP); it is "
        "stored as a 256x256 PNG.",
    )
    def put(self, request):
        user = profiles.check_set_avatar(
            request.user, _image_body(request), actor=audit.Actor.from_request(request)
        )
        return Response(s.ProfileSerializer(user).data)

    @extend_schema(responses={204: None}, tags=["users"])
    def delete(self, request):
        profiles.check_remove_avatar(request.user, actor=audit.Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class UserAvatarView(APIView):
    # Whoever may see the user (directory rules); admins change it at .../profile/avatar.
    permission_classes = [require_any(Perm.DIRECTORY_VIEW, Perm.DIRECTORY_CONTACTS)]

    @extend_schema(responses={(200, "image/png"): IMAGE, 403: ERROR, 404: ERROR}, tags=["users"])
    def get(self, request, user_id):
        user = directory.access_directory_user(request.user, user_id)
        with profiles.open_avatar(user) as blob:
            data = blob.read()
        response = HttpResponse(data, content_type="image/png")
        response["Cache-Control"] = "private, max-age=300"
        response["X-Content-Type-Options"] = "nosniff"
        return response


class UserAvatarAdminView(APIView):
    permission_classes = [require(Perm.USERS_MANAGE)]

    @extend_schema(
        request={"image/*": OpenApiTypes.BINARY},
        responses={200: s.ProfileSerializer, 400: ERROR, 403: ERROR, 404: ERROR, 413: ERROR},
        tags=["users"],
    )
    def put(self, request, user_id):
        user = profiles.check_set_avatar(
            users.access_user(user_id),
            _image_body(request),
            actor=audit.Actor.from_request(request),
        )
        return Response(s.ProfileSerializer(user).data)

    @extend_schema(responses={204: None, 403: ERROR, 404: ERROR}, tags=["users"])
    def delete(self, request, user_id):
        profiles.check_remove_avatar(
            users.access_user(user_id), actor=audit.Actor.from_request(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class DirectoryView(APIView):
    # directory.view: everyone; directory.contacts alone (guests): themselves and contacts.
    permission_classes = [require_any(Perm.DIRECTORY_VIEW, Perm.DIRECTORY_CONTACTS)]

    @extend_schema(
        parameters=[
            OpenApiParameter("q", str, description="Part of a username, name or title"),
            OpenApiParameter("limit", int, description=f"1-{DIRECTORY_PAGE} (default 50)"),
            OpenApiParameter("after", str, description="`next_after` of the previous page"),
        ],
        responses={200: s.DirectoryPageSerializer, 400: ERROR, 403: ERROR},
        tags=["users"],
        description="Active people of the org you may see, by username, a page at a time.",
    )
    def get(self, request):
        params = request.query_params
        limit = page_limit(params, default=50, hi=DIRECTORY_PAGE)
        q = params.get("q", "")
        after = params.get("after", "")
        if len(q) > 200 or len(after) > 150:
            raise ApiError(400, "invalid_request", "`q` or `after` is too long.")
        page, next_after = directory.search_directory(request.user, q, after=after, limit=limit)
        return Response(
            {"users": s.ProfileSerializer(page, many=True).data, "next_after": next_after}
        )
