"""Single sign-on over the API: the owner's IdP settings (`/org/sso`), what an app needs
to offer SSO (`/auth/sso`) and the exchange of an app's one-time SSO code for a login grant
(`/auth/sso/token`). The browser part of a sign-in is in admin_portal.sso_views."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from orgs.api.permissions import Public, require
from orgs.api.serializers import GrantSerializer
from orgs.api.views import ERROR
from orgs.roles import Perm
from orgs.services import audit
from orgs.services.mfa import get_org_policy
from orgs.sso import flow, provider, provisioning


class SsoSettingsView(APIView):
    permission_classes = [require(Perm.ORG_MANAGE)]

    @extend_schema(responses={200: OpenApiTypes.OBJECT, 404: ERROR}, tags=["sso"])
    def get(self, request):
        return Response(provider.public_view(provider.access_provider()))

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiTypes.OBJECT, 400: ERROR, 403: ERROR},
        tags=["sso"],
        description="Set up or change the org's SAML or OIDC identity provider "
        "(docs/sso.md lists the settings). Changing protocol settings asks for a new "
        "test sign-in.",
    )
    def put(self, request):
        idp = provider.check_configure(request.data, actor=audit.Actor.from_request(request))
        return Response(provider.public_view(idp))

    @extend_schema(responses={204: None, 404: ERROR, 409: ERROR}, tags=["sso"])
    def delete(self, request):
        provider.check_remove(actor=audit.Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class SsoGroupRolesView(APIView):
    permission_classes = [require(Perm.ORG_MANAGE)]

    @extend_schema(
        request=inline_serializer(
            "GroupRole", {"group": serializers.CharField(), "role": serializers.CharField()}
        ),
        responses={200: OpenApiTypes.OBJECT, 400: ERROR, 403: ERROR},
        tags=["sso"],
        description="Replace the IdP group -> role map (a list; the first match wins).",
    )
    def put(self, request):
        rows = provisioning.check_set_group_roles(
            request.data, actor=audit.Actor.from_request(request)
        )
        return Response([{"group": r.group, "role": r.role} for r in rows])


class SsoInfoView(APIView):
    """Public: whether this org offers SSO, and where an app starts it."""

    authentication_classes: list = []
    permission_classes = [Public]

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, tags=["auth"])
    def get(self, request):
        policy = get_org_policy()
        idp = provider.get_provider() if policy.sso_login else None
        return Response(
            {
                "sso": idp is not None,
                "display_name": idp.display_name if idp else None,
                "login_url": "/sso/login" if idp else None,
                "password_login": policy.password_login,
            }
        )


class SsoTokenView(APIView):
    authentication_classes: list = []
    permission_classes = [Public]

    @extend_schema(
        request=inline_serializer(
            "SsoCodeExchange",
            {
                "code": serializers.CharField(),
                "code_verifier": serializers.CharField(),
                "otp": serializers.CharField(required=False),
            },
        ),
        responses={200: GrantSerializer, 400: ERROR, 401: ERROR, 429: ERROR},
        tags=["auth"],
        description="Exchange the one-time code an SSO sign-in sent to the app's redirect "
        "URI, with the PKCE verifier the app started it with, for a login grant.",
    )
    def post(self, request):
        data = request.data if isinstance(request.data, dict) else {}
        grant, expires_in = flow.check_exchange_code(
            data.get("code"),
            data.get("code_verifier"),
            otp=data.get("otp") if isinstance(data.get("otp"), str) else None,
            actor=audit.Actor.from_request(request),
        )
        return Response({"grant": grant, "expires_in": expires_in})
