"""Attachments: streamed upload of an encrypted blob, download by those who may read it."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser
from rest_framework.response import Response
from rest_framework.views import APIView

from messaging.services import attachments
from orgs.api.permissions import require
from orgs.roles import Perm
from siphera.streaming import file_pieces, streaming_response

ERROR = OpenApiResponse(description='{"error": {"code", "message"}, ...}')
UPLOADED = inline_serializer(
    "AttachmentUploaded",
    {
        "id": serializers.UUIDField(),
        "size": serializers.IntegerField(),
        "sha256": serializers.CharField(),
    },
)


class RawBodyParser(BaseParser):
    """Declares the raw body for content negotiation and the schema; the view streams the
    request itself and never asks DRF to parse (or buffer) it."""

    media_type = attachments.CONTENT_TYPE

    def parse(self, stream, media_type=None, parser_context=None):  # pragma: no cover
        return stream


def _content_length(request) -> int | None:
    raw = request.META.get("CONTENT_LENGTH")
    try:
        return int(raw) if raw not in (None, "") else None
    except ValueError:
        return None


class AttachmentsView(APIView):
    permission_classes = [require(Perm.MESSAGING_USE)]
    parser_classes = [RawBodyParser]

    @extend_schema(
        request={attachments.CONTENT_TYPE: OpenApiTypes.BINARY},
        responses={201: UPLOADED, 400: ERROR, 413: ERROR, 415: ERROR},
        tags=["attachments"],
        description="Upload one encrypted blob as the raw body (Content-Type: "
        "application/octet-stream). Send its id in a message's `attachments`; unsent "
        "uploads are deleted after a day.",
    )
    def post(self, request):
        attachment = attachments.check_upload(
            request._request,  # the Django request: read in chunks, never parsed whole
            uploader=request.user,
            uploader_device_id=request.auth.device_id,
            content_type=request.META.get("CONTENT_TYPE", ""),
            content_length=_content_length(request),
        )
        return Response(attachments.upload_payload(attachment), status=status.HTTP_201_CREATED)


class AttachmentDetailView(APIView):
    permission_classes = [require(Perm.MESSAGING_USE)]

    @extend_schema(
        responses={(200, attachments.CONTENT_TYPE): OpenApiTypes.BINARY, 404: ERROR},
        tags=["attachments"],
        description="The encrypted bytes, for members of the conversation it was sent in "
        "(or its uploader before it is sent).",
    )
    def get(self, request, attachment_id):
        attachment = attachments.access_attachment(request.user, attachment_id)
        # Streamed a piece at a time as the client takes it (siphera.streaming): a
        # FileResponse would be read whole into memory first under ASGI (PITFALLS 28).
        response = streaming_response(
            file_pieces(attachments.open_blob(attachment), attachments.CHUNK_BYTES),
            content_type=attachments.CONTENT_TYPE,
        )
        response["Content-Length"] = str(attachment.size)
        response["Content-Disposition"] = f'attachment; filename="{attachment.pk}"'
        response["ETag"] = f'"{attachment.sha256}"'
        response["Cache-Control"] = "private, no-store"
        response["X-Content-Type-Options"] = "nosniff"
        return response
