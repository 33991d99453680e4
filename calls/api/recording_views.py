"""Compliance recordings over REST (calls.services.recording_access and
.recording_policy). Views parse, authorize and call the services."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from calls.services import recording_access, recording_policy
from orgs.api.permissions import require, require_by_method
from orgs.roles import Perm
from orgs.services import audit
from siphera.streaming import streaming_response

ERROR = OpenApiResponse(description='{"error": {"code", "message"}}')


class RecordingsView(APIView):
    permission_classes = [IsAuthenticated, require(Perm.RECORDINGS_READ)]

    @extend_schema(
        parameters=[
            OpenApiParameter("q", str, description="words the transcript holds"),
            OpenApiParameter("limit", int, description=f"1-{recording_access.PAGE} (the default)"),
            OpenApiParameter("before", str, description="the previous page's `next_before`"),
        ],
        responses={
            200: OpenApiResponse(description='{"recordings": [...], "next_before"}'),
            400: ERROR,
            403: ERROR,
        },
        tags=["recordings"],
        description="Compliance recordings, newest first, a page at a time; `q` searches "
        "transcripts. Audited.",
    )
    def get(self, request):
        before, limit = recording_access.parse_page(request.query_params)
        page = recording_access.check_search(
            query=request.query_params.get("q", ""),
            before=before,
            limit=limit,
            actor=audit.Actor.from_request(request),
        )
        return Response({"recordings": page.recordings, "next_before": page.next_before})


class RecordingAudioView(APIView):
    permission_classes = [IsAuthenticated, require(Perm.RECORDINGS_READ)]

    @extend_schema(
        responses={(200, "audio/wav"): OpenApiTypes.BINARY, 403: ERROR, 404: ERROR},
        tags=["recordings"],
        description="The recording as a 16 kHz stereo WAV (left: caller). Audited.",
    )
    def get(self, request, recording_id):
        rec = recording_access.access_recording(recording_id)
        pieces = recording_access.check_fetch_audio(rec, actor=audit.Actor.from_request(request))
        response = streaming_response(pieces, content_type="audio/wav")
        response["Content-Disposition"] = f'attachment; filename="{rec.pk}.wav"'
        response["Cache-Control"] = "private, no-store"
        return response


class RecordingTranscriptView(APIView):
    permission_classes = [IsAuthenticated, require(Perm.RECORDINGS_READ)]

    @extend_schema(
        responses={200: OpenApiResponse(description="{engine, segments, text}"), 404: ERROR},
        tags=["recordings"],
        description="The recording's transcript. Audited.",
    )
    def get(self, request, recording_id):
        rec = recording_access.access_recording(recording_id)
        transcript = recording_access.check_fetch_transcript(
            rec, actor=audit.Actor.from_request(request)
        )
        return Response(transcript)


class RecordingPolicyView(APIView):
    permission_classes = [
        IsAuthenticated,
        require_by_method(GET=Perm.COMPLIANCE_MANAGE, PUT=Perm.COMPLIANCE_MANAGE),
    ]

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiResponse(description="{everyone, roles, user_ids}")},
        tags=["recordings"],
        description="The org's compliance-recording policy (off by default).",
    )
    def get(self, request):
        return Response(recording_policy.policy_payload())

    @extend_schema(
        request=OpenApiTypes.OBJECT,
        responses={200: OpenApiResponse(description="{everyone, roles, user_ids}"), 400: ERROR},
        tags=["recordings"],
        description="Change the policy (fields given only). Audited per field.",
    )
    def put(self, request):
        policy = recording_policy.check_update_policy(
            request.data, actor=audit.Actor.from_request(request)
        )
        return Response(recording_policy.policy_payload(policy))
