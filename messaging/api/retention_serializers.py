from rest_framework import serializers


class CompliancePolicyChangeSerializer(serializers.Serializer):
    retention_days = serializers.IntegerField(required=False, allow_null=True)
    attachment_max_bytes = serializers.IntegerField(required=False, allow_null=True)
    device_queue_max = serializers.IntegerField(required=False, allow_null=True)
    attachment_storage_quota_bytes = serializers.IntegerField(required=False, allow_null=True)
    unsent_upload_quota_bytes = serializers.IntegerField(required=False, allow_null=True)


class CompliancePolicySerializer(serializers.Serializer):
    retention_days = serializers.IntegerField(allow_null=True)
    attachment_max_bytes = serializers.IntegerField(allow_null=True)
    device_queue_max = serializers.IntegerField(allow_null=True)
    attachment_storage_quota_bytes = serializers.IntegerField(allow_null=True)
    unsent_upload_quota_bytes = serializers.IntegerField(allow_null=True)
    effective = serializers.DictField()
    defaults = serializers.DictField()
    limits = serializers.DictField()
    usage = serializers.DictField()


class HoldCreateSerializer(serializers.Serializer):
    user_id = serializers.UUIDField(required=False)
    conversation_id = serializers.UUIDField(required=False)
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")


class HoldReleaseSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")


class HoldSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    kind = serializers.ChoiceField(choices=["user", "conversation"])
    user_id = serializers.UUIDField(allow_null=True)
    conversation_id = serializers.UUIDField(allow_null=True)
    reason = serializers.CharField()
    placed_by = serializers.UUIDField(allow_null=True)
    placed_at = serializers.DateTimeField()
    released_by = serializers.UUIDField(allow_null=True)
    released_at = serializers.DateTimeField(allow_null=True)
    active = serializers.BooleanField()
