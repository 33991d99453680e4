"""The org's activity figures (the portal dashboard's), for anyone with portal access."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from messaging.services import stats
from orgs.api.permissions import require
from orgs.roles import Perm


class DayCountSerializer(serializers.Serializer):
    date = serializers.DateField()
    count = serializers.IntegerField()


class ActivitySerializer(serializers.Serializer):
    active_days = serializers.IntegerField()
    active_users = serializers.IntegerField(help_text="seen in the last `active_days` days")
    messages_per_day = DayCountSerializer(many=True, help_text="UTC days, oldest first")
    open_sockets = serializers.IntegerField(allow_null=True, help_text="null: Redis unavailable")
    connected_users = serializers.IntegerField(allow_null=True)


class OrgActivityView(APIView):
    permission_classes = [require(Perm.PORTAL_ACCESS)]

    @extend_schema(responses={200: ActivitySerializer}, tags=["org"])
    def get(self, request):
        return Response(stats.org_activity())
