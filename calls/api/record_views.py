"""Call records over REST: a user's own calls, and the org's call log for admins.
Views parse, authorize and call calls.services.records."""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from calls.services import records
from orgs.api.permissions import require
from orgs.roles import Perm
from orgs.services import audit

ERROR = OpenApiResponse(description='{"error": {"code", "message"}}')
PAGE = [
    OpenApiParameter("before", str, description="`next_before` of the previous page"),
    OpenApiParameter("limit", int, description=f"1-{records.MAX_PAGE}, default 50"),
]
PAGE_RESPONSE = OpenApiResponse(description='{"calls": [call record], "next_before": str|null}')


class CallsView(APIView):
    permission_classes = [IsAuthenticated, require(Perm.CALLS_USE)]

    @extend_schema(
        parameters=PAGE,
        responses={200: PAGE_RESPONSE, 400: ERROR, 401: ERROR, 403: ERROR},
        tags=["calls"],
        description="The caller's own calls (placed, rung for, or joined), newest first.",
    )
    def get(self, request):
        before, limit = records.parse_page(request.query_params)
        page = records.list_own_calls(request.user, before=before, limit=limit)
        return Response({"calls": page.calls, "next_before": page.next_before})


class OrgCallsView(APIView):
    permission_classes = [IsAuthenticated, require(Perm.CALLS_VIEW)]

    @extend_schema(
        parameters=[*PAGE, OpenApiParameter("user_id", str, description="Only this user's")],
        responses={200: PAGE_RESPONSE, 400: ERROR, 401: ERROR, 403: ERROR},
        tags=["calls"],
        description=(
            "The org's call log (metadata only), newest first. Each read is audited "
            "(`call.records_viewed`)."
        ),
    )
    def get(self, request):
        before, limit = records.parse_page(request.query_params)
        page = records.check_list_org_calls(
            before=before,
            limit=limit,
            user_id=request.query_params.get("user_id") or None,
            actor=audit.Actor.from_request(request),
        )
        return Response({"calls": page.calls, "next_before": page.next_before})
