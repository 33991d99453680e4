"""A user's ways in, for admins: portal sessions and devices (list, end one, sign out
everywhere); and the org's host names (claim, verify by DNS, remove). Views parse,
authorize and call orgs.services.portal_sessions / devices / domains."""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from orgs.accounts.models import PendingDomain
from orgs.api.permissions import require, require_by_method
from orgs.api.views import ERROR
from orgs.roles import Perm
from orgs.services import audit, directory, domains, portal_sessions, users
from siphera.params import page_limit, parse_int
from siphera.tenancy import normalize_host

SESSIONS_PAGE = 200
DEVICES_PAGE = 500
DOMAINS_PAGE = 500


class SessionSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    created_at = serializers.DateTimeField(help_text="signed in")
    last_seen_at = serializers.DateTimeField(help_text="last used (to the minute)")
    ip = serializers.IPAddressField(allow_null=True)
    user_agent = serializers.CharField()


class AdminDeviceSerializer(serializers.Serializer):
    device_id = serializers.IntegerField()
    name = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField(allow_null=True)
    last_seen_ip = serializers.IPAddressField(allow_null=True)
    user_agent = serializers.CharField()
    revoked_at = serializers.DateTimeField(allow_null=True)


class SignedOutSerializer(serializers.Serializer):
    sessions = serializers.IntegerField()
    devices = serializers.IntegerField()


class UserSessionsView(APIView):
    permission_classes = [require_by_method(GET=Perm.DEVICES_VIEW, DELETE=Perm.DEVICES_REVOKE)]

    @extend_schema(
        parameters=[OpenApiParameter("limit", int, description=f"1-{SESSIONS_PAGE} (the default)")],
        responses={200: SessionSerializer(many=True), 400: ERROR, 403: ERROR, 404: ERROR},
        tags=["users"],
        description="The user's live portal sessions, the `limit` most recently used.",
    )
    def get(self, request, user_id):
        limit = page_limit(request.query_params, default=SESSIONS_PAGE, hi=SESSIONS_PAGE)
        user = users.access_user(user_id)
        rows = portal_sessions.live_sessions(user)[:limit]
        return Response(SessionSerializer(rows, many=True).data)

    @extend_schema(
        operation_id="users_sign_out_everywhere",
        responses={200: SignedOutSerializer, 403: ERROR, 404: ERROR},
        tags=["users"],
        description="Sign the user out everywhere: every portal session ends and every "
        "device is revoked (their sockets are closed). 403 `forbidden` for a user holding "
        "a permission you lack.",
    )
    def delete(self, request, user_id):
        user = users.access_user(user_id)
        counts = portal_sessions.check_sign_out_everywhere(
            user, actor=audit.Actor.from_request(request)
        )
        return Response(counts)


class UserSessionDetailView(APIView):
    permission_classes = [require(Perm.DEVICES_REVOKE)]

    @extend_schema(
        operation_id="users_session_end",
        responses={204: None, 403: ERROR, 404: ERROR},
        tags=["users"],
    )
    def delete(self, request, user_id, session_id):
        user = users.access_user(user_id)
        row = portal_sessions.access_session(user, session_id)
        portal_sessions.check_end_session(row, actor=audit.Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class UserDevicesView(APIView):
    permission_classes = [require(Perm.DEVICES_VIEW)]

    @extend_schema(
        parameters=[
            OpenApiParameter("limit", int, description=f"1-{DEVICES_PAGE} (the default)"),
            OpenApiParameter("after", int, description="the last device_id of the previous page"),
        ],
        responses={200: AdminDeviceSerializer(many=True), 400: ERROR, 403: ERROR, 404: ERROR},
        tags=["users"],
        description="Every device of the user by id, revoked ones included, with where each "
        "was last seen from, a page at a time. Revoke one with DELETE .../devices/{device_id}.",
    )
    def get(self, request, user_id):
        params = request.query_params
        limit = page_limit(params, default=DEVICES_PAGE, hi=DEVICES_PAGE)
        after = parse_int(params.get("after") or "0", name="after")
        user = users.access_user(user_id)
        rows = directory.all_user_devices(user).filter(device_id__gt=after)[:limit]
        return Response(AdminDeviceSerializer(rows, many=True).data)


class UserDeviceDetailView(APIView):
    permission_classes = [require(Perm.DEVICES_REVOKE)]

    @extend_schema(responses={204: None, 403: ERROR, 404: ERROR}, tags=["users"])
    def delete(self, request, user_id, device_id: int):
        from orgs.services import devices

        device = devices.access_device(users.access_user(user_id), device_id)
        devices.check_revoke_device(device, actor=audit.Actor.from_request(request))
        return Response(status=status.HTTP_204_NO_CONTENT)


class DomainSerializer(serializers.Serializer):
    domain = serializers.CharField()
    status = serializers.CharField(help_text='"verified" (routed) or "pending" (awaits DNS)')
    primary = serializers.BooleanField()
    txt_name = serializers.CharField(required=False, help_text="pending: the record to publish")
    txt_value = serializers.CharField(required=False, help_text="pending: its value")
    created_at = serializers.DateTimeField(required=False)
    checked_at = serializers.DateTimeField(required=False, allow_null=True)
    last_error = serializers.CharField(required=False)


class DomainClaimSerializer(serializers.Serializer):
    domain = serializers.CharField(max_length=300)


class DomainsView(APIView):
    permission_classes = [require(Perm.ORG_MANAGE)]

    @extend_schema(
        parameters=[OpenApiParameter("limit", int, description=f"1-{DOMAINS_PAGE} (the default)")],
        responses={200: DomainSerializer(many=True), 400: ERROR, 403: ERROR},
        tags=["org"],
        description="The org's names: routed ones (the primary first), then those pending "
        "(at most 20); at most `limit` in all.",
    )
    def get(self, request):
        limit = page_limit(request.query_params, default=DOMAINS_PAGE, hi=DOMAINS_PAGE)
        found = domains.list_domains(request.tenant)
        rows = [*found.routed, *found.pending][:limit]
        return Response([domains.domain_payload(row) for row in rows])

    @extend_schema(
        request=DomainClaimSerializer,
        responses={201: DomainSerializer, 400: ERROR, 403: ERROR, 409: ERROR},
        tags=["org"],
        description="Claim a host name: it routes here once its DNS publishes the TXT "
        "record named in the answer (POST .../verify).",
    )
    def post(self, request):
        form = DomainClaimSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        pending = domains.check_claim_domain(
            request.tenant, form.validated_data["domain"], actor=audit.Actor.from_request(request)
        )
        return Response(domains.domain_payload(pending), status=status.HTTP_201_CREATED)


class DomainVerifyView(APIView):
    permission_classes = [require(Perm.ORG_MANAGE)]

    @extend_schema(
        request=None,
        responses={200: DomainSerializer, 403: ERROR, 404: ERROR, 409: ERROR, 503: ERROR},
        tags=["org"],
        description="Look the claim's TXT record up now; when it holds the token the name "
        "routes to this org at once.",
    )
    def post(self, request, domain):
        row = domains.access_domain(request.tenant, domain)
        if isinstance(row, PendingDomain):
            row = domains.check_verify_domain(
                request.tenant, row, actor=audit.Actor.from_request(request)
            )
        return Response(domains.domain_payload(row))


class DomainDetailView(APIView):
    permission_classes = [require(Perm.ORG_MANAGE)]

    @extend_schema(responses={204: None, 403: ERROR, 404: ERROR, 409: ERROR}, tags=["org"])
    def delete(self, request, domain):
        row = domains.access_domain(request.tenant, domain)
        domains.check_remove_domain(
            request.tenant,
            row,
            actor=audit.Actor.from_request(request),
            current_host=normalize_host(request.META.get("HTTP_HOST", "")),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)
