"""Compliance exports and data-subject requests over REST (orgs.services.compliance and
orgs.services.personal_data do the work; these views parse, authorize and stream)."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from orgs.api.admin_views import ExportFormatNegotiation
from orgs.api.permissions import require
from orgs.api.views import ERROR
from orgs.roles import Perm
from orgs.services import audit, compliance, personal_data, users
from siphera.streaming import streaming_response

EXPORT_PARAMETERS = [
    OpenApiParameter("since", str, required=True, description="ISO 8601, inclusive"),
    OpenApiParameter("until", str, required=True, description="ISO 8601, exclusive"),
    OpenApiParameter(
        "user", str, many=True, description="user ids (repeat or comma-separate); none: all"
    ),
    OpenApiParameter(
        "sections", str, description="comma list of messages, membership, calls; none: all"
    ),
    OpenApiParameter("format", str, enum=list(compliance.FORMATS)),
]


def export_response(request, params) -> StreamingHttpResponse:
    """A streamed, audited compliance export (API and portal)."""
    scope = compliance.check_scope(
        since=params.get("since"), until=params.get("until"), user_ids=params.getlist("user")
    )
    export = compliance.check_export(
        fmt=params.get("format", "jsonl"),
        scope=scope,
        section_names=params.getlist("sections"),
        actor=audit.Actor.from_request(request),
    )
    # An async iterator: a generator would be read whole before the first byte under
    # ASGI (PITFALLS 28).
    response = streaming_response(export.pieces(), content_type=export.content_type)
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    return response


def personal_data_response(request, user_id) -> StreamingHttpResponse:
    """A streamed, audited personal-data export of one user (API and portal)."""
    user = users.access_user(user_id)
    export = personal_data.check_export_personal_data(user, actor=audit.Actor.from_request(request))
    response = streaming_response(export.pieces(), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    return response


class ComplianceExportView(APIView):
    permission_classes = [require(Perm.COMPLIANCE_EXPORT)]
    content_negotiation_class = ExportFormatNegotiation

    @extend_schema(
        parameters=EXPORT_PARAMETERS,
        responses={
            (200, "application/x-ndjson"): OpenApiTypes.STR,
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/zip"): OpenApiTypes.BINARY,
            400: ERROR,
            403: ERROR,
            404: ERROR,
        },
        tags=["compliance"],
        description="Streams message metadata, membership changes and call records of the "
        "range (JSON Lines or CSV), or with `format=zip` the legal-hold archive (held "
        "ciphertext and metadata with a SHA-256 manifest). Audited `compliance.exported`.",
    )
    def get(self, request):
        return export_response(request, request.query_params)


class PersonalDataView(APIView):
    permission_classes = [require(Perm.COMPLIANCE_EXPORT)]

    @extend_schema(
        responses={(200, "application/json"): OpenApiTypes.OBJECT, 403: ERROR, 404: ERROR},
        tags=["compliance"],
        description="Everything the server holds about the user, as one JSON document "
        "(never a secret, a hash of one or message content). Audited "
        "`member.personal_data_exported`.",
    )
    def get(self, request, user_id: str):
        return personal_data_response(request, user_id)


ERASURE = inline_serializer(
    "Erasure",
    {
        "user_id": serializers.CharField(),
        "reason": serializers.CharField(),
        "profile": serializers.CharField(),
        "removed": serializers.DictField(child=serializers.IntegerField()),
        "kept": serializers.ListField(child=serializers.DictField()),
    },
)


class UserEraseView(APIView):
    permission_classes = [require(Perm.USERS_ERASE)]

    @extend_schema(
        request=inline_serializer("EraseRequest", {"reason": serializers.CharField()}),
        responses={200: ERASURE, 400: ERROR, 403: ERROR, 404: ERROR, 409: ERROR},
        tags=["compliance"],
        description="Erase the user's personal data, except what a legal hold or the audit "
        "log keeps (the answer says what and why). Revokes every device and session. "
        "Audited `member.erased` with the reason.",
    )
    def post(self, request, user_id: str):
        user = users.access_user(user_id)
        reason = request.data.get("reason") if isinstance(request.data, dict) else None
        report = personal_data.check_erase_user(
            user,
            reason=reason if isinstance(reason, str) else "",
            actor=audit.Actor.from_request(request),
        )
        return Response(report.as_dict())
