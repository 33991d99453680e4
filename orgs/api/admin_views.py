"""Admin endpoints: users (create/invite, role, deactivate, reactivate), custom roles,
org policy and the audit log. Each view declares the permission code it needs per method;
views parse, call a service and shape the answer."""

from django.http import StreamingHttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from orgs.api import admin_serializers as s
from orgs.api.permissions import require, require_by_method
from orgs.api.views import ERROR
from orgs.roles import PERM_LABELS, Perm
from orgs.services import audit, audit_export, audit_query, directory, policy, users
from orgs.services import roles as role_service
from siphera.params import page_limit
from siphera.streaming import streaming_response

USERS_PAGE = 1000


def invitation_url(request, token: str) -> str:
    # The host passed the tenant middleware: it is one of this org's own domains.
    return request.build_absolute_uri(reverse("portal:invitation", args=[token]))


class UsersView(APIView):
    permission_classes = [require_by_method(GET=Perm.USERS_VIEW, POST=Perm.USERS_MANAGE)]

    @extend_schema(
        parameters=[
            OpenApiParameter("q", str, description="Search username, name, email"),
            OpenApiParameter("limit", int, description=f"1-{USERS_PAGE} (the default)"),
            OpenApiParameter("after", str, description="the last username of the previous page"),
        ],
        responses={200: s.AdminUserSerializer(many=True), 400: ERROR},
        tags=["users"],
        description="Users by username, a page at a time: a full page means there may be "
        "more after its last username.",
    )
    def get(self, request):
        params = request.query_params
        limit = page_limit(params, default=USERS_PAGE, hi=USERS_PAGE)
        rows = directory.users_with_device_counts(
            params.get("q", ""), after=params.get("after", "")
        )[:limit]
        return Response(s.AdminUserSerializer(rows, many=True).data)

    @extend_schema(
        request=s.UserCreateSerializer,
        responses={201: s.UserCreatedSerializer, 400: ERROR, 403: ERROR, 409: ERROR},
        tags=["users"],
        description="Create a user with a password, or (no password) invite them: the "
        "answer then carries a single-use `invitation_url`, shown once.",
    )
    def post(self, request):
        form = s.UserCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        actor = audit.Actor.from_request(request)
        fields = dict(
            username=data["username"],
            role=data["role"],
            display_name=data["display_name"],
            email=data["email"],
            actor=actor,
        )
        if "password" in data:
            user = users.check_create_user(password=data["password"], **fields)
            body = s.AdminUserSerializer(user).data
        else:
            user, token = users.check_invite_user(
                **fields, base_url=request.build_absolute_uri("/")
            )
            body = dict(
                s.AdminUserSerializer(user).data,
                invitation_url=invitation_url(request, token),
                invitation_expires_in=int(users.INVITATION_TTL.total_seconds()),
            )
        return Response(body, status=status.HTTP_201_CREATED)


class UserRoleView(APIView):
    permission_classes = [require(Perm.USERS_MANAGE)]

    @extend_schema(
        request=s.RoleChangeSerializer,
        responses={200: s.AdminUserSerializer, 400: ERROR, 403: ERROR, 404: ERROR, 409: ERROR},
        tags=["users"],
    )
    def put(self, request, user_id):
        form = s.RoleChangeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        user = users.check_change_role(
            users.access_user(user_id),
            form.validated_data["role"],
            actor=audit.Actor.from_request(request),
        )
        return Response(s.AdminUserSerializer(user).data)


class UserDeactivateView(APIView):
    permission_classes = [require(Perm.USERS_MANAGE)]

    @extend_schema(
        request=None,
        responses={200: s.AdminUserSerializer, 403: ERROR, 404: ERROR, 409: ERROR},
        tags=["users"],
        description="Revokes every device and portal session of the user and closes "
        "their live sockets (4403). Idempotent.",
    )
    def post(self, request, user_id):
        user = users.check_deactivate_user(
            users.access_user(user_id), actor=audit.Actor.from_request(request)
        )
        return Response(s.AdminUserSerializer(user).data)


class UserReactivateView(APIView):
    permission_classes = [require(Perm.USERS_MANAGE)]

    @extend_schema(
        request=None, responses={200: s.AdminUserSerializer, 403: ERROR, 404: ERROR}, tags=["users"]
    )
    def post(self, request, user_id):
        user = users.check_reactivate_user(
            users.access_user(user_id), actor=audit.Actor.from_request(request)
        )
        return Response(s.AdminUserSerializer(user).data)


class RolesView(APIView):
    permission_classes = [require_by_method(GET=Perm.USERS_VIEW, POST=Perm.ROLES_MANAGE)]

    @extend_schema(responses={200: s.RoleSerializer(many=True)}, tags=["roles"])
    def get(self, request):
        return Response(s.RoleSerializer(role_service.list_roles(with_counts=True), many=True).data)

    @extend_schema(
        request=s.RoleCreateSerializer,
        responses={201: s.RoleSerializer, 400: ERROR, 403: ERROR, 409: ERROR},
        tags=["roles"],
    )
    def post(self, request):
        form = s.RoleCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        role = role_service.check_create_role(
            **form.validated_data, actor=audit.Actor.from_request(request)
        )
        return Response(
            s.RoleSerializer(role_service.role_info(role)).data, status=status.HTTP_201_CREATED
        )


class RoleDetailView(APIView):
    permission_classes = [require(Perm.ROLES_MANAGE)]

    @extend_schema(responses={200: s.RoleSerializer, 404: ERROR}, tags=["roles"])
    def get(self, request, slug):
        return Response(
            s.RoleSerializer(role_service.role_info(role_service.access_custom_role(slug))).data
        )

    @extend_schema(
        request=s.RoleUpdateSerializer,
        responses={200: s.RoleSerializer, 400: ERROR, 403: ERROR, 404: ERROR},
        tags=["roles"],
    )
    def patch(self, request, slug):
        role = role_service.access_custom_role(slug)
        form = s.RoleUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        role = role_service.check_update_role(
            role, **form.validated_data, actor=audit.Actor.from_request(request)
        )
        return Response(s.RoleSerializer(role_service.role_info(role)).data)

    @extend_schema(responses={204: None, 403: ERROR, 404: ERROR, 409: ERROR}, tags=["roles"])
    def delete(self, request, slug):
        role_service.check_delete_role(
            role_service.access_custom_role(slug), actor=audit.Actor.from_request(request)
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class PermissionsView(APIView):
    permission_classes = [require(Perm.USERS_VIEW)]

    @extend_schema(responses={200: s.PermissionSerializer(many=True)}, tags=["roles"])
    def get(self, request):
        return Response([{"code": str(p), "label": PERM_LABELS[p]} for p in Perm])


class OrgPolicyView(APIView):
    permission_classes = [require(Perm.POLICY_MANAGE)]

    @extend_schema(responses={200: s.PolicySerializer}, tags=["org"])
    def get(self, request):
        return Response(s.PolicySerializer(policy.get_org_policy()).data)

    @extend_schema(
        request=s.PolicySerializer,
        responses={200: s.PolicySerializer, 400: ERROR, 403: ERROR, 409: ERROR},
        tags=["org"],
    )
    def patch(self, request):
        form = s.PolicySerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        updated = policy.check_update_policy(
            dict(form.validated_data), actor=audit.Actor.from_request(request)
        )
        return Response(s.PolicySerializer(updated).data)


AUDIT_FILTERS = [
    OpenApiParameter("actor", str, description="Username or user id"),
    OpenApiParameter("event", str, many=True, description="Event name or family (`member.*`)"),
    OpenApiParameter("target_type", str),
    OpenApiParameter("target_id", str),
    OpenApiParameter("since", OpenApiTypes.DATETIME, description="Inclusive, ISO 8601"),
    OpenApiParameter("until", OpenApiTypes.DATETIME, description="Exclusive, ISO 8601"),
]


class AuditLogView(APIView):
    permission_classes = [require(Perm.AUDIT_VIEW)]

    @extend_schema(
        parameters=[
            *AUDIT_FILTERS,
            OpenApiParameter("before", int, description="Entries older than this id"),
            OpenApiParameter("limit", int, description="1-200, default 50"),
        ],
        responses={200: s.AuditPageSerializer, 400: ERROR},
        tags=["audit"],
    )
    def get(self, request):
        filters = audit_query.check_filter_from_query(request.query_params)
        page = audit_query.list_entries(
            filters,
            before=audit_query.parse_before(request.query_params.get("before")),
            limit=page_limit(request.query_params, default=50, hi=200),
        )
        return Response({"entries": page.entries, "next_before": page.next_before})


class ExportFormatNegotiation(DefaultContentNegotiation):
    """`?format=` names the export's file format here, not one of DRF's renderers (DRF
    would otherwise look for a `csv` renderer, find none and fail even the error
    answers). Errors are JSON; the streamed file sets its own content type."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class AuditExportView(APIView):
    permission_classes = [require(Perm.AUDIT_EXPORT)]
    content_negotiation_class = ExportFormatNegotiation

    @extend_schema(
        parameters=[*AUDIT_FILTERS, OpenApiParameter("format", str, enum=["csv", "jsonl"])],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/x-ndjson"): OpenApiTypes.STR,
            400: ERROR,
        },
        tags=["audit"],
        description="Streams the matching entries (audited `audit.exported`).",
    )
    def get(self, request):
        return export_response(request, request.query_params)


def export_response(request, params) -> StreamingHttpResponse:
    """A streamed, audited download of the matching entries (API and portal)."""
    filters = audit_query.check_filter_from_query(params)
    fmt = params.get("format", "csv")
    export = audit_export.check_export(
        fmt=fmt, filters=filters, actor=audit.Actor.from_request(request)
    )
    # Streamed as the client takes it: a generator given to StreamingHttpResponse would be
    # read whole into memory first under ASGI (PITFALLS 28).
    response = streaming_response(export.lines(), content_type=export.content_type)
    slug = getattr(request.tenant, "slug", "org")
    response["Content-Disposition"] = f'attachment; filename="audit-{slug}.{export.fmt}"'
    return response


class AuditVerifyView(APIView):
    permission_classes = [require(Perm.AUDIT_VIEW)]

    @extend_schema(request=None, responses={200: s.ChainReportSerializer}, tags=["audit"])
    def post(self, request):
        report = audit_query.check_verify(actor=audit.Actor.from_request(request))
        return Response(
            {
                "ok": report.ok,
                "count": report.count,
                "head": report.head,
                "broken_id": report.broken_id,
                "problem": report.problem,
                "detail": report.describe(),
                "anchor_id": report.anchor_id,
                "anchored_at": report.anchored_at,
            }
        )
