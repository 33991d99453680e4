from rest_framework import serializers

from orgs.api.fields import Base64Field


class LoginSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=1024, trim_whitespace=False)
    otp = serializers.CharField(max_length=20, required=False, allow_blank=True)


class GrantSerializer(serializers.Serializer):
    grant = serializers.CharField()
    expires_in = serializers.IntegerField()


class DeviceCreatedSerializer(serializers.Serializer):
    device_id = serializers.IntegerField()
    token = serializers.CharField()


class DeviceSerializer(serializers.Serializer):
    device_id = serializers.IntegerField()
    name = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_seen_at = serializers.DateTimeField(allow_null=True)
    identity_key = Base64Field()
    signing_key = Base64Field()


class OrgSummarySerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()


class MeSerializer(serializers.Serializer):
    user_id = serializers.UUIDField()
    username = serializers.CharField()
    display_name = serializers.CharField()
    email = serializers.CharField()
    title = serializers.CharField()
    time_zone = serializers.CharField()
    avatar_url = serializers.CharField(allow_null=True)
    role = serializers.CharField()
    device_id = serializers.IntegerField()
    org = OrgSummarySerializer()


class UserSerializer(serializers.Serializer):
    user_id = serializers.UUIDField(source="pk")
    username = serializers.CharField()
    display_name = serializers.CharField()
    title = serializers.CharField()
    time_zone = serializers.CharField()
    avatar_url = serializers.SerializerMethodField()
    is_active = serializers.BooleanField()

    def get_avatar_url(self, user) -> str | None:
        from orgs.api.profile_serializers import avatar_url

        return avatar_url(user)
