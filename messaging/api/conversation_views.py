"""Conversations, messages, history and the REST fallback of the device queue."""

from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from messaging.api import conversation_serializers as s
from messaging.api.send_form import SendFormError, parse_send
from messaging.services import conversations, delivery, receipts, unread
from orgs.api.permissions import require
from orgs.roles import Perm
from siphera.api_errors import ApiError
from siphera.metrics import instruments as metrics
from siphera.params import BIGINT_MAX, page_limit, parse_int

ERROR = OpenApiResponse(description='{"error": {"code", "message"}, ...}')
MessagingPerm = require(Perm.MESSAGING_USE)
PAGE = [
    OpenApiParameter("limit", int, description=f"1-{conversations.MAX_PAGE} (the default)"),
    OpenApiParameter("after", str, description="the last id of the previous page"),
]


def _int_param(request, name: str, default: int, *, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = parse_int(raw, name=name, lo=-BIGINT_MAX, hi=BIGINT_MAX)
    except ApiError:
        # Out-of-range values are clamped, so the range of the SQL type is no help here.
        raise ApiError(
            400, "invalid_request", f"`{name}` must be an integer (clamped to {lo}-{hi})."
        ) from None
    return max(lo, min(hi, value))


class ConversationsView(APIView):
    permission_classes = [MessagingPerm]

    @extend_schema(
        parameters=PAGE,
        responses={200: s.ConversationSerializer(many=True), 400: ERROR, 404: ERROR},
        tags=["conversations"],
        description="Your conversations, oldest first, a page at a time: a full page means "
        "there may be more after its last id.",
    )
    def get(self, request):
        rows = conversations.conversations_of(
            request.user,
            limit=page_limit(
                request.query_params, default=conversations.MAX_PAGE, hi=conversations.MAX_PAGE
            ),
            after=request.query_params.get("after") or None,
        )
        return Response(conversations.conversation_payloads(rows, viewer=request.user))

    @extend_schema(
        request=s.ConversationCreateSerializer,
        responses={
            201: s.ConversationSerializer,
            200: s.ConversationSerializer,
            400: ERROR,
            403: ERROR,
        },
        tags=["conversations"],
    )
    def post(self, request):
        form = s.ConversationCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        conversation, created = conversations.check_create_conversation(
            creator=request.user,
            kind=form.validated_data["kind"],
            member_ids=form.validated_data["members"],
            title=form.validated_data.get("title"),
        )
        conversation = conversations.access_conversation(request.user, conversation.pk)
        return Response(
            conversations.conversation_payload(conversation, viewer=request.user),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class ConversationDetailView(APIView):
    permission_classes = [MessagingPerm]

    @extend_schema(responses={200: s.ConversationSerializer, 404: ERROR}, tags=["conversations"])
    def get(self, request, conversation_id):
        conversation = conversations.access_conversation(request.user, conversation_id)
        return Response(conversations.conversation_payload(conversation, viewer=request.user))

    @extend_schema(
        request=s.ConversationUpdateSerializer,
        responses={200: s.ConversationSerializer, 400: ERROR, 403: ERROR, 404: ERROR},
        tags=["conversations"],
        description="Rename a group or set its topic (group admins). Both are ciphertext "
        "the clients encrypt; null clears one. Each change is a `title.changed` / "
        "`topic.changed` event in the conversation.",
    )
    def patch(self, request, conversation_id):
        conversation = conversations.access_conversation(request.user, conversation_id)
        form = s.ConversationUpdateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        conversations.check_update_conversation(
            conversation,
            dict(form.validated_data),
            acting_user=request.user,
            acting_device_id=request.auth.device_id,
        )
        conversation = conversations.access_conversation(request.user, conversation_id)
        return Response(conversations.conversation_payload(conversation, viewer=request.user))


class MembersView(APIView):
    permission_classes = [MessagingPerm]

    @extend_schema(
        request=s.MembersAddSerializer,
        responses={200: s.ConversationSerializer},
        tags=["conversations"],
    )
    def post(self, request, conversation_id):
        conversation = conversations.access_conversation(request.user, conversation_id)
        form = s.MembersAddSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        conversations.check_add_members(
            conversation,
            form.validated_data["user_ids"],
            acting_user=request.user,
            acting_device_id=request.auth.device_id,
        )
        conversation = conversations.access_conversation(request.user, conversation_id)
        return Response(conversations.conversation_payload(conversation, viewer=request.user))


class MemberDetailView(APIView):
    permission_classes = [MessagingPerm]

    @extend_schema(
        request=s.MemberRoleSerializer,
        responses={200: s.ConversationSerializer, 400: ERROR, 403: ERROR, 404: ERROR, 409: ERROR},
        tags=["conversations"],
        description="Promote a member to admin or demote an admin (group admins). The "
        "group's only admin cannot step down (409 `last_admin`).",
    )
    def patch(self, request, conversation_id, user_id):
        conversation = conversations.access_conversation(request.user, conversation_id)
        form = s.MemberRoleSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        conversations.check_set_member_role(
            conversation,
            user_id,
            form.validated_data["role"],
            acting_user=request.user,
            acting_device_id=request.auth.device_id,
        )
        conversation = conversations.access_conversation(request.user, conversation_id)
        return Response(conversations.conversation_payload(conversation, viewer=request.user))

    @extend_schema(
        responses={204: None, 403: ERROR, 404: ERROR, 409: ERROR},
        tags=["conversations"],
        description="Remove a member (group admins) or leave (your own user id). The "
        "group's only admin cannot leave while others remain (409 `last_admin`).",
    )
    def delete(self, request, conversation_id, user_id):
        conversation = conversations.access_conversation(request.user, conversation_id)
        conversations.check_remove_member(
            conversation, user_id, acting_user=request.user, acting_device_id=request.auth.device_id
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class MessagesView(APIView):
    permission_classes = [MessagingPerm]

    @extend_schema(
        parameters=[
            OpenApiParameter("after_seq", int),
            OpenApiParameter("limit", int),
            OpenApiParameter("thread", str, description="a thread's root message id"),
        ],
        responses={200: s.MessageFrameSerializer(many=True), 400: ERROR, 404: ERROR},
        tags=["messages"],
        description="Stored history (bodies, never envelopes), oldest first; with `thread`, "
        "only that thread (its root, then its replies).",
    )
    def get(self, request, conversation_id):
        conversation = conversations.access_conversation(request.user, conversation_id)
        after_seq = _int_param(request, "after_seq", 0, lo=0, hi=2**62)
        limit = _int_param(request, "limit", 100, lo=1, hi=500)
        return Response(
            delivery.history(
                conversation,
                after_seq=after_seq,
                limit=limit,
                thread=request.query_params.get("thread"),
            )
        )

    @extend_schema(
        request=s.MessageSendSerializer,
        responses={
            201: s.MessageAcceptedSerializer,
            404: ERROR,
            409: ERROR,
            410: ERROR,
            413: ERROR,
        },
        tags=["messages"],
    )
    def post(self, request, conversation_id):
        code, data = send_message(request, conversation_id)
        return Response(data, status=code)


def send_message(request, conversation_id: str) -> tuple[int, dict]:
    """POST .../messages: for MessagesView and for siphera.fast_http, which serves the
    common case without Django's request machinery (messaging.apps registers it)."""
    try:
        fields = parse_send(request.data)
    except SendFormError as exc:
        raise ValidationError({exc.field: [exc.message]}) from None
    result = delivery.check_send_message(
        conversation_id=_uuid_or_404(conversation_id),
        sender=request.user,
        sender_device_id=request.auth.device_id,
        **fields,
    )
    return status.HTTP_201_CREATED, result.payload()


class ReadStateView(APIView):
    permission_classes = [MessagingPerm]

    @extend_schema(responses={200: s.ReadStateSerializer, 404: ERROR}, tags=["conversations"])
    def get(self, request, conversation_id):
        conversation = conversations.access_conversation(request.user, conversation_id)
        return Response(unread.read_state(request.user, conversation).full_payload())

    @extend_schema(
        request=s.MarkReadSerializer,
        responses={200: s.ReadStateSerializer, 400: ERROR, 404: ERROR},
        tags=["conversations"],
        description="Mark the conversation read up to `up_to_seq` (as the `receipt` frame "
        "with kind `read`): the marker never goes back nor past the last seq; the other "
        "members get a `receipt` frame unless the org turned read receipts off.",
    )
    def post(self, request, conversation_id):
        conversation = conversations.access_conversation(request.user, conversation_id)
        form = s.MarkReadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        receipts.do_mark(
            request.user,
            conversation.pk,
            kind="read",
            up_to_seq=form.validated_data["up_to_seq"],
            read_receipts_enabled=receipts.read_receipts_enabled(),
        )
        return Response(unread.read_state(request.user, conversation).full_payload())


class QueueView(APIView):
    permission_classes = [MessagingPerm]

    @extend_schema(
        parameters=[OpenApiParameter("limit", int)],
        responses={200: s.MessageFrameSerializer(many=True), 400: ERROR},
        tags=["messages"],
        description="This device's queued messages (the `message` frames).",
    )
    def get(self, request):
        limit = _int_param(request, "limit", 100, lo=1, hi=500)
        entries = delivery.pending_for_device(request.auth.pk, limit=limit)
        metrics.MESSAGES_DELIVERED.inc(len(entries))
        return Response([frame for _, frame in entries])


class AckView(APIView):
    permission_classes = [MessagingPerm]

    @extend_schema(request=s.AckSerializer, responses={204: None, 400: ERROR}, tags=["messages"])
    def post(self, request):
        form = s.AckSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        delivery.do_ack(request.auth.pk, form.validated_data["ids"])
        return Response(status=status.HTTP_204_NO_CONTENT)


def _uuid_or_404(raw):
    import uuid

    from siphera.api_errors import not_found

    try:
        return uuid.UUID(str(raw))
    except ValueError:
        raise not_found("No such conversation.") from None
