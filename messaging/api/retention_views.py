"""Retention: a conversation's override (its admins), the org's policy and legal holds
(`compliance.manage`)."""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from messaging.api import conversation_serializers as cs
from messaging.api import retention_serializers as s
from messaging.services import conversations, retention
from orgs.api.permissions import require
from orgs.roles import Perm
from orgs.services import audit
from siphera.params import page_limit

ERROR = OpenApiResponse(description='{"error": {"code", "message"}, ...}')
CompliancePerm = require(Perm.COMPLIANCE_MANAGE)


def _set_retention(request, conversation) -> Response:
    """A PUT of {"days"} on `conversation` (already accessed by the view's rule)."""
    form = cs.RetentionSerializer(data=request.data)
    form.is_valid(raise_exception=True)
    conversation = retention.check_set_conversation_retention(
        conversation,
        form.validated_data["days"],
        acting_user=request.user,
        acting_device_id=request.auth.device_id,
        actor=audit.Actor.from_request(request),
    )
    return Response(retention.conversation_retention_payload(conversation))


class ConversationRetentionView(APIView):
    permission_classes = [require(Perm.MESSAGING_USE)]

    @extend_schema(responses={200: cs.RetentionStateSerializer, 404: ERROR}, tags=["retention"])
    def get(self, request, conversation_id):
        conversation = conversations.access_conversation(request.user, conversation_id)
        return Response(retention.conversation_retention_payload(conversation))

    @extend_schema(
        request=cs.RetentionSerializer,
        responses={200: cs.RetentionStateSerializer, 400: ERROR, 403: ERROR, 404: ERROR},
        tags=["retention"],
        description="Set (or with null clear) the conversation's retention in days: group "
        "admins, or either member of a direct conversation. Only `compliance.manage` may "
        "go beyond the org's policy.",
    )
    def put(self, request, conversation_id):
        conversation = conversations.access_conversation(request.user, conversation_id)
        return _set_retention(request, conversation)


class ComplianceConversationRetentionView(APIView):
    permission_classes = [CompliancePerm]

    @extend_schema(
        request=cs.RetentionSerializer,
        responses={200: cs.RetentionStateSerializer, 400: ERROR, 403: ERROR, 404: ERROR},
        tags=["retention"],
        description="Set (or with null clear) any conversation's retention in days, "
        "beyond the org's policy too; the caller need not be a member.",
    )
    def put(self, request, conversation_id):
        return _set_retention(request, retention.access_any_conversation(conversation_id))


class PolicyView(APIView):
    permission_classes = [CompliancePerm]

    @extend_schema(responses={200: s.CompliancePolicySerializer, 403: ERROR}, tags=["retention"])
    def get(self, request):
        return Response(retention.policy_payload())

    @extend_schema(
        request=s.CompliancePolicyChangeSerializer,
        responses={200: s.CompliancePolicySerializer, 400: ERROR, 403: ERROR},
        tags=["retention"],
        description="Change the org's retention (days) and attachment size limit (bytes); "
        "null restores the platform default.",
    )
    def patch(self, request):
        form = s.CompliancePolicyChangeSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        policy = retention.check_set_policy(
            dict(form.validated_data), actor=audit.Actor.from_request(request)
        )
        return Response(retention.policy_payload(policy))


class HoldsView(APIView):
    permission_classes = [CompliancePerm]

    @extend_schema(
        parameters=[
            OpenApiParameter("active", bool),
            OpenApiParameter(
                "limit", int, description=f"1-{retention.MAX_HOLD_PAGE} (the default)"
            ),
            OpenApiParameter("after", str, description="the last id of the previous page"),
        ],
        responses={200: s.HoldSerializer(many=True), 400: ERROR, 403: ERROR, 404: ERROR},
        tags=["retention"],
        description="Legal holds, oldest first, a page at a time: a full page means there "
        "may be more after its last id.",
    )
    def get(self, request):
        params = request.query_params
        active_only = params.get("active", "").lower() in {"1", "true", "yes"}
        holds = retention.list_holds(
            active_only=active_only,
            limit=page_limit(params, default=retention.MAX_HOLD_PAGE, hi=retention.MAX_HOLD_PAGE),
            after=params.get("after"),
        )
        return Response([retention.hold_payload(h) for h in holds])

    @extend_schema(
        request=s.HoldCreateSerializer,
        responses={201: s.HoldSerializer, 400: ERROR, 403: ERROR, 404: ERROR},
        tags=["retention"],
        description="Place a legal hold on one user (`user_id`) or one conversation "
        "(`conversation_id`): the retention purge keeps what it covers until released.",
    )
    def post(self, request):
        form = s.HoldCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        hold = retention.check_place_hold(
            user_id=form.validated_data.get("user_id"),
            conversation_id=form.validated_data.get("conversation_id"),
            reason=form.validated_data["reason"],
            actor=audit.Actor.from_request(request),
        )
        return Response(retention.hold_payload(hold), status=status.HTTP_201_CREATED)


class HoldDetailView(APIView):
    permission_classes = [CompliancePerm]

    @extend_schema(responses={200: s.HoldSerializer, 403: ERROR, 404: ERROR}, tags=["retention"])
    def get(self, request, hold_id):
        return Response(retention.hold_payload(retention.access_hold(hold_id)))

    @extend_schema(
        request=s.HoldReleaseSerializer,
        responses={200: s.HoldSerializer, 400: ERROR, 403: ERROR, 404: ERROR},
        tags=["retention"],
        description="Release the hold (kept, with who released it and when; the optional "
        "`reason` goes to the audit entry).",
    )
    def delete(self, request, hold_id):
        hold = retention.access_hold(hold_id)
        form = s.HoldReleaseSerializer(data=request.data if isinstance(request.data, dict) else {})
        form.is_valid(raise_exception=True)
        hold = retention.check_release_hold(
            hold, actor=audit.Actor.from_request(request), reason=form.validated_data["reason"]
        )
        return Response(retention.hold_payload(hold))
