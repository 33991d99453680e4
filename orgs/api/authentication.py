"""DRF authentication: `Authorization: Bearer <device token>` in the request's org."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication

from orgs.services.auth import authenticate_token
from siphera.api_errors import ApiError


class DeviceTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", "")
        scheme, _, token = header.partition(" ")
        if scheme != self.keyword:
            return None
        device = authenticate_token(token.strip())
        if device is None:
            raise ApiError(
                401,
                "invalid_token",
                "Unknown or revoked device token.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return device.user, device

    def authenticate_header(self, request):
        return self.keyword


def grant_from_header(request) -> str:
    """The grant of an `Authorization: Grant <grant>` header, or a 401."""
    scheme, _, grant = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme != "Grant" or not grant.strip():
        raise ApiError(401, "grant_required", "Send 'Authorization: Grant <login grant>'.")
    return grant.strip()


class DeviceTokenScheme(OpenApiAuthenticationExtension):
    target_class = DeviceTokenAuthentication
    name = "deviceToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "Device token from POST /api/v1/devices.",
        }
