"""MFA endpoints (the caller's own TOTP and recovery codes) and an admin's MFA reset.
Views parse, authorize and call orgs.services.mfa (the org's policy: admin_views)."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import extend_schema
from rest_framework import authentication, status
from rest_framework.response import Response
from rest_framework.views import APIView

from orgs.api import mfa_serializers as s
from orgs.api.authentication import DeviceTokenAuthentication
from orgs.api.permissions import AUTHENTICATED, require
from orgs.api.views import ERROR
from orgs.roles import Perm
from orgs.services import audit, mfa, users
from siphera.api_errors import ApiError


class EnrollmentTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Enrollment <token>`: the token a login gets with 401
    `mfa_enrollment_required`. Accepted only by the enroll and confirm endpoints."""

    keyword = "Enrollment"

    def authenticate(self, request):
        scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme != self.keyword:
            return None
        user = mfa.authenticate_enrollment_token(token.strip())
        if user is None:
            raise ApiError(401, "invalid_token", "Unknown or expired enrolment token.")
        return user, {"enrollment_token": token.strip()}

    def authenticate_header(self, request):
        return self.keyword


class EnrollmentTokenScheme(OpenApiAuthenticationExtension):
    target_class = EnrollmentTokenAuthentication
    name = "enrollmentToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Enrollment <token>` from a 401 mfa_enrollment_required login.",
        }


ENROLL_AUTH = [DeviceTokenAuthentication, EnrollmentTokenAuthentication]
# The caller's own second factor: any signed-in user (or enrolment token), no code.
OWN_ACCOUNT = require(AUTHENTICATED)


def _enrollment_token(request) -> str | None:
    return request.auth.get("enrollment_token") if isinstance(request.auth, dict) else None


class MfaStatusView(APIView):
    permission_classes = [OWN_ACCOUNT]

    @extend_schema(responses={200: s.MfaStatusSerializer}, tags=["mfa"])
    def get(self, request):
        return Response(s.MfaStatusSerializer(mfa.mfa_status(request.user)).data)


class TotpEnrollView(APIView):
    permission_classes = [OWN_ACCOUNT]
    authentication_classes = ENROLL_AUTH

    @extend_schema(
        request=None,
        responses={200: s.EnrollmentSerializer, 401: ERROR, 409: ERROR},
        tags=["mfa"],
        description="Start TOTP enrolment (again): a new seed; confirm with a code from it.",
    )
    def post(self, request):
        enrollment = mfa.check_start_enrollment(
            request.user, actor=audit.Actor.from_request(request)
        )
        return Response(s.EnrollmentSerializer(enrollment).data)


class TotpConfirmView(APIView):
    permission_classes = [OWN_ACCOUNT]
    authentication_classes = ENROLL_AUTH

    @extend_schema(
        request=s.OtpSerializer,
        responses={200: s.ConfirmedSerializer, 400: ERROR, 409: ERROR, 429: ERROR},
        tags=["mfa"],
        description="Activate TOTP with a current code. Returns the 10 recovery codes, "
        "once. With an enrolment token, also a login grant.",
    )
    def post(self, request):
        form = s.OtpSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        confirmed = mfa.check_confirm_enrollment(
            request.user,
            form.validated_data["otp"],
            actor=audit.Actor.from_request(request),
            enrollment_token=_enrollment_token(request),
        )
        body = {"recovery_codes": confirmed.recovery_codes}
        if confirmed.grant:
            body.update(grant=confirmed.grant, expires_in=confirmed.expires_in)
        return Response(body)


class TotpView(APIView):
    permission_classes = [OWN_ACCOUNT]

    @extend_schema(
        request=s.OtpSerializer,
        responses={204: None, 400: ERROR, 409: ERROR, 429: ERROR},
        tags=["mfa"],
        description="Turn TOTP off (and drop the recovery codes), proven with a current "
        "TOTP or recovery code.",
    )
    def delete(self, request):
        form = s.OtpSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        mfa.check_disable(
            request.user, form.validated_data["otp"], actor=audit.Actor.from_request(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class RecoveryCodesView(APIView):
    permission_classes = [OWN_ACCOUNT]

    @extend_schema(
        request=s.OtpSerializer,
        responses={200: s.RecoveryCodesSerializer, 400: ERROR, 409: ERROR, 429: ERROR},
        tags=["mfa"],
        description="Replace the recovery codes (the old ones stop working).",
    )
    def post(self, request):
        form = s.OtpSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        codes = mfa.check_regenerate_recovery_codes(
            request.user, form.validated_data["otp"], actor=audit.Actor.from_request(request)
        )
        return Response({"recovery_codes": codes})


class UserMfaResetView(APIView):
    permission_classes = [require(Perm.MFA_RESET)]

    @extend_schema(responses={204: None, 403: ERROR, 404: ERROR}, tags=["mfa"])
    def delete(self, request, user_id):
        target = users.access_user(user_id)
        mfa.check_reset_mfa(target, actor=audit.Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)
